package recovery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// reverse follows a REVERSE_REPLICATION job's reversed source server (docs/failback.md)
// until it is CONTINUOUS with a consistent PIT: it logs when the recovery instance's
// agent registered and, at the end, what reversed replication sent and how long it took;
// the job's progress is the agent's. It fails when the recovery instance ends or the
// reversed source server is deleted first.
func (j *jobCtx) reverse(ctx context.Context, row api.JobServer) {
	err := j.followReverse(ctx, row)
	if err == nil || ctx.Err() != nil {
		return
	}
	j.event(ctx, row.SourceServerID, api.EventLaunchFailed, "reversed replication ended: "+err.Error(), map[string]any{"error": err.Error()})
	row.LaunchStatus, row.Step, row.Error, row.Progress = api.LaunchFailed, api.StepReverse, err.Error(), nil
	if err := j.setServer(ctx, row); err != nil {
		j.r.log.Error("record a failed reversed replication", "job", j.job.ID, "err", err)
	}
}

func (j *jobCtx) followReverse(ctx context.Context, row api.JobServer) error {
	row.LaunchStatus, row.Step = api.LaunchInProgress, api.StepReverse
	if err := j.setServer(ctx, row); err != nil {
		return err
	}
	registered := false
	for {
		var s db.SourceServer
		var ri db.RecoveryInstance
		err := j.r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) {
			if s, err = tx.SourceServer(row.SourceServerID); err != nil {
				return err
			}
			ri, err = tx.RecoveryInstance(row.RecoveryInstanceID)
			return err
		})
		switch {
		case errors.Is(err, db.ErrNotFound):
			return errors.New("the reversed source server or its recovery instance was deleted")
		case err != nil:
			return err
		case ri.TerminatedAt != nil:
			return fmt.Errorf("recovery instance %s ended (%s)", ri.ID, ri.State)
		}
		if !registered && s.CertSerial != "" {
			registered = true
			j.event(ctx, row.SourceServerID, api.EventReverseRegistered, fmt.Sprintf("the agent of recovery instance %s registered as %s (%s)",
				ri.ID, s.ID, s.Hostname), nil)
		}
		st := s.Replication
		if st.DataReplicationState == api.StateContinuous && st.ReadyForRecovery {
			secs := j.r.cfg.Now().Sub(j.job.CreatedAt).Seconds()
			j.event(ctx, row.SourceServerID, api.EventReverseContinuous, fmt.Sprintf("replicating back, CONTINUOUS after %.0f s: %s sent for the changes since PIT %s (volumes of %s)",
				secs, sizeText(st.ReplicatedBytes), ri.SnapshotID, sizeText(volumesBytes(s.Volumes))),
				map[string]any{"replicatedBytes": st.ReplicatedBytes, "volumeBytes": volumesBytes(s.Volumes), "seconds": secs})
			row.LaunchStatus, row.Step, row.Progress = api.LaunchLaunched, "", nil
			return j.setServer(ctx, row)
		}
		if st.TotalBytes > 0 {
			row.Progress = &api.JobProgress{DoneBytes: st.ReplicatedBytes, TotalBytes: st.TotalBytes}
			_ = j.setServer(ctx, row)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

func volumesBytes(vs []api.Volume) int64 {
	var n int64
	for _, v := range vs {
		n += v.SizeBytes
	}
	return n
}
