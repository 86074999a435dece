package recovery

import (
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// RPO is what launching a server from a PIT loses: the writes between the PIT and the
// newest data the replica held of the server (api.ReplicationState.DataThrough) when the
// job was created. It is what the server would lose if it died at that moment and were
// recovered from that PIT (docs/recovery.md, "RPO").
type RPO struct {
	PITTime     time.Time
	DataThrough time.Time     // zero when the control plane knows of no data
	Loss        time.Duration // DataThrough - PITTime, never negative
}

// ComputeRPO measures the RPO of a PIT taken at pit of a server in replication state st.
// A PIT newer than everything the state knows of (a report not yet arrived) loses
// nothing the control plane can name: its RPO is 0, measured from the PIT itself.
func ComputeRPO(pit time.Time, st api.ReplicationState) RPO {
	through := st.DataThrough()
	if through.Before(pit) {
		through = pit
	}
	return RPO{PITTime: pit, DataThrough: through, Loss: through.Sub(pit)}
}

// Seconds is the loss in seconds, as the API carries it.
func (r RPO) Seconds() float64 { return r.Loss.Seconds() }

// String says it for a job's log: "RPO 1.2s (the replica held the source's writes up to
// 2025-03-01T10:21:04.200Z)".
func (r RPO) String() string {
	return fmt.Sprintf("RPO %s (the replica held the source's writes up to %s)", FormatLoss(r.Loss),
		r.DataThrough.UTC().Format(TimeMillis))
}

// TimeMillis is the layout of times in a job's log: RFC 3339 in UTC, to the millisecond
// (points may be a second apart).
const TimeMillis = "2006-01-02T15:04:05.000Z07:00"

// FormatLoss writes a data-loss duration to a precision that suits it: milliseconds
// under a second, tenths of a second under a minute, seconds beyond.
func FormatLoss(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
