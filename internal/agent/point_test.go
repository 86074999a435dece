package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// levels returns the levels of the markers the fake replicator received.
func (r *fakeReplicator) levels() []consistency.Level {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []consistency.Level
	for _, m := range r.markers {
		out = append(out, m.Level)
	}
	return out
}

// A freeze that fails gives a crash-consistent point when no write completes while the
// point reads the volumes, and the state says why points are taken without a freeze.
func TestFailedFreezeTakesACrashPoint(t *testing.T) {
	src := newFakeSource(true, 16)
	src.mounts = []string{t.TempDir()}
	src.freezeErr = errors.New("FIFREEZE: operation not supported")
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{})
	src.write(0, 3, 7)
	if err := runFor(t, s, testConfig(), false, func() bool { return len(rep.levels()) >= 2 }); err != nil {
		t.Fatal(err)
	}
	for _, l := range rep.levels() {
		if l != consistency.Crash {
			t.Fatalf("levels %v, want crash: no write completed during the points", rep.levels())
		}
	}
	st, _ := s.st.snapshot(time.Now(), 0)
	if st.Error == nil || st.Error.Code != api.ErrPointsCrashConsistent || !strings.Contains(st.Error.Message, "operation not supported") {
		t.Fatalf("state error %+v, want %s naming the freeze's failure", st.Error, api.ErrPointsCrashConsistent)
	}
	if rep.block(0, 3) == nil {
		t.Fatal("the block written before the point is not on the replica")
	}
}

// A write that completes while a point without a freeze reads the volumes makes the
// point fuzzy: level none, never offered as crash-consistent.
func TestWriteDuringAPointWithoutFreezeMakesItFuzzy(t *testing.T) {
	src := newFakeSource(true, 16)
	var n byte
	src.duringCollect = func() { n++; src.write(0, uint64(n%16), n) } // no mounts: no freeze
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{})
	if err := runFor(t, s, testConfig(), false, func() bool { return len(rep.levels()) >= 2 }); err != nil {
		t.Fatal(err)
	}
	for _, l := range rep.levels() {
		if l != consistency.None {
			t.Fatalf("levels %v, want none: writes completed during every point", rep.levels())
		}
	}
}

// Points that freeze writes longer than the machine can sustain at the set interval
// are taken less often, and the state says how often and why.
func TestIntervalWidensWhenPointsFreezeTooLong(t *testing.T) {
	src := newFakeSource(true, 16)
	src.mounts = []string{t.TempDir()}
	link, _ := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{FreezeHold: 40 * time.Millisecond})
	cfg := testConfig()
	cfg.Settings.ConsistencyPointIntervalSeconds = 1
	var first, fourth time.Time
	err := runFor(t, s, cfg, false, func() bool {
		switch src.freezes.Load() {
		case 1:
			if first.IsZero() {
				first = time.Now()
			}
		case 4:
			fourth = time.Now()
			return true
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.st.snapshot(time.Now(), 0)
	if st.Error == nil || st.Error.Code != api.ErrPointIntervalWidened || !strings.Contains(st.Error.Message, "instead of every 1s") {
		t.Fatalf("state error %+v, want %s", st.Error, api.ErrPointIntervalWidened)
	}
	// 40 ms of freeze is 2% of 2 s: the points after the third come at least 3 s apart.
	if gap := fourth.Sub(first); gap < 4*time.Second {
		t.Fatalf("4 points in %s: the interval did not widen", gap)
	}
}

// fakeCoordinator answers group-point reports as a scripted control plane would.
type fakeCoordinator struct {
	mu      sync.Mutex
	reports []string // phases, in order
	answer  func(phase string) api.GroupPointDecision
}

func (c *fakeCoordinator) ReportGroupPoint(_ context.Context, _, _ string, r api.GroupPointReport) (api.GroupPointDecision, error) {
	c.mu.Lock()
	c.reports = append(c.reports, r.Phase)
	c.mu.Unlock()
	return c.answer(r.Phase), nil
}

func (c *fakeCoordinator) phases() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.reports, ",")
}

// A group point the coordinator completes is sealed at the group's instant, names the
// group point, and holds what was written before the freeze.
func TestGroupPointSealsAtTheGroupsInstant(t *testing.T) {
	at := time.Date(2026, 12, 3, 11, 0, 0, 0, time.UTC)
	co := &fakeCoordinator{answer: func(phase string) api.GroupPointDecision {
		if phase == api.GroupPhaseReady {
			return api.GroupPointDecision{Action: api.GroupActionFreeze}
		}
		return api.GroupPointDecision{Action: api.GroupActionThaw, Time: &at}
	}}
	m := runGroupPoint(t, co, nil)
	if m == nil || m.GroupPoint != "gpit-1" || m.TimeUnixNano != at.UnixNano() || m.Level != consistency.Filesystem {
		t.Fatalf("marker %+v, want one of gpit-1 at %s, filesystem", m, at)
	}
	if got := co.phases(); got != "ready,frozen" {
		t.Fatalf("reports %s, want ready,frozen", got)
	}
}

