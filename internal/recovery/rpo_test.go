package recovery

import (
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// The RPO of a PIT is measured from the newest data the replica held: the agent's
// lastDataAt, or a newer sealed point; it is never negative.
func TestComputeRPO(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 10, 21, 3, 0, time.UTC)
	at := func(ms int) *time.Time { v := t0.Add(time.Duration(ms) * time.Millisecond); return &v }
	point := func(ms int, l consistency.Level) *api.ConsistencyPointInfo {
		return &api.ConsistencyPointInfo{Time: *at(ms), Level: l}
	}
	for _, c := range []struct {
		name    string
		pit     int // ms after t0
		st      api.ReplicationState
		through int
		want    time.Duration
	}{
		{"agent's data after the PIT", 0, api.ReplicationState{LastDataAt: at(1200)}, 1200, 1200 * time.Millisecond},
		{"a newer point than the agent's report", 0,
			api.ReplicationState{LastDataAt: at(500), LastConsistencyPoint: point(3000, consistency.None)}, 3000, 3 * time.Second},
		{"an older PIT asked for", -3600_000,
			api.ReplicationState{LastDataAt: at(0), LastRecoverablePoint: point(-1000, consistency.Filesystem)}, 0, time.Hour},
		{"a report older than the PIT", 2000, api.ReplicationState{LastDataAt: at(0)}, 2000, 0},
		{"nothing known", 0, api.ReplicationState{}, 0, 0},
	} {
		r := ComputeRPO(*at(c.pit), c.st)
		if r.Loss != c.want || !r.DataThrough.Equal(*at(c.through)) || !r.PITTime.Equal(*at(c.pit)) || r.Seconds() != c.want.Seconds() {
			t.Errorf("%s: %+v, want a loss of %s through %s", c.name, r, c.want, at(c.through))
		}
	}
	r := ComputeRPO(t0, api.ReplicationState{LastDataAt: at(1234)})
	if got, want := r.String(), "RPO 1.2s (the replica held the source's writes up to 2025-03-01T10:21:04.234Z)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	for d, want := range map[time.Duration]string{0: "0s", 1234567 * time.Microsecond: "1.2s",
		456789 * time.Microsecond: "457ms", 3*time.Minute + 1500*time.Millisecond: "3m2s"} {
		if got := FormatLoss(d); got != want {
			t.Errorf("FormatLoss(%s) = %q, want %q", d, got, want)
		}
	}
}
