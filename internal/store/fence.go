package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// Fencing of a head's writers (docs/store-format.md §6, "Writers and fencing"). Two
// processes may come to believe they own one head: a replicator cut off from the
// control plane keeps its agent's session while the server is moved to another. The
// store itself settles it, without trusting clocks:
//
//   - a writer opening a head takes the next epoch: it stores a claim object
//     (claim.EPOCH.NONCE), then the owner object naming its epoch and nonce, then lists
//     the claims, and gives up if a newer claim or another claim of its epoch exists;
//   - only then does it read the head and its journals, and it checkpoints at once into
//     head.EPOCH, whose seq is EPOCH<<seqEpochShift: journals of older epochs written
//     after that are below it, so no recovery replays them;
//   - a writer acknowledges a flush only after reading the owner object back, after its
//     journal is stored, and finding its own epoch and nonce there.
//
// A journal an older writer acknowledged was stored before its owner read, and so
// before the newer writer's owner object and the journal listing that follows it: the
// newer writer has replayed it. An older writer's later journals are refused (it is
// told ErrFenced) and never acknowledged; its later head objects are of an older epoch
// than the current one and ignored.

// ErrFenced: another writer opened the head since this one did; this head can write no
// more. The session that held it is over: its source is to reconnect, to the writer the
// control plane now names.
var ErrFenced = errors.New("another writer opened this volume's head since: this one may not write it")

// seqEpochShift places a writer's epoch in the high bits of its journals' sequence
// numbers: epoch e's journals are e<<seqEpochShift + 1, + 2, ….
const seqEpochShift = 40

// journalSeq names a journal sequence number for an operator: "epoch 1 journal 2".
func journalSeq(seq uint64) string {
	return fmt.Sprintf("epoch %d journal %d", seq>>seqEpochShift, seq&(1<<seqEpochShift-1))
}

// maxEpoch is the last epoch a head can have (about 16 million opens).
const maxEpoch = 1<<(64-seqEpochShift) - 1

// headObject names the head object of an epoch; epoch 0 is the name stores had before
// writers were fenced.
func headObject(prefix string, epoch uint64) string {
	if epoch == 0 {
		return prefix + "head"
	}
	return fmt.Sprintf("%shead.%016x", prefix, epoch)
}

// parseHeadObject returns the epoch of a head object's name under prefix.
func parseHeadObject(prefix, name string) (uint64, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"head")
	if !ok {
		return 0, false
	}
	if rest == "" {
		return 0, true
	}
	if len(rest) != 17 || rest[0] != '.' {
		return 0, false
	}
	e, err := strconv.ParseUint(rest[1:], 16, 64)
	return e, err == nil
}

// headObjects lists the head objects under prefix, oldest epoch first (names are
// fixed-width hex, and the backend lists in order).
func (r *Repo) headObjects(ctx context.Context, prefix string) ([]string, error) {
	var out []string
	err := r.be.List(ctx, prefix+"head", func(oi backend.ObjectInfo) error {
		if _, ok := parseHeadObject(prefix, oi.Name); ok {
			out = append(out, oi.Name)
		}
		return nil
	})
	return out, err
}

// claim is a writer's claim on a head.
type claim struct {
	epoch uint64
	nonce string // 16 hex digits
}

func (c claim) object(prefix string) string {
	return fmt.Sprintf("%sclaim.%016x.%s", prefix, c.epoch, c.nonce)
}

func (c claim) owner() []byte { return fmt.Appendf(nil, "%016x.%s", c.epoch, c.nonce) }

func parseClaim(prefix, name string) (claim, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"claim.")
	if !ok || len(rest) != 33 || rest[16] != '.' {
		return claim{}, false
	}
	e, err := strconv.ParseUint(rest[:16], 16, 64)
	if err != nil {
		return claim{}, false
	}
	return claim{epoch: e, nonce: rest[17:]}, true
}

