package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
)

// exposureText is a server's data-loss exposure at now: the age of its newest
// recoverable point, what it would lose if it died now (docs/recovery.md, "RPO").
func exposureText(r api.ReplicationState, now time.Time) string {
	p := r.NewestRecoverablePoint()
	if p == nil {
		return "everything (no filesystem- or crash-consistent point yet)"
	}
	return fmt.Sprintf("%s (newest point %s, %s)", pitAge(now.Sub(p.Time)), p.Time.Local().Format("2006-01-02 15:04:05.000"), p.Level)
}

// fillRecoverablePoint gives a state stored before the control plane kept its newest
// recoverable point (LastRecoverablePoint), whose last point is of level none, the
// newest filesystem- or crash-consistent PIT recorded.
func fillRecoverablePoint(ctx context.Context, c *api.Client, s *api.SourceServer) error {
	r := &s.Replication
	if r.NewestRecoverablePoint() != nil || r.LastConsistencyPoint == nil {
		return nil
	}
	for _, l := range []consistency.Level{consistency.Filesystem, consistency.Crash} {
		page, err := c.FindRecoverySnapshots(ctx, s.ID, api.SnapshotQuery{Level: &l, Limit: 1}, "")
		if err != nil {
			return err
		}
		if len(page.Items) == 0 {
			continue
		}
		p := page.Items[0]
		if r.LastRecoverablePoint == nil || p.Time.After(r.LastRecoverablePoint.Time) {
			r.LastRecoverablePoint = &api.ConsistencyPointInfo{Time: p.Time, Level: p.Level, SnapshotID: p.ID}
		}
	}
	return nil
}

// pitText names the PIT a job server launched from, with its time.
func pitText(s api.JobServer) string {
	if s.SnapshotID == "" {
		return "-"
	}
	if s.SnapshotTime == nil {
		return s.SnapshotID
	}
	return s.SnapshotID + " " + s.SnapshotTime.Local().Format("15:04:05.000")
}

// rpoText is a job server's RPO, "-" when the job did not measure it.
func rpoText(s api.JobServer) string {
	if s.RPOSeconds == nil {
		return "-"
	}
	return recovery.FormatLoss(time.Duration(*s.RPOSeconds * float64(time.Second)))
}
