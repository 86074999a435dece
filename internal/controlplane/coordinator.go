package controlplane

import (
	"context"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// Several control planes may serve one database (docs/scaling.md "Control plane high
// availability"): each serves the whole API and runs the jobs it claims (jobs have
// leases of their own), but what must run once runs only in the one holding the
// coordinator lease: replicator assignment, the agent watch, consistency groups, plan
// runs and scheduled drills. The holder renews the lease every quarter of
// Config.CoordinatorLease; another takes it once it lapses. A holder that cannot renew
// stops coordinating once half the lease has passed, before anyone else may take it.

// coordinatorLease names the lease in the database.
const coordinatorLease = "coordinator"

// coordinate takes and renews the coordinator lease until ctx ends, running the
// coordinator's loops while it holds it.
func (cp *ControlPlane) coordinate(ctx context.Context) {
	ttl := cp.cfg.CoordinatorLease
	holder := cp.rec.runnerID
	var (
		cancel  context.CancelFunc
		done    chan struct{}
		renewed time.Time
	)
	stop := func(why string) {
		if cancel == nil {
			return
		}
		cancel()
		<-done
		cancel = nil
		cp.coordinating.Store(false)
		cp.log.Warn("this control plane no longer coordinates: another runs assignment, groups and plans", "reason", why)
	}
	defer func() {
		stop("it stops")
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		if err := cp.db.Update(dctx, func(tx *db.Tx) error { return tx.DropLease(coordinatorLease, holder) }); err != nil {
			cp.log.Warn("could not give up the coordinator lease; another control plane takes it when it lapses", "err", err)
		}
	}()
	for {
		now := cp.cfg.Now()
		var ok bool
		err := cp.db.Update(ctx, func(tx *db.Tx) (err error) {
			ok, err = tx.TakeLease(coordinatorLease, holder, now, now.Add(ttl))
			return err
		})
		switch {
		case err == nil && ok:
			renewed = time.Now()
			if cancel == nil {
				cancel, done = cp.startCoordinator(ctx)
				cp.coordinating.Store(true)
				cp.log.Info("this control plane coordinates: it runs assignment, groups, plan runs and scheduled drills")
			}
		case err == nil:
			stop("another control plane holds the coordinator lease")
		case ctx.Err() == nil:
			cp.log.Warn("renewing the coordinator lease failed; will retry", "err", err)
			if time.Since(renewed) > ttl/2 {
				stop("the lease could not be renewed")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(ttl / 4):
		}
	}
}

// startCoordinator runs the loops that must run once in the background, until
// cancel; done is closed when they all returned.
func (cp *ControlPlane) startCoordinator(ctx context.Context) (cancel context.CancelFunc, done chan struct{}) {
	ctx, cancel = context.WithCancel(ctx)
	done = make(chan struct{})
	go func() {
		defer close(done)
		cp.runCoordinator(ctx)
	}()
	return cancel, done
}

// runCoordinator runs the loops that must run once, until ctx ends.
func (cp *ControlPlane) runCoordinator(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { cp.assignLoop(ctx) })
	wg.Go(func() { cp.agentWatchLoop(ctx) })
	wg.Go(func() { cp.groups.loop(ctx) })
	wg.Go(func() { cp.plans.loop(ctx) })
	wg.Wait()
}

// Coordinating reports whether this control plane holds the coordinator lease.
func (cp *ControlPlane) Coordinating() bool { return cp.coordinating.Load() }