func (r *Repo) claims(ctx context.Context, prefix string) ([]claim, error) {
	var out []claim
	err := r.be.List(ctx, prefix+"claim.", func(oi backend.ObjectInfo) error {
		if c, ok := parseClaim(prefix, oi.Name); ok {
			out = append(out, c)
		}
		return nil
	})
	return out, err
}

// claimHead takes the next epoch of the head under prefix for this writer, or fails
// with ErrFenced when another writer claimed it at the same time or after.
func (r *Repo) claimHead(ctx context.Context, prefix string) (claim, error) {
	claims, err := r.claims(ctx, prefix)
	if err != nil {
		return claim{}, fmt.Errorf("list the claims on the head: %w", err)
	}
	heads, err := r.headObjects(ctx, prefix)
	if err != nil {
		return claim{}, fmt.Errorf("list the head objects: %w", err)
	}
	var top uint64
	for _, c := range claims {
		top = max(top, c.epoch)
	}
	for _, name := range heads {
		e, _ := parseHeadObject(prefix, name)
		top = max(top, e)
	}
	if top >= maxEpoch {
		return claim{}, fmt.Errorf("the head has been opened %d times, the most it can be", top)
	}
	me := claim{epoch: top + 1, nonce: randomHex(8)}
	if err := r.be.Put(ctx, me.object(prefix), nil, backend.PutOptions{}); err != nil {
		return claim{}, fmt.Errorf("store a claim on the head: %w", err)
	}
	if err := r.putSealed(ctx, prefix+"owner", me.owner(), backend.PutOptions{}); err != nil {
		return claim{}, fmt.Errorf("store the head's owner: %w", err)
	}
	if claims, err = r.claims(ctx, prefix); err != nil {
		return claim{}, fmt.Errorf("list the claims on the head: %w", err)
	}
	for _, c := range claims {
		if c.epoch > me.epoch || (c.epoch == me.epoch && c.nonce != me.nonce) {
			_ = r.be.Delete(ctx, me.object(prefix))
			return claim{}, fmt.Errorf("%w: another writer opened it at the same time (epoch %d); retry", ErrFenced, c.epoch)
		}
	}
	return me, nil
}

// checkOwner reads the head's owner object: it must name this writer's claim.
func (r *Repo) checkOwner(ctx context.Context, prefix string, me claim) error {
	plain, err := r.getSealed(ctx, prefix+"owner")
	if errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("%w: its owner object is gone", ErrFenced)
	}
	if err != nil {
		return fmt.Errorf("read the head's owner: %w", err)
	}
	if !bytes.Equal(plain, me.owner()) {
		return fmt.Errorf("%w: it is owned by epoch %s now, this writer is epoch %d", ErrFenced, strings.SplitN(string(plain), ".", 2)[0], me.epoch)
	}
	return nil
}

// dropOlder deletes the claims and head objects of epochs before e: housekeeping, as
// recovery reads only the newest head object and older writers check the owner object.
func (r *Repo) dropOlder(ctx context.Context, prefix string, e uint64) {
	var names []string
	if claims, err := r.claims(ctx, prefix); err == nil {
		for _, c := range claims {
			if c.epoch < e {
				names = append(names, c.object(prefix))
			}
		}
	}
	if heads, err := r.headObjects(ctx, prefix); err == nil {
		for _, name := range heads {
			if he, _ := parseHeadObject(prefix, name); he < e {
				names = append(names, name)
			}
		}
	}
	for _, name := range names {
		if err := r.be.Delete(ctx, name); err != nil && !errors.Is(err, backend.ErrNotFound) {
			r.log.Warn("could not remove an object of an older writer of a head; it is ignored", "object", name, "err", err)
		}
	}
}

// isHeadObject reports whether name is a head object (of any epoch).
func isHeadObject(name string) bool {
	_, ok := parseHeadObject(name[:strings.LastIndexByte(name, '/')+1], name)
	return ok
}
