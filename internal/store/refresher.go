package store

import (
	"context"
	"sync"
	"time"
)

// refresher refreshes a repository's view in the background (Options.RefreshInBackground):
// a flush must not commit to deduplicated chunks with a view older than GCGrace/4
// (gc.go), and a refresh reads every index object other processes stored since the
// last one — at a large site many thousands, for many seconds. Kept at GCGrace/8 in the
// background, the view is fresh whenever a flush looks, and flushes never wait for one.
type refresher struct {
	mu      sync.Mutex
	cancel  context.CancelFunc // nil until started
	done    chan struct{}
	stopped bool
}

// startRefresher starts the background refresh, once; OpenHead calls it.
func (r *Repo) startRefresher() {
	if !r.opts.RefreshInBackground {
		return
	}
	f := &r.refresher
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cancel != nil || f.stopped {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go r.refreshLoop(ctx, f.done)
}

// refreshLoop refreshes the view whenever it is GCGrace/8 old, until ctx ends. A failed
// refresh is tried again after a while; the flushes that then find the view too old
// refresh it themselves and report what fails.
func (r *Repo) refreshLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	every := r.opts.GCGrace / 8
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wait := every - r.viewAge()
		if wait <= 0 {
			if err := r.refreshViewSince(ctx, r.opts.Now().Add(-every)); err != nil {
				if ctx.Err() != nil {
					return
				}
				r.log.Warn("refreshing the view of the store failed; trying again", "err", err)
			}
			wait = every / 4
			if age := r.viewAge(); age < every {
				wait = every - age
			}
		}
		t.Reset(max(wait, every/16))
	}
}

// stop ends the background refresh and waits for it.
func (f *refresher) stop() {
	f.mu.Lock()
	cancel, done := f.cancel, f.done
	f.stopped = true
	f.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}
