package controlplane

import (
	"context"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// Several control planes may serve one database (docs/architecture.md "Two control
// planes"): each serves the whole API and runs the jobs it claims (jobs have
// leases of their own), but what must run once runs only in the one holding the
// coordinator lease: replicator assignment, the agent watch, consistency groups, plan
// runs and scheduled drills. The holder renews the lease every quarter of
// Config.CoordinatorLease; another takes it once it lapses. A holder that cannot renew
// stops coordinating once half the lease has passed since its last renewal began —
// three quarters at worst, the attempts being bounded — before anyone else may take it
// (the hosts' clocks must agree to well within the last quarter: NTP).

// coordinatorLease names the lease in the database.
const coordinatorLease = "coordinator"

// coordinate takes and renews the coordinator lease until ctx ends, running the
// coordinator's loops while it holds it.
func (cp *ControlPlane) coordinate(ctx context.Context) {
	c := &coordinator{cp: cp, ttl: cp.cfg.CoordinatorLease, holder: cp.rec.runnerID}
	defer c.release()
	for {
		wait := c.ttl / 4
		if !c.renew(ctx) {
			wait = c.ttl / 8 // a failed renewal is retried sooner
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// coordinator is the state of coordinate's loop.
type coordinator struct {
	cp      *ControlPlane
	ttl     time.Duration
	holder  string
	cancel  context.CancelFunc // ends the coordinator's loops; nil when they do not run
	done    chan struct{}      // closed once they all returned
	renewed time.Time          // when the last renewal that succeeded began
}

// renew takes or renews the lease, and starts or stops the coordinator's loops as it
// went; false when the database did not answer. Each attempt is bounded (ttl/8), so
// that a holder whose database hangs still stops within three quarters of the lease,
// before another may take it.
func (c *coordinator) renew(ctx context.Context) bool {
	began, now := time.Now(), c.cp.cfg.Now()
	actx, cancel := context.WithTimeout(ctx, c.ttl/8)
	defer cancel()
	var ok bool
	err := c.cp.db.Update(actx, func(tx *db.Tx) (err error) {
		ok, err = tx.TakeLease(coordinatorLease, c.holder, now, now.Add(c.ttl))
		return err
	})
	switch {
	case err == nil && ok:
		c.renewed = began
		c.start(ctx)
		return true
	case err == nil:
		c.stop("another control plane holds the coordinator lease")
		return true
	case ctx.Err() != nil:
		return true
	}
	c.cp.log.Warn("renewing the coordinator lease failed; will retry", "err", err)
	if time.Since(c.renewed) > c.ttl/2 {
		c.stop("the coordinator lease could not be renewed for half its term")
	}
	return false
}

// start runs the coordinator's loops, unless they run.
func (c *coordinator) start(ctx context.Context) {
	if c.cancel != nil {
		return
	}
	c.cancel, c.done = c.cp.startCoordinator(ctx)
	c.cp.coordinating.Store(true)
	c.cp.log.Info("this control plane coordinates: it runs assignment, groups, plan runs and scheduled drills")
}

// stop ends the coordinator's loops and waits for them, if they run.
func (c *coordinator) stop(why string) {
	if c.cancel == nil {
		return
	}
	c.cancel()
	<-c.done
	c.cancel = nil
	c.cp.coordinating.Store(false)
	c.cp.log.Warn("this control plane no longer coordinates: another runs assignment, groups and plans", "reason", why)
}

// release stops the loops and gives the lease up, so another takes it at once.
func (c *coordinator) release() {
	c.stop("it stops")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.cp.db.Update(ctx, func(tx *db.Tx) error { return tx.DropLease(coordinatorLease, c.holder) }); err != nil {
		c.cp.log.Warn("could not give up the coordinator lease; another control plane takes it when it lapses", "err", err)
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
