package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// The coordinator of group points (docs/architecture.md, "Consistency groups"). A group
// point is two barriers the members' agents meet at through this control plane:
//
//  1. prepare: the members' agents, invited through their replication config, write
//     back and send what is dirty, and each reports ready;
//  2. once every member is ready, each freezes, reads what is dirty and reports frozen;
//     once every member is frozen — at that instant every member's filesystems are
//     frozen at once: the group instant — each thaws and seals its PIT at that
//     instant, naming the group point.
//
// A member that is not ready or not frozen in time, or reports that it failed, aborts
// the point: every member waiting is told at once, thaws and carries on (the agents'
// own freeze bounds and watchdogs hold if this process or a member dies). The point is
// COMPLETE when every member's PIT is recorded. The barriers live in memory: a
// restarted control plane fails the points it was running.

const (
	// groupPrepareWithin is how long members have to report ready.
	groupPrepareWithin = 3 * time.Second
	// groupSealWithin is how long members' PITs have to arrive after the thaw.
	groupSealWithin = time.Minute
	// groupTick is how often the coordinator looks for a group whose point is due.
	groupTick = 100 * time.Millisecond
	// groupMaxPause is the longest pause between points that keep failing (a member is
	// down): the next one still comes soon after it is back.
	groupMaxPause = 10 * time.Second
	// groupKeepFailed is how long the records of failed group points are kept.
	groupKeepFailed = time.Hour
)

// Phases of a group point in progress.
const (
	phasePrepare = "prepare"
	phaseFreeze  = "freeze"
	phaseThaw    = "thaw"
	phaseAbort   = "abort"
)

type groupCoordinator struct {
	cp   *ControlPlane
	wake chan struct{} // membership changed: reload the groups

	mu       sync.Mutex
	runs     map[string]*groupRun  // point id → run, in progress or just ended
	active   map[string]*groupRun  // group id → its run in progress
	next     map[string]time.Time  // group id → when its next point may begin
	failures map[string]int        // group id → points failed in a row
	sealing  map[string]time.Time  // point id → when its members' PITs are overdue
	waiting  map[string]string     // group id → why its points wait (logged once)
	bounds   map[string]groupBound // group id → its interval and smoothed freeze window
	cleaned  time.Time             // when old records were last removed (the loop's own)
}

// groupBound is how often a group's points may come: its interval, and the smoothed
// window its points froze the members (from the freeze to the thaw), which widens the
// interval so that points freeze writes at most groupMaxStall of the time, as an
// agent's own points do.
type groupBound struct{ interval, window time.Duration }

// groupMaxStall is the share of the time group points may freeze the members' writes.
const groupMaxStall = 0.02

// every is how often the group's points may begin.
func (b groupBound) every() time.Duration {
	return max(b.interval, time.Duration(float64(b.window)/groupMaxStall))
}

// groupRun is a group point in progress.
type groupRun struct {
	point, group, account string
	members               []string
	started               time.Time
	freezeWithin          time.Duration // three quarters of the members' smallest freeze bound
	frozeAt               time.Time     // when every member was told to freeze
	recorded              chan struct{} // closed once the end is recorded
	phase                 string
	ready, frozen         map[string]bool
	at                    time.Time // the group instant (thaw)
	reason                string    // abort
	changed               chan struct{}
	timer                 *time.Timer
}

func newGroupCoordinator(cp *ControlPlane) *groupCoordinator {
	return &groupCoordinator{cp: cp, wake: make(chan struct{}, 1), runs: map[string]*groupRun{}, active: map[string]*groupRun{},
		next: map[string]time.Time{}, failures: map[string]int{}, sealing: map[string]time.Time{}, waiting: map[string]string{},
		bounds: map[string]groupBound{}}
}

// groupsChanged makes the coordinator read the groups again (a group or its members
// changed).
func (cp *ControlPlane) groupsChanged() {
	select {
	case cp.groups.wake <- struct{}{}:
	default:
	}
}

