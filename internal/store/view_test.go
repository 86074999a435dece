package store

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// An index object this process stored while a refresh listed the index is missing from
// that listing without having been removed: it must not make the refresh read the
// whole index again (with many servers flushing, every refresh did).
func TestAnIndexObjectStoredDuringTheListingIsNotTakenForRemoved(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	listing := time.Now()
	during, before := "index/"+strings.Repeat("ab", 32), "index/"+strings.Repeat("cd", 32)
	r.mu.Lock()
	r.ix.loaded[during] = true
	r.packer.recent = append(r.packer.recent, completedPack{index: during, at: listing.Add(time.Millisecond)})
	r.mu.Unlock()
	p, err := r.planView(ctx, false, listing)
	if err != nil || p.full {
		t.Fatalf("plan: full %v, %v; want an incremental refresh", p.full, err)
	}
	// One stored before the listing began and not listed was removed (by a GC).
	r.mu.Lock()
	r.ix.loaded[before] = true
	r.packer.recent = append(r.packer.recent, completedPack{index: before, at: listing.Add(-time.Second)})
	r.mu.Unlock()
	if p, err = r.planView(ctx, false, listing); err != nil || !p.full {
		t.Fatalf("plan: full %v, %v; want a full refresh", p.full, err)
	}
}

// listCounter counts the listings of the index.
type listCounter struct {
	backend.Backend
	lists atomic.Int64
}

func (l *listCounter) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if prefix == "index/" {
		l.lists.Add(1)
		time.Sleep(20 * time.Millisecond) // a slow store: callers pile up behind the refresh
	}
	return l.Backend.List(ctx, prefix, fn)
}

// Callers that need a view at least as new as when they asked share one refresh
// instead of listing the store each (a replicator opening the heads of many servers
// moved to it at once).
func TestConcurrentRefreshesAreShared(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	_, be, mk := newTestRepo(t, opts)
	lc := &listCounter{Backend: be}
	r, err := Open(ctx, lc, mk, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	lc.lists.Store(0)
	since := r.opts.Now()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if err := r.refreshViewSince(ctx, since); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := lc.lists.Load(); n < 1 || n > 2 {
		t.Fatalf("20 callers listed the index %d times; want one refresh shared (at most 2)", n)
	}
}
