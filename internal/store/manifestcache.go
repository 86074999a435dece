package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// manifestCache keeps decoded PIT manifests by object name, size and modification time,
// so that listing a server's PITs again (retention does every minute) reads only the
// manifests that are new or rewritten: with a point a second a server has thousands,
// and on S3 each read is a request (docs/store-format.md §8). Entries of manifests no
// longer listed are dropped.
type manifestCache struct {
	mu     sync.Mutex
	byName map[string]cachedManifest
}

type cachedManifest struct {
	size int64
	mod  time.Time
	pit  PIT
}

// listManifests returns the PITs whose manifests are under prefix, decoding only those
// the cache does not hold as they are listed. A manifest that does not decode fails the
// list; one deleted meanwhile is skipped.
func (r *Repo) listManifests(ctx context.Context, prefix string) ([]PIT, error) {
	c := &r.manifests
	var listed []backend.ObjectInfo
	if err := r.be.List(ctx, prefix, func(oi backend.ObjectInfo) error {
		listed = append(listed, oi)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list PITs: %w", err)
	}
	pits := make([]PIT, len(listed))
	found := make([]bool, len(listed))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	c.mu.Lock()
	if c.byName == nil {
		c.byName = map[string]cachedManifest{}
	}
	for i, oi := range listed {
		if e, ok := c.byName[oi.Name]; ok && e.size == oi.Size && e.mod.Equal(oi.ModTime) {
			pits[i], found[i] = e.pit, true
			continue
		}
		g.Go(func() error {
			plain, err := r.getSealed(gctx, oi.Name)
			if errors.Is(err, backend.ErrNotFound) {
				return nil // deleted meanwhile: retention or a user
			}
			if err == nil {
				pits[i], _, err = r.decodeManifest(oi.Name, plain)
			}
			found[i] = err == nil
			return err
		})
	}
	c.mu.Unlock()
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return r.keepManifests(prefix, listed, pits, found), nil
}

// keepManifests records the manifests just listed in the cache, drops those under
// prefix that were not, and returns the PITs found.
func (r *Repo) keepManifests(prefix string, listed []backend.ObjectInfo, pits []PIT, found []bool) []PIT {
	c := &r.manifests
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := make(map[string]bool, len(listed))
	out := pits[:0]
	for i, oi := range listed {
		if !found[i] {
			continue
		}
		seen[oi.Name] = true
		c.byName[oi.Name] = cachedManifest{size: oi.Size, mod: oi.ModTime, pit: pits[i]}
		out = append(out, pits[i])
	}
	for name := range c.byName {
		if len(name) >= len(prefix) && name[:len(prefix)] == prefix && !seen[name] {
			delete(c.byName, name)
		}
	}
	return out
}