// wakeAgents wakes the agents of servers waiting on their replication config, and only
// them (serverChanged also wakes every replicator); those waiting on another control
// plane are woken through the database, with its replicators.
func (cp *ControlPlane) wakeAgents(ids []string) {
	cp.watchMu.Lock()
	for _, id := range ids {
		if ch, ok := cp.watchers[id]; ok {
			close(ch)
			delete(cp.watchers, id)
		}
	}
	cp.watchMu.Unlock()
	// The group coordinator calls this holding its lock: the notification must not
	// hold it a database round trip longer (it is bounded by announceWithin).
	go cp.announce(slices.Clone(ids)...)
}

// system is a call made by the control plane itself.
func (g *groupCoordinator) system(ctx context.Context) *call {
	return &call{cp: g.cp, ctx: ctx, p: principal{Kind: "system", ID: "group-coordinator", Role: api.RoleAdmin}}
}

// loop starts the group points that are due, and looks after those sealing, until ctx
// ends.
func (g *groupCoordinator) loop(ctx context.Context) {
	g.recover(ctx)
	t := time.NewTicker(groupTick)
	defer t.Stop()
	var groups []db.Group
	var loaded, upkept time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.wake:
			loaded = time.Time{}
		}
		if time.Since(loaded) > 10*time.Second {
			var err error
			if groups, err = g.load(ctx); err != nil {
				g.cp.log.Warn("reading the consistency groups failed", "err", err)
				continue
			}
			loaded = time.Now()
		}
		for _, grp := range groups {
			g.maybeStart(ctx, grp)
		}
		if time.Since(upkept) >= time.Second {
			g.upkeep(ctx)
			upkept = time.Now()
		}
	}
}

func (g *groupCoordinator) load(ctx context.Context) ([]db.Group, error) {
	var out []db.Group
	err := g.system(ctx).view(func(tx *db.Tx) (err error) {
		out, err = tx.AllGroups()
		return err
	})
	return out, err
}

