package controlplane_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
)

// groupMember is a member's agent in a group-point test.
type groupMember struct {
	id    string
	agent *api.Client
	cert  string // the agent's certificate (PEM)
}

// replicatingGroup registers n servers replicating continuously and puts them in a
// consistency group; it returns the members and the group.
func replicatingGroup(t *testing.T, e *env, n int) ([]groupMember, api.ConsistencyGroup) {
	t.Helper()
	var ms []groupMember
	var ids []string
	state := api.StateContinuous
	for i := range n {
		agent, reg := e.agent("gm-" + string(rune('a'+i)))
		if _, err := agent.UpdateReplicationState(e.ctx, reg.SourceServer.ID, api.ReplicationStateUpdate{DataReplicationState: &state}); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, groupMember{id: reg.SourceServer.ID, agent: agent, cert: reg.Certificate})
		ids = append(ids, reg.SourceServer.ID)
	}
	g, err := e.admin.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "app", SourceServerIDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	return ms, g
}

// invitation waits until a member's replication config invites it to a group point.
func invitation(t *testing.T, e *env, m groupMember) *api.GroupPointOrder {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		cfg, err := m.agent.ReplicationConfig(e.ctx, m.id)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Control.Group == nil {
			t.Fatalf("the config of member %s names no group", m.id)
		}
		if cfg.Control.GroupPoint != nil {
			return cfg.Control.GroupPoint
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("member %s was never invited to a group point", m.id)
	return nil
}

// reportAll has every member report phase at once, and returns their decisions.
func reportAll(t *testing.T, e *env, ms []groupMember, point, phase string) []api.GroupPointDecision {
	t.Helper()
	out := make([]api.GroupPointDecision, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() {
			d, err := m.agent.ReportGroupPoint(e.ctx, m.id, point, api.GroupPointReport{Phase: phase})
			if err != nil {
				t.Error(err)
			}
			out[i] = d
		})
	}
	wg.Wait()
	return out
}

// groupPointState waits until the group point reaches one of the states and returns it.
func groupPointState(t *testing.T, e *env, group, point string, states ...string) api.GroupPoint {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ps, err := e.admin.ListGroupPoints(e.ctx, group, 100, "", false)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps.Items {
			if p.ID == point && strings.Contains(strings.Join(states, " "), p.State) {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("group point %s did not reach %v: %+v", point, states, ps.Items)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The barriers of a group point: nobody freezes before every member is ready, nobody
// thaws before every member is frozen, every member seals at the same instant, and the
// point is COMPLETE once every member's PIT is recorded.
func TestGroupPointBarriers(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		ms, g := replicatingGroup(t, e, 3)
		rep, _ := e.replicator("r1", "default")
		gp := invitation(t, e, ms[0])
		for _, d := range reportAll(t, e, ms, gp.ID, api.GroupPhaseReady) {
			if d.Action != api.GroupActionFreeze {
				t.Fatalf("ready answered %+v, want freeze", d)
			}
		}
		var at time.Time
		for _, d := range reportAll(t, e, ms, gp.ID, api.GroupPhaseFrozen) {
			if d.Action != api.GroupActionThaw || d.Time == nil || !at.IsZero() && !d.Time.Equal(at) {
				t.Fatalf("frozen answered %+v, want thaw at one instant for all", d)
			}
			at = *d.Time
		}
		for i, m := range ms {
			p := groupPointState(t, e, g.ID, gp.ID, api.GroupPointSealing, api.GroupPointComplete)
			if p.State == api.GroupPointComplete {
				t.Fatalf("complete with %d of 3 PITs recorded", i)
			}
			_, err := rep.CreateRecoverySnapshot(e.ctx, m.id, api.CreateRecoverySnapshotRequest{Time: at, Level: consistency.Filesystem,
				Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1}}, GroupPointID: gp.ID})
			if err != nil {
				t.Fatal(err)
			}
		}
		p := groupPointState(t, e, g.ID, gp.ID, api.GroupPointComplete)
		if len(p.Snapshots) != 3 || p.Time == nil || !p.Time.Equal(at) {
			t.Fatalf("complete point %+v, want 3 PITs at %s", p, at)
		}
		// The next point begins once the interval has passed.
		if next := invitation(t, e, ms[1]); next.ID == gp.ID {
			t.Fatal("the same point was offered twice")
		}
	})
}