// A group point the coordinator aborts while frozen thaws, puts back what it read (the
// next drain sends it) and seals nothing; the state says why.
func TestAbortedGroupPointSealsNothing(t *testing.T) {
	co := &fakeCoordinator{answer: func(phase string) api.GroupPointDecision {
		if phase == api.GroupPhaseReady {
			return api.GroupPointDecision{Action: api.GroupActionFreeze}
		}
		return api.GroupPointDecision{Action: api.GroupActionAbort, Reason: "member s-2 did not freeze in time"}
	}}
	var s *session
	m := runGroupPoint(t, co, func(sess *session) { s = sess })
	if m != nil {
		t.Fatalf("marker %+v sealed for an aborted group point", m)
	}
	if s.src.Dirty(0) == 0 {
		t.Fatal("the blocks read for the aborted point are not dirty again")
	}
	if s.src.(*fakeSource).frozen {
		t.Fatal("the filesystems are still frozen")
	}
	st, _ := s.st.snapshot(time.Now(), 0)
	if st.Error == nil || st.Error.Code != codeGroupPointFailed || !strings.Contains(st.Error.Message, "s-2 did not freeze") {
		t.Fatalf("state error %+v", st.Error)
	}
}

// A member that cannot freeze tells the coordinator at once (every member thaws).
func TestMemberThatCannotFreezeReportsFailed(t *testing.T) {
	co := &fakeCoordinator{answer: func(phase string) api.GroupPointDecision {
		if phase == api.GroupPhaseReady {
			return api.GroupPointDecision{Action: api.GroupActionFreeze}
		}
		return api.GroupPointDecision{Action: api.GroupActionAbort}
	}}
	m := runGroupPoint(t, co, func(s *session) { s.src.(*fakeSource).freezeErr = errors.New("frozen by someone else") })
	if m != nil {
		t.Fatalf("marker %+v sealed", m)
	}
	if got := co.phases(); got != "ready,failed" {
		t.Fatalf("reports %s, want ready,failed", got)
	}
}

// runGroupPoint runs one group point gpit-1 on a session over a fake replicator, after
// setup, with a block written before it; it returns the marker sealed (nil: none).
func runGroupPoint(t *testing.T, co *fakeCoordinator, setup func(*session)) *wire.Marker {
	t.Helper()
	src := newFakeSource(true, 16)
	src.mounts = []string{t.TempDir()}
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{ServerID: "s-1", Groups: co})
	if setup != nil {
		setup(s)
	}
	src.write(0, 5, 9)                                                        // sent before the freeze
	src.beforeFreeze = func() { src.write(0, 6, 10); src.beforeFreeze = nil } // read while frozen
	gp := &api.GroupPointOrder{ID: "gpit-1", Deadline: time.Now().Add(5 * time.Second)}
	err := serve(t, s, func(ctx context.Context) error {
		return s.groupPoint(ctx, gp, 2*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	rep.mu.Lock()
	defer rep.mu.Unlock()
	for _, m := range rep.markers {
		if rep.pits[m.ID][0][5] == nil || rep.pits[m.ID][0][6] == nil {
			t.Fatal("the group point's PIT lacks a block written before its freeze")
		}
		return m
	}
	return nil
}

// A member whose replicator speaks protocol version 1 (no group point in a Marker)
// reports failed at once instead of leaving the group waiting.
func TestMemberOnAnOldReplicatorReportsFailed(t *testing.T) {
	co := &fakeCoordinator{answer: func(string) api.GroupPointDecision { return api.GroupPointDecision{Action: api.GroupActionAbort} }}
	if m := runGroupPoint(t, co, func(s *session) { s.version = 1 }); m != nil {
		t.Fatalf("marker %+v sealed", m)
	}
	if got := co.phases(); got != "failed" {
		t.Fatalf("reports %s, want failed", got)
	}
}

// A point that finds more dirty at its freeze than it can read within the bound gives
// up at once (the freeze lasts a tracker sync, not the bound), tries again soon, and
// the next point is filesystem-consistent with every block written before it.
func TestLargeFreezeWindowIsRetriedSoon(t *testing.T) {
	src := newFakeSource(true, 1024)
	src.mounts = []string{t.TempDir()}
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{})
	// Just before the first freeze, 600 blocks become dirty (as a flush of the page
	// cache would make them): more than 64 blocks can be read in half of a 20 ms bound.
	src.beforeFreeze = func() {
		src.beforeFreeze = nil
		for b := uint64(0); b < 600; b++ {
			src.vols[0][b*testBS] = 1
			src.Mark(0, b)
		}
	}
	cfg := testConfig()
	cfg.Settings.FreezeTimeoutMs = 20
	cfg.Settings.ConsistencyPointIntervalSeconds = 60
	start := time.Now()
	if err := runFor(t, s, cfg, false, func() bool { return len(rep.levels()) >= 1 }); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 30*time.Second || src.freezes.Load() < 2 {
		t.Fatalf("%d freezes in %s: the point was not given up and tried again soon", src.freezes.Load(), took)
	}
	for _, l := range rep.levels() {
		if l != consistency.Filesystem {
			t.Fatalf("levels %v, want filesystem", rep.levels())
		}
	}
	if rep.block(0, 599) == nil {
		t.Fatal("a block dirty at the first freeze is not on the replica")
	}
}