// recover settles the points a previous run of the control plane left: those sealing
// may still complete; the others failed.
func (g *groupCoordinator) recover(ctx context.Context) {
	c := g.system(ctx)
	err := c.update(func(tx *db.Tx) error {
		ps, err := tx.UnfinishedGroupPoints()
		if err != nil {
			return err
		}
		now := g.cp.cfg.Now()
		for _, p := range ps {
			if p.State == api.GroupPointSealing {
				g.mu.Lock()
				g.sealing[p.ID] = time.Now().Add(groupSealWithin)
				g.mu.Unlock()
				continue
			}
			if err := g.fail(c, tx, p.GroupPoint, p.AccountID, "the control plane restarted during the point", now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		g.cp.log.Warn("settling the group points of the last run failed", "err", err)
	}
}

// fail records a group point as failed, with an event.
func (g *groupCoordinator) fail(c *call, tx *db.Tx, p api.GroupPoint, account, reason string, now time.Time) error {
	if err := tx.UpdateGroupPoint(p.ID, api.GroupPointFailed, reason, time.Time{}, now); err != nil {
		return err
	}
	p.State, p.Reason = api.GroupPointFailed, reason
	c.emit(account, "group-point.failed", "consistency-group", p.GroupID, p)
	return nil
}

// maybeStart begins a group's point when one is due and every member replicates.
func (g *groupCoordinator) maybeStart(ctx context.Context, grp db.Group) {
	g.mu.Lock()
	busy := g.active[grp.ID] != nil || time.Now().Before(g.next[grp.ID])
	g.mu.Unlock()
	if busy || len(grp.SourceServerIDs) == 0 {
		return
	}
	run := &groupRun{point: api.NewID(api.PrefixGroupPoint), group: grp.ID, account: grp.AccountID,
		members: slices.Clone(grp.SourceServerIDs), started: time.Now(), phase: phasePrepare,
		ready: map[string]bool{}, frozen: map[string]bool{}, changed: make(chan struct{}), recorded: make(chan struct{})}
	interval := time.Duration(grp.IntervalSeconds) * time.Second
	why, err := g.begin(ctx, run, grp)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil || why != "" {
		g.next[grp.ID] = time.Now().Add(max(interval, 5*time.Second))
		if err != nil && ctx.Err() == nil {
			g.cp.log.Warn("starting a group point failed", "group", grp.Name, "err", err)
		} else if why != "" && g.waiting[grp.ID] != why {
			g.cp.log.Info("consistency group points wait", "group", grp.Name, "reason", why)
		}
		g.waiting[grp.ID] = why
		return
	}
	delete(g.waiting, grp.ID)
	b := g.bounds[grp.ID]
	b.interval = interval
	g.bounds[grp.ID] = b
	g.runs[run.point], g.active[grp.ID] = run, run
	run.timer = time.AfterFunc(groupPrepareWithin, func() { g.expire(run, phasePrepare) })
	g.cp.wakeAgents(run.members)
}

// begin checks that every member replicates, takes the smallest freeze bound among
// them and records the point as PREPARING. A reason (and no record) says why the point
// must wait.
func (g *groupCoordinator) begin(ctx context.Context, run *groupRun, grp db.Group) (string, error) {
	why := ""
	err := g.system(ctx).update(func(tx *db.Tx) error {
		bound := time.Duration(0)
		for _, id := range run.members {
			s, err := tx.SourceServer(id)
			if err != nil {
				return err
			}
			ctl, err := tx.ReplicationControl(id)
			if err != nil {
				return err
			}
			st := s.Replication.DataReplicationState
			if st != api.StateContinuous && st != api.StateBacklog || ctl.Desired != api.DesiredReplicating {
				why = fmt.Sprintf("member %s is %s, not replicating continuously", id, st)
				return nil
			}
			set, err := effective(tx, s)
			if err != nil {
				return err
			}
			if b := time.Duration(set.FreezeTimeoutMs) * time.Millisecond; bound == 0 || b < bound {
				bound = b
			}
		}
		// The rest of the bound is the members' margin to hear the thaw before their
		// own timers thaw them (which would make their parts inconsistent).
		run.freezeWithin = bound * 3 / 4
		now := g.cp.cfg.Now()
		return tx.CreateGroupPoint(db.GroupPoint{AccountID: grp.AccountID, GroupPoint: api.GroupPoint{ID: run.point,
			GroupID: grp.ID, State: api.GroupPointPreparing, Members: len(run.members), CreatedAt: now, UpdatedAt: now}})
	})
	return why, err
}

// order is the invitation a member's agent reads in its replication config while the
// group point prepares and it has not reported ready.
func (g *groupCoordinator) order(groupID, serverID string) *api.GroupPointOrder {
	g.mu.Lock()
	defer g.mu.Unlock()
	run := g.active[groupID]
	if run == nil || run.phase != phasePrepare || run.ready[serverID] || !slices.Contains(run.members, serverID) {
		return nil
	}
	return &api.GroupPointOrder{ID: run.point, Deadline: run.started.Add(groupPrepareWithin)}
}

// report applies a member's report and waits until the point moves on, then says what
// the member does next.
func (g *groupCoordinator) report(ctx context.Context, serverID, pointID string, r api.GroupPointReport) (api.GroupPointDecision, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	run := g.runs[pointID]
	if run == nil {
		return api.GroupPointDecision{Action: api.GroupActionAbort, Reason: "group point " + pointID + " is over or unknown"}, nil
	}
	if !slices.Contains(run.members, serverID) {
		return api.GroupPointDecision{}, api.NotFound("source server %s is not a member of group point %s", serverID, pointID)
	}
	switch r.Phase {
	case api.GroupPhaseFailed:
		reason := fmt.Sprintf("member %s failed: %s", serverID, clip(r.Message, 500))
		if run.phase == phaseThaw {
			go g.failLate(run, reason) // its part failed after the freeze: the others seal theirs
		}
		g.abortLocked(run, reason)
	case api.GroupPhaseReady:
		if run.phase == phasePrepare {
			run.ready[serverID] = true
			if len(run.ready) == len(run.members) {
				g.enterLocked(run, phaseFreeze)
			}
		}
	case api.GroupPhaseFrozen:
		if run.phase == phaseFreeze {
			run.frozen[serverID] = true
			if len(run.frozen) == len(run.members) {
				run.at = g.cp.cfg.Now()
				g.enterLocked(run, phaseThaw)
			}
		}
	default:
		return api.GroupPointDecision{}, api.Invalid("phase must be ready, frozen or failed, not %q", r.Phase)
	}
	for {
		if dec, ok := run.decision(r.Phase); ok {
			return dec, nil
		}
		ch := run.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		g.mu.Lock()
		if ctx.Err() != nil {
			return api.GroupPointDecision{}, ctx.Err()
		}
	}
}

// decision is what a member that reported phase does next, once the point moved on.
func (run *groupRun) decision(phase string) (api.GroupPointDecision, bool) {
	switch {
	case run.phase == phaseAbort || phase == api.GroupPhaseFailed:
		return api.GroupPointDecision{Action: api.GroupActionAbort, Reason: run.reason}, true
	case phase == api.GroupPhaseReady && run.phase != phasePrepare:
		return api.GroupPointDecision{Action: api.GroupActionFreeze}, true
	case phase == api.GroupPhaseFrozen && run.phase == phaseThaw:
		at := run.at
		return api.GroupPointDecision{Action: api.GroupActionThaw, Time: &at}, true
	}
	return api.GroupPointDecision{}, false
}

// expire aborts the point if it is still in phase when its time is up.
func (g *groupCoordinator) expire(run *groupRun, phase string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if run.phase != phase {
		return
	}
	var late []string
	for _, m := range run.members {
		if phase == phasePrepare && !run.ready[m] || phase == phaseFreeze && !run.frozen[m] {
			late = append(late, m)
		}
	}
	what, within := "ready", groupPrepareWithin
	if phase == phaseFreeze {
		what, within = "frozen", run.freezeWithin
	}
	g.abortLocked(run, fmt.Sprintf("%s did not report %s within %s", strings.Join(late, ", "), what, within))
}

// enterLocked moves a run to its next phase and wakes every member waiting on it.
func (g *groupCoordinator) enterLocked(run *groupRun, phase string) {
	run.phase = phase
	close(run.changed)
	run.changed = make(chan struct{})
	if run.timer != nil {
		run.timer.Stop()
	}
	switch phase {
	case phaseFreeze:
		run.frozeAt = time.Now()
		run.timer = time.AfterFunc(run.freezeWithin, func() { g.expire(run, phaseFreeze) })
	case phaseThaw, phaseAbort:
		g.endLocked(run)
	}
}

func (g *groupCoordinator) abortLocked(run *groupRun, reason string) {
	if run.phase == phaseThaw || run.phase == phaseAbort {
		return
	}
	run.reason = reason
	g.enterLocked(run, phaseAbort)
}

// endLocked ends a run that thawed or aborted: the group may begin its next point (at
// once after a failure, with a growing pause when they keep failing), and the record
// follows, outside the members' freeze.
func (g *groupCoordinator) endLocked(run *groupRun) {
	delete(g.active, run.group)
	time.AfterFunc(30*time.Second, func() { g.mu.Lock(); delete(g.runs, run.point); g.mu.Unlock() })
	b := g.bounds[run.group]
	if run.phase == phaseThaw {
		g.failures[run.group] = 0
		window := time.Since(run.frozeAt)
		if b.window == 0 {
			b.window = window
		}
		b.window += (window - b.window) / 5
		if was := g.bounds[run.group].every(); b.every() != was && (b.every() > b.interval || was > b.interval) {
			g.cp.log.Info("consistency group points spaced to keep freezes under 2% of the time", "group", run.group,
				"every", b.every().Round(time.Millisecond), "interval", b.interval, "freeze_window", b.window.Round(time.Millisecond))
		}
		g.bounds[run.group] = b
		g.next[run.group] = run.started.Add(b.every())
		g.sealing[run.point] = time.Now().Add(groupSealWithin)
	} else {
		g.failures[run.group]++
		g.next[run.group] = time.Now().Add(min(b.interval<<min(g.failures[run.group], 4), groupMaxPause))
	}
	go g.recordEnd(run)
}

// recordEnd records how a run ended: SEALING at the group instant, or FAILED.
func (g *groupCoordinator) recordEnd(run *groupRun) {
	defer close(run.recorded)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := g.system(ctx)
	err := c.update(func(tx *db.Tx) error {
		now := g.cp.cfg.Now()
		if run.phase == phaseAbort {
			return g.fail(c, tx, api.GroupPoint{ID: run.point, GroupID: run.group, Members: len(run.members)}, run.account, run.reason, now)
		}
		if err := tx.UpdateGroupPoint(run.point, api.GroupPointSealing, "", run.at, now); err != nil {
			return err
		}
		_, err := g.settle(c, tx, run.point, false)
		return err
	})
	if err != nil {
		g.cp.log.Warn("recording the end of a group point failed", "point", run.point, "err", err)
	}
}

// failLate fails a point that thawed when a member's part failed after all (its read
// or its freeze did not hold), once the thaw is recorded.
func (g *groupCoordinator) failLate(run *groupRun, reason string) {
	<-run.recorded
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := g.system(ctx)
	err := c.update(func(tx *db.Tx) error {
		p, err := tx.GroupPoint(run.point)
		if err != nil || p.State == api.GroupPointFailed || p.State == api.GroupPointComplete {
			return err
		}
		return g.fail(c, tx, p.GroupPoint, p.AccountID, reason, g.cp.cfg.Now())
	})
	if err != nil {
		g.cp.log.Warn("recording a failed group point failed", "point", run.point, "err", err)
	}
}

// upkeep completes or fails the points sealing, and removes old records.
func (g *groupCoordinator) upkeep(ctx context.Context) {
	g.mu.Lock()
	points := make(map[string]bool, len(g.sealing))
	for p, due := range g.sealing {
		points[p] = time.Now().After(due)
	}
	g.mu.Unlock()
	c := g.system(ctx)
	for p, overdue := range points {
		var done bool
		err := c.update(func(tx *db.Tx) (err error) {
			done, err = g.settle(c, tx, p, overdue)
			return err
		})
		if err != nil && ctx.Err() == nil {
			g.cp.log.Warn("settling a group point failed", "point", p, "err", err)
		}
		if done || errors.Is(err, db.ErrNotFound) {
			g.mu.Lock()
			delete(g.sealing, p)
			g.mu.Unlock()
		}
	}
	if time.Since(g.cleaned) >= time.Minute {
		g.cleaned = time.Now()
		err := c.update(func(tx *db.Tx) error {
			_, err := tx.DeleteOldGroupPoints(g.cp.cfg.Now().Add(-groupKeepFailed))
			return err
		})
		if err != nil && ctx.Err() == nil {
			g.cp.log.Warn("removing old group point records failed", "err", err)
		}
	}
}

// settle completes a point SEALING whose members' PITs are all recorded, or fails it
// when they are overdue. It reports whether the point is settled.
func (g *groupCoordinator) settle(c *call, tx *db.Tx, pointID string, overdue bool) (bool, error) {
	p, err := tx.GroupPoint(pointID)
	if err != nil {
		return false, err
	}
	if p.State != api.GroupPointSealing {
		return p.State == api.GroupPointComplete || p.State == api.GroupPointFailed, nil
	}
	now := g.cp.cfg.Now()
	if len(p.Snapshots) >= p.Members {
		if err := tx.UpdateGroupPoint(p.ID, api.GroupPointComplete, "", time.Time{}, now); err != nil {
			return false, err
		}
		p.State = api.GroupPointComplete
		c.emit(p.AccountID, "group-point.complete", "consistency-group", p.GroupID, p.GroupPoint)
		return true, nil
	}
	if !overdue {
		return false, nil
	}
	reason := fmt.Sprintf("only %d of the %d members' PITs were recorded within %s of the group instant", len(p.Snapshots), p.Members, groupSealWithin)
	return true, g.fail(c, tx, p.GroupPoint, p.AccountID, reason, now)
}

// attach links a member's PIT, just recorded, to the group point its marker named, or
// fails the point when the PIT is not consistent. A PIT that names a point of another
// account, or of a group the server is not in (any more), stays a PIT of its own.
func (g *groupCoordinator) attach(c *call, tx *db.Tx, snap db.Snapshot, pointID string) error {
	p, err := tx.GroupPoint(pointID)
	if errors.Is(err, db.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	group, err := tx.GroupOf(snap.SourceServerID)
	if err != nil || p.AccountID != snap.AccountID || group != p.GroupID || p.State == api.GroupPointFailed {
		return err
	}
	if !snap.Level.Recoverable() {
		return g.fail(c, tx, p.GroupPoint, p.AccountID, fmt.Sprintf("member %s's PIT is of level %s", snap.SourceServerID, snap.Level), g.cp.cfg.Now())
	}
	if err := tx.SetSnapshotGroupPoint(snap.ID, p.ID); err != nil {
		return err
	}
	_, err = g.settle(c, tx, p.ID, false)
	return err
}

// groupControl adds to a server's replication control its consistency group, and the
// invitation to the group point being prepared.
func (c *call) groupControl(tx *db.Tx, s db.SourceServer, ctl *api.ReplicationControl) error {
	id, err := tx.GroupOf(s.ID)
	if err != nil || id == "" {
		return err
	}
	grp, err := tx.Group(s.AccountID, id)
	if err != nil {
		return err
	}
	ctl.Group = &api.GroupMembership{ID: grp.ID, IntervalSeconds: grp.IntervalSeconds}
	if !c.cp.Coordinating() && c.cp.db.Kind() == db.Postgres {
		ctl.GroupPoint, err = orderFromDB(tx, grp.ID, c.cp.cfg.Now())
		return err
	}
	ctl.GroupPoint = c.cp.groups.order(grp.ID, s.ID)
	return nil
}

// orderFromDB is the invitation to a group point as a control plane that does not
// coordinate gives it (its agents' reports are relayed, grouprelay.go): the group's
// point being prepared, as the coordinator recorded it, until its prepare deadline. A
// member that reported ready already is invited again; its agent ignores a point it
// handled.
func orderFromDB(tx *db.Tx, groupID string, now time.Time) (*api.GroupPointOrder, error) {
	ps, _, err := tx.ListGroupPoints(groupID, 1, "", false)
	if err != nil || len(ps) == 0 {
		return nil, err
	}
	deadline := ps[0].CreatedAt.Add(groupPrepareWithin)
	if ps[0].State != api.GroupPointPreparing || !now.Before(deadline) {
		return nil, nil
	}
	return &api.GroupPointOrder{ID: ps[0].ID, Deadline: deadline}, nil
}

// clip cuts s to at most n bytes, at a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// reportGroupPoint is an agent's report of a phase of a group point of its server.
func (c *call) reportGroupPoint(req *api.GroupPointReport) (api.GroupPointDecision, error) {
	if !c.cp.Coordinating() && c.cp.db.Kind() == db.Postgres {
		return c.cp.relayReport(c.ctx, c.pathID(), c.r.PathValue("point"), *req)
	}
	return c.cp.groups.report(c.ctx, c.pathID(), c.r.PathValue("point"), *req)
}