// A member that is not ready in time, or not frozen in time, or that fails, aborts the
// point: every member waiting is told at once, and the point is FAILED with the reason.
func TestGroupPointAborts(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		ms, g := replicatingGroup(t, e, 2)
		// Member 1 never reports ready (its link was cut while it prepared).
		gp := invitation(t, e, ms[0])
		start := time.Now()
		d := reportAll(t, e, ms[:1], gp.ID, api.GroupPhaseReady)[0]
		if d.Action != api.GroupActionAbort || !strings.Contains(d.Reason, ms[1].id) || time.Since(start) > 10*time.Second {
			t.Fatalf("ready answered %+v after %s, want abort naming %s", d, time.Since(start), ms[1].id)
		}
		p := groupPointState(t, e, g.ID, gp.ID, api.GroupPointFailed)
		if !strings.Contains(p.Reason, "did not report ready") {
			t.Fatalf("failed point's reason: %q", p.Reason)
		}

		// Member 1 fails while member 0 waits frozen: member 0 is told at once.
		gp = invitation(t, e, ms[0])
		reportAll(t, e, ms, gp.ID, api.GroupPhaseReady)
		var d0 api.GroupPointDecision
		var took time.Duration
		var wg sync.WaitGroup
		wg.Go(func() {
			t0 := time.Now()
			d0, _ = ms[0].agent.ReportGroupPoint(e.ctx, ms[0].id, gp.ID, api.GroupPointReport{Phase: api.GroupPhaseFrozen})
			took = time.Since(t0)
		})
		time.Sleep(20 * time.Millisecond)
		if _, err := ms[1].agent.ReportGroupPoint(e.ctx, ms[1].id, gp.ID, api.GroupPointReport{Phase: api.GroupPhaseFailed,
			Message: "FIFREEZE: device busy"}); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if d0.Action != api.GroupActionAbort || !strings.Contains(d0.Reason, "device busy") || took > 90*time.Millisecond {
			t.Fatalf("the frozen member got %+v after %s, want abort within the freeze bound (200 ms)", d0, took)
		}
		groupPointState(t, e, g.ID, gp.ID, api.GroupPointFailed)

		// Another server's agent cannot report for the group.
		other, reg := e.agent("outsider")
		_, err := other.ReportGroupPoint(e.ctx, reg.SourceServer.ID, gp.ID, api.GroupPointReport{Phase: api.GroupPhaseReady})
		if err == nil {
			t.Fatal("a server outside the group reported for its point")
		}
	})
}

// A member's PIT that is not consistent (level none) fails the point.
func TestGroupPointWithAFuzzyMemberFails(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		ms, g := replicatingGroup(t, e, 2)
		rep, _ := e.replicator("r1", "default")
		gp := invitation(t, e, ms[0])
		reportAll(t, e, ms, gp.ID, api.GroupPhaseReady)
		at := *reportAll(t, e, ms, gp.ID, api.GroupPhaseFrozen)[0].Time
		for i, m := range ms {
			level := consistency.Filesystem
			if i == 1 {
				level = consistency.None
			}
			if _, err := rep.CreateRecoverySnapshot(e.ctx, m.id, api.CreateRecoverySnapshotRequest{Time: at, Level: level,
				Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1}}, GroupPointID: gp.ID}); err != nil {
				t.Fatal(err)
			}
		}
		p := groupPointState(t, e, g.ID, gp.ID, api.GroupPointFailed, api.GroupPointComplete)
		if p.State != api.GroupPointFailed || !strings.Contains(p.Reason, "level none") {
			t.Fatalf("point %+v, want FAILED for the fuzzy member", p)
		}
	})
}

// A restart of the control plane fails the point it was preparing.
func TestGroupPointInterruptedByARestart(t *testing.T) {
	e := &env{t: t, kind: db.SQLite, clock: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}, dataDir: t.TempDir(),
		ctx: context.Background(), agentTimeout: time.Hour}
	dbURL := dbtest.URL(t, db.SQLite)
	e.open(dbURL)
	ms, g := replicatingGroup(t, e, 2)
	gp := invitation(t, e, ms[0])
	e.restart(dbURL)
	p := groupPointState(t, e, g.ID, gp.ID, api.GroupPointFailed)
	if !strings.Contains(p.Reason, "restarted") {
		t.Fatalf("reason %q", p.Reason)
	}
}

