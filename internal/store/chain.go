package store

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// ErrRollback: an object of the store is older than, or differs from, what was
// recorded of it — by the store itself (a later PIT manifest, a lock record, the
// journals that follow a head) or by the caller (HeadOptions.MinVersion, an expected
// PIT digest). Someone with write access to the backend put back an old object, or
// the whole store was restored from an older copy. The error names the object and
// both versions.
var ErrRollback = errors.New("the staging store holds an older object than was recorded")

// headEvidence is the newest version of a head that a PIT recorded, and that PIT.
type headEvidence struct {
	Version uint64
	PIT     string
}

// pitChain is what the PIT manifests of one server say: its newest PIT (the one the
// next PIT chains to) and, for each volume, the newest head version a PIT recorded.
// A Repo keeps it while heads of the server are open in it (it is then the server's
// only writer, so nothing else adds PITs) and reads it again when it opens a head of a
// server none of whose heads is open.
type pitChain struct {
	heads int // open heads and seals under way; guarded by Repo.chainsMu

	mu       sync.Mutex // serialises loading and seals of the server
	loaded   bool
	seq      uint64  // the newest PIT's sequence number; 0: the server has no PIT
	tip      PITLink // the newest PIT
	versions map[string]headEvidence
}

func (c *pitChain) evidence(volume string) headEvidence {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.versions[volume]
}

// note adds a PIT to what the chain knows.
func (c *pitChain) note(p PIT) {
	if p.Seq > c.seq {
		c.seq, c.tip = p.Seq, PITLink{ID: p.ID, Digest: p.Digest}
	}
	for _, v := range p.Volumes {
		if v.HeadVersion > c.versions[v.Name].Version {
			c.versions[v.Name] = headEvidence{Version: v.HeadVersion, PIT: p.ID}
		}
	}
}

// acquireChain returns the server's chain, loaded, and counts a user of it; every
// acquireChain is matched by one releaseChain.
func (r *Repo) acquireChain(ctx context.Context, server string) (*pitChain, error) {
	r.chainsMu.Lock()
	if r.chains == nil {
		r.chains = map[string]*pitChain{}
	}
	c := r.chains[server]
	if c == nil {
		c = &pitChain{}
		r.chains[server] = c
	}
	c.heads++
	r.chainsMu.Unlock()
	c.mu.Lock()
	err := r.loadChainLocked(ctx, server, c)
	c.mu.Unlock()
	if err != nil {
		r.releaseChain(server, c)
		return nil, err
	}
	return c, nil
}

func (r *Repo) releaseChain(server string, c *pitChain) {
	r.chainsMu.Lock()
	defer r.chainsMu.Unlock()
	c.heads--
	if c.heads == 0 && r.chains[server] == c {
		delete(r.chains, server)
	}
}

// loadChainLocked reads every manifest of the server, unless the chain is loaded. A
// manifest that does not decode is no evidence: it is logged and left to verify.
func (r *Repo) loadChainLocked(ctx context.Context, server string, c *pitChain) error {
	if c.loaded {
		return nil
	}
	pits, err := r.readManifests(ctx, snapshotPrefix(server), func(name string, err error) {
		r.log.Warn("a PIT manifest does not decode: it is not taken into account (run lifeboat store verify)", "object", name, "err", err)
	})
	if err != nil {
		return fmt.Errorf("read the PITs of %s: %w", server, err)
	}
	c.seq, c.tip, c.versions = 0, PITLink{}, map[string]headEvidence{}
	for _, p := range pits {
		c.note(p)
	}
	c.loaded = true
	return nil
}

// readManifests reads every PIT manifest under prefix, several at a time, in no
// particular order. Manifests deleted meanwhile are skipped. A manifest that does not
// decode is passed to bad, or fails the read when bad is nil; backend failures fail it.
func (r *Repo) readManifests(ctx context.Context, prefix string, bad func(name string, err error)) ([]PIT, error) {
	var names []string
	if err := r.be.List(ctx, prefix, func(oi backend.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list PITs: %w", err)
	}
	pits := make([]PIT, len(names))
	found := make([]bool, len(names))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, name := range names {
		g.Go(func() error {
			plain, err := r.getSealed(gctx, name)
			if errors.Is(err, backend.ErrNotFound) {
				return nil // deleted meanwhile: retention or a user
			}
			if err == nil {
				pits[i], _, err = r.decodeManifest(name, plain)
			}
			if err != nil && errors.Is(err, ErrCorrupt) && bad != nil {
				mu.Lock()
				bad(name, err)
				mu.Unlock()
				return nil
			}
			found[i] = err == nil
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := pits[:0]
	for i := range pits {
		if found[i] {
			out = append(out, pits[i])
		}
	}
	return out, nil
}
