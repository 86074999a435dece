package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// verifyRecords checks what the store recorded of its own history
// (docs/store-format.md §10): each PIT's link to the one before it, each lock record
// against its manifest, each head against the newest version a PIT sealed of it.
// Damaged objects are left to the reference walk, which reports them.
//
// It is correct on a live store: manifests are read before heads, and a head object is
// written before any manifest that records its version, so a head read after a
// manifest is never older than it unless it was put back; a manifest that looks less
// locked than its record is read again, as ProtectPIT writes the manifest first.
func (r *Repo) verifyRecords(ctx context.Context, fail func(string, ...any)) error {
	pits, err := r.readManifests(ctx, "snapshots/", func(string, error) {})
	if err != nil {
		return err
	}
	byServer := map[string][]PIT{}
	manifests := map[string]PIT{}         // object name → PIT
	evidence := map[string]headEvidence{} // head object name → newest version a PIT sealed
	for _, p := range pits {
		byServer[p.Server] = append(byServer[p.Server], p)
		manifests[snapshotName(p.Server, p.ID)] = p
		for _, v := range p.Volumes {
			prefix := headPrefix(p.Server, v.Name)
			if v.HeadVersion > evidence[prefix].Version {
				evidence[prefix] = headEvidence{Version: v.HeadVersion, PIT: p.ID}
			}
		}
	}
	for _, server := range slices.Sorted(maps.Keys(byServer)) { // findings in a stable order
		verifyChain(server, byServer[server], manifests, fail)
	}
	if err := r.verifyLocks(ctx, manifests, fail); err != nil {
		return err
	}

	// Heads, read after the manifests: of each volume, the newest epoch's (fence.go).
	newest := map[string]string{} // head prefix → its newest head object
	if err := r.be.List(ctx, "heads/", func(oi backend.ObjectInfo) error {
		prefix := oi.Name[:strings.LastIndexByte(oi.Name, '/')+1]
		if _, ok := parseHeadObject(prefix, oi.Name); ok && oi.Name > newest[prefix] {
			newest[prefix] = oi.Name
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list heads: %w", err)
	}
	const remedy = "restore the newer head object from a backup or the bucket's object versions; until then the replicator refuses the volume (or accept the rollback so that its source resends it whole)"
	for _, prefix := range slices.Sorted(maps.Keys(newest)) {
		name := newest[prefix]
		plain, err := r.getSealed(ctx, name)
		if errors.Is(err, backend.ErrNotFound) || (err != nil && !isBackendFailure(err)) {
			continue
		}
		if err != nil {
			return err
		}
		st, err := decodeHeadState(plain)
		if err != nil {
			continue
		}
		if ev := evidence[prefix]; st.Version < ev.Version {
			fail("%s: the head of %s/%s is version %d, but PIT %s sealed version %d of it: someone put back an old head object: %s",
				name, st.Server, st.Volume, st.Version, ev.PIT, ev.Version, remedy)
		}
		delete(evidence, prefix)
	}
	for _, prefix := range slices.Sorted(maps.Keys(evidence)) {
		ev := evidence[prefix]
		fail("%s: the head is missing, but PIT %s sealed version %d of it: someone deleted it: %s", headObject(prefix, 0), ev.PIT, ev.Version, remedy)
	}
	return nil
}

// verifyChain checks the chain of one server's PITs: sequence numbers are unique, and
// each PIT's link to the one before it names that PIT's digest and sequence number. A
// link to a PIT that is gone is no finding: retention deletes PITs.
func verifyChain(server string, ps []PIT, manifests map[string]PIT, fail func(string, ...any)) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Seq < ps[j].Seq })
	for i, p := range ps {
		if i > 0 && ps[i-1].Seq == p.Seq {
			fail("%s: PITs %s and %s of server %s both have sequence number %d: two replicators sealed PITs of the server at once (check its assignment), or a manifest was forged by a holder of the key",
				snapshotName(server, p.ID), ps[i-1].ID, p.ID, server, p.Seq)
		}
		if p.Prev == nil {
			continue
		}
		prev, ok := manifests[snapshotName(server, p.Prev.ID)]
		switch {
		case !ok:
		case prev.Digest != p.Prev.Digest:
			fail("%s: its content has digest %s, but PIT %s, sealed after it, recorded %s: the manifest was replaced by another version (put back or forged by a holder of the key): restore it from a backup or the bucket's object versions, and do not recover from it until then",
				snapshotName(server, prev.ID), prev.Digest, p.ID, p.Prev.Digest)
		case prev.Seq+1 != p.Seq:
			fail("%s: PIT %s follows it with sequence number %d, but it has %d: the chain of PITs of server %s is broken (a manifest was forged by a holder of the key)",
				snapshotName(server, prev.ID), p.ID, p.Seq, prev.Seq, server)
		}
	}
}

// verifyLocks checks every lock record against its PIT's manifest: the manifest must
// exist while the lock lasts, hold the same content, and be locked at least as long.
func (r *Repo) verifyLocks(ctx context.Context, manifests map[string]PIT, fail func(string, ...any)) error {
	var names []string
	if err := r.be.List(ctx, "locks/", func(oi backend.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return fmt.Errorf("list lock records: %w", err)
	}
	now := r.opts.Now()
	for _, name := range names {
		plain, err := r.getSealed(ctx, name)
		if errors.Is(err, backend.ErrNotFound) {
			continue // removed with its PIT meanwhile
		}
		if err != nil && isBackendFailure(err) {
			return err
		}
		var rec lockRecord
		if err == nil {
			rec, err = decodeLockRecord(name, plain)
		}
		if err != nil {
			fail("%v", err)
			continue
		}
		p, ok := manifests[snapshotName(rec.Server, rec.PIT)]
		if !ok || p.LockUntil.Before(rec.LockUntil) {
			// Sealed or protected since the manifests were read? Read it again.
			p, err = r.LoadPIT(ctx, rec.Server, rec.PIT)
			ok = err == nil
			if err != nil && isBackendFailure(err) {
				return err
			}
		}
		switch {
		case !ok && now.Before(rec.LockUntil):
			fail("%s: PIT %s of server %s is locked until %s, but its manifest is missing or damaged: it was deleted or damaged despite its lock: restore it from a backup or the bucket's object versions",
				name, rec.PIT, rec.Server, rec.LockUntil.Format(time.RFC3339))
		case !ok:
		case p.Digest != rec.Digest:
			fail("%s: PIT %s of server %s was locked with digest %s, but its manifest has digest %s: the manifest was replaced by another version: restore it from a backup or the bucket's object versions",
				name, rec.PIT, rec.Server, rec.Digest, p.Digest)
		case p.LockUntil.Before(rec.LockUntil):
			fail("%s: PIT %s of server %s is locked until %s, but its manifest says %s: an older manifest was put back; the lock still holds (Lifeboat keeps the PIT): protect the PIT again to repair its manifest",
				name, rec.PIT, rec.Server, rec.LockUntil.Format(time.RFC3339), lockText(p.LockUntil))
		}
	}
	return nil
}

func lockText(t time.Time) string {
	if t.IsZero() {
		return "unlocked"
	}
	return "locked until " + t.Format(time.RFC3339)
}
