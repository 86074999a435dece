package api

import (
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// The newest recoverable point survives newer points of level none; lastDataAt is the
// agent's, or its receipt minus the lag for an agent that reports only that; DataThrough
// is the newest of them and of the points.
func TestRecoverablePointAndDataThrough(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	pt := func(s int, l consistency.Level) *ConsistencyPointInfo {
		return &ConsistencyPointInfo{Time: t0.Add(time.Duration(s) * time.Second), Level: l}
	}
	st := NewReplicationState(t0)
	if st.NewestRecoverablePoint() != nil || !st.DataThrough().IsZero() {
		t.Fatalf("a new server has a recoverable point or data: %+v", st)
	}
	// A state stored before LastRecoverablePoint: its last point, when recoverable, is it.
	st.LastConsistencyPoint = pt(1, consistency.Crash)
	if p := st.NewestRecoverablePoint(); p == nil || !p.Time.Equal(t0.Add(time.Second)) {
		t.Fatalf("the last crash point is not the newest recoverable one: %+v", p)
	}
	st = st.Apply(ReplicationStateUpdate{LastConsistencyPoint: pt(2, consistency.Filesystem)}, t0)
	st = st.Apply(ReplicationStateUpdate{LastConsistencyPoint: pt(3, consistency.None)}, t0)
	if p := st.LastRecoverablePoint; p == nil || p.Level != consistency.Filesystem || !p.Time.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("after a none point, the newest recoverable one is %+v", p)
	}
	if !st.DataThrough().Equal(t0.Add(3 * time.Second)) {
		t.Fatalf("data through %s, want the none point's time", st.DataThrough())
	}
	lag := 1.5
	st = st.Apply(ReplicationStateUpdate{LagSeconds: &lag}, t0.Add(10*time.Second))
	if st.LastDataAt == nil || !st.LastDataAt.Equal(t0.Add(8500*time.Millisecond)) || !st.DataThrough().Equal(*st.LastDataAt) {
		t.Fatalf("a lag of 1.5 s received at +10 s gave lastDataAt %v", st.LastDataAt)
	}
	at := t0.Add(9 * time.Second)
	st = st.Apply(ReplicationStateUpdate{LagSeconds: &lag, LastDataAt: &at}, t0.Add(20*time.Second))
	if !st.LastDataAt.Equal(at) {
		t.Fatalf("the agent's lastDataAt %s was not kept: %v", at, st.LastDataAt)
	}
	if err := (ReplicationStateUpdate{LastDataAt: &time.Time{}}).Validate(); err == nil {
		t.Error("a zero lastDataAt was accepted")
	}
}