// A drill of a consistency group launches every member at one complete group point:
// the newest, or the one named; a point some of whose PITs are gone is passed over.
func TestDrillOfAGroupLaunchesOnePoint(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		repo := recoverytest.Store(t, e.cp)
		const size = 2 << 20
		a := recoverytest.Server(t, e.cp, "ga", map[string]int64{"vda": size})
		b := recoverytest.Server(t, e.cp, "gb", map[string]int64{"vda": size})
		grp, err := e.admin.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "pair", SourceServerIDs: []string{a.ID, b.ID}})
		if err != nil {
			t.Fatal(err)
		}
		img := image(t, size, 7)
		now := e.clock.Now()
		var points []string
		for _, at := range []time.Time{now.Add(-2 * time.Minute), now.Add(-time.Minute)} {
			pa, _ := recoverytest.PIT(t, e.cp, repo, a, consistency.Filesystem, at, recoverytest.Volume{Name: "vda", Image: img})
			pb, _ := recoverytest.PIT(t, e.cp, repo, b, consistency.Filesystem, at, recoverytest.Volume{Name: "vda", Image: img})
			points = append(points, completePoint(t, e, grp.ID, at, pa.ID, pb.ID))
		}
		for _, s := range []string{a.ID, b.ID} {
			imageSettings(t, e, s)
		}
		op := e.userClient(api.RoleOperator)
		job, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{ConsistencyGroup: "pair", IsDrill: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(job.Servers) != 2 || !slices.Contains(recoverytest.EventTypes(t, op, job.ID), api.EventUsingGroupPoint) {
			t.Fatalf("group drill %+v, log %v", job.Servers, recoverytest.EventTypes(t, op, job.ID))
		}
		for _, s := range job.Servers {
			snap, err := op.RecoverySnapshot(e.ctx, s.SnapshotID)
			if err != nil || snap.GroupPointID != points[1] {
				t.Fatalf("server %s launched from %+v (%v), want a PIT of the newest point %s", s.SourceServerID, snap, err, points[1])
			}
		}
		recoverytest.WaitJob(t, op, job.ID, time.Minute)

		// The older point named: 409 once one of its PITs is gone; the newest then is
		// still whole and is taken when none is named.
		p, err := e.admin.ListGroupPoints(e.ctx, "pair", 10, "", true)
		if err != nil || len(p.Items) != 2 {
			t.Fatalf("points %+v %v", p, err)
		}
		if err := e.cp.DB().Update(e.ctx, func(tx *db.Tx) error { return tx.DeleteSnapshot(p.Items[1].Snapshots[0].SnapshotID) }); err != nil {
			t.Fatal(err)
		}
		_, err = op.StartRecovery(e.ctx, api.StartRecoveryRequest{ConsistencyGroup: "pair", GroupPointID: points[0], IsDrill: true})
		wantAPIError(t, err, 409, api.CodeConflict)
		_, err = op.StartRecovery(e.ctx, api.StartRecoveryRequest{ConsistencyGroup: "pair", SourceServers: []api.RecoveryServer{{SourceServerID: a.ID}}, IsDrill: true})
		wantAPIError(t, err, 400, api.CodeInvalid)
		at := now.Add(-90 * time.Second)
		_, err = op.StartRecovery(e.ctx, api.StartRecoveryRequest{ConsistencyGroup: "pair", At: &at, IsDrill: true})
		wantAPIError(t, err, 409, api.CodeConflict)
	})
}

// completePoint records a COMPLETE point of group made of the given PITs, and returns
// its id.
func completePoint(t *testing.T, e *env, group string, at time.Time, pits ...string) string {
	t.Helper()
	id := api.NewID(api.PrefixGroupPoint)
	err := e.cp.DB().Update(e.ctx, func(tx *db.Tx) error {
		if err := tx.CreateGroupPoint(db.GroupPoint{AccountID: e.cp.SystemAccountID(), GroupPoint: api.GroupPoint{ID: id, GroupID: group,
			Time: &at, State: api.GroupPointComplete, Members: len(pits), CreatedAt: at, UpdatedAt: at}}); err != nil {
			return err
		}
		for _, p := range pits {
			if err := tx.SetSnapshotGroupPoint(p, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A member whose part fails after the thaw (its freeze did not hold) fails the point at
// once, without waiting for the PITs that will not come.
func TestGroupPointFailedAfterTheThaw(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		ms, g := replicatingGroup(t, e, 2)
		gp := invitation(t, e, ms[0])
		reportAll(t, e, ms, gp.ID, api.GroupPhaseReady)
		reportAll(t, e, ms, gp.ID, api.GroupPhaseFrozen)
		if _, err := ms[1].agent.ReportGroupPoint(e.ctx, ms[1].id, gp.ID, api.GroupPointReport{Phase: api.GroupPhaseFailed,
			Message: "the freeze did not hold until the group's thaw"}); err != nil {
			t.Fatal(err)
		}
		p := groupPointState(t, e, g.ID, gp.ID, api.GroupPointFailed)
		if !strings.Contains(p.Reason, "did not hold") {
			t.Fatalf("reason %q", p.Reason)
		}
	})
}

// Group points that hold the members frozen long are spaced out, so that they freeze
// writes at most 2% of the time: 100 ms frozen puts the next point 5 s after.
func TestGroupPointsSpaceOutWhenTheyFreezeLong(t *testing.T) {
	e := start(t, db.SQLite)
	ms, _ := replicatingGroup(t, e, 2)
	gp := invitation(t, e, ms[0])
	reportAll(t, e, ms, gp.ID, api.GroupPhaseReady)
	time.Sleep(100 * time.Millisecond) // the members take long to freeze and read
	reportAll(t, e, ms, gp.ID, api.GroupPhaseFrozen)
	thawed := time.Now()
	next := invitation(t, e, ms[0])
	if next.ID == gp.ID {
		t.Fatal("the same point was offered twice")
	}
	if gap := time.Since(thawed); gap < 4*time.Second {
		t.Fatalf("the next point came %s after a point that froze the members 100 ms; want about 5 s", gap)
	}
}
