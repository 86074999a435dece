package recovery

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion"
	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
)

// AgentStateDir is where the agent of a server running as root keeps its state (hash
// tables, tracker generation, status): `lifeboat agent run`'s default --state-dir.
const AgentStateDir = "/var/lib/lifeboat/agent"

// FailbackImage is where a failback into a failback client prepares the converted PIT
// it serves (the control plane's recovery directory, under the recovery instance's).
func FailbackImage(dir, recoveryInstanceID string) string {
	return filepath.Join(dir, recoveryInstanceID, "failback", "disk.raw")
}

// finalPointWait bounds how long a failback waits for the final consistency point.
const finalPointWait = 10 * time.Minute

// lifeboatNetworkFiles are the network settings conversion writes for the recovery
// site; a failback removes them, so the origin's machine comes up with its own.
var lifeboatNetworkFiles = []string{"/etc/lifeboat/network", "/etc/network/interfaces.d/lifeboat",
	"/etc/systemd/network/10-lifeboat.network", "/etc/netplan/90-lifeboat.yaml"}

// FailbackSpec is the conversion of a disk written by a failback back into the origin's
// machine (docs/failback.md).
type FailbackSpec struct {
	Disks []launch.Disk // the origin machine's disks, as written, boot disk first
	// OriginVolumes are the origin source server's volumes (their names are the agent's),
	// and Seeds the hash tables of the PIT written, in the same order: the origin's
	// agent finds in them what its (rebased) replica holds.
	OriginVolumes []api.Volume
	Seeds         []*tracker.HashTable
}

// FailbackConvert undoes what recovery's conversion did for the recovery site and puts
// back the origin's identity: its agent configuration (kept aside by conversion), the
// seed hash tables as its agent's own (every other table and the reversed agent's
// status removed), and none of the recovery record, reverse key, seed files or
// Lifeboat's network settings for the recovery site.
func FailbackConvert(ctx context.Context, s FailbackSpec) (ConvertResult, error) {
	var res ConvertResult
	root, image, err := findRoot(ctx, s.Disks)
	if err != nil || root == nil {
		if err == nil {
			res.Notes = append(res.Notes, "no ext2/3/4 root filesystem: the origin's agent configuration was not put back; register the machine again (lifeboat agent install --replace)")
		}
		return res, err
	}
	res.Root = root.String()
	if err := root.ReplayJournal(ctx); err != nil {
		return res, err
	}
	var c conversion.Conversion
	origin, err := root.ReadFile(ctx, OriginAgentConfig)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		res.Notes = append(res.Notes, "the recovered server kept no agent configuration of its origin: register the machine again (lifeboat agent install --replace)")
	case err != nil:
		return res, fmt.Errorf("read the origin's agent configuration: %w", err)
	default:
		c.Files = append(c.Files, conversion.File{Path: api.DefaultAgentConfig, Content: origin, Mode: 0o600})
	}
	keep := map[string]bool{}
	for i, t := range s.Seeds {
		if i >= len(s.OriginVolumes) || t == nil {
			break
		}
		name := "hashes-" + s.OriginVolumes[i].Name
		if err := t.Rename(s.OriginVolumes[i].Name); err != nil {
			return res, err
		}
		b, err := t.MarshalBinary()
		if err != nil {
			return res, err
		}
		keep[name] = true
		c.Files = append(c.Files, conversion.File{Path: path.Join(AgentStateDir, name), Content: b, Mode: 0o600})
	}
	if err := conversion.Apply(ctx, image, c); err != nil {
		return res, err
	}
	return res, removeRecoveryFiles(ctx, *root, keep)
}

// removeRecoveryFiles removes what recovery and the reversed agent left that the
// origin's machine must not have.
func removeRecoveryFiles(ctx context.Context, root ext4image.Filesystem, keep map[string]bool) error {
	rm := append([]string{OriginAgentConfig, api.RecoveryInfoFile, path.Join(AgentStateDir, "status.json")}, lifeboatNetworkFiles...)
	if entries, err := root.ReadDir(ctx, api.ReverseSeedDir); err == nil {
		for _, e := range entries {
			if !e.IsDir() {
				rm = append(rm, path.Join(api.ReverseSeedDir, e.Name))
			}
		}
	}
	if entries, err := root.ReadDir(ctx, AgentStateDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name, "hashes-") && !keep[e.Name] {
				rm = append(rm, path.Join(AgentStateDir, e.Name))
			}
		}
	}
	for _, p := range rm {
		if err := root.Remove(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// failback runs a FAILBACK job (its one server is the reversed source server). A
// failure is recorded on the row, in the log, and as FAILBACK_ERROR.
func (j *jobCtx) failback(ctx context.Context, row api.JobServer) {
	st := &launchState{row: row}
	err := j.runFailback(ctx, st)
	if err == nil || ctx.Err() != nil {
		return
	}
	step := api.StepPrepare
	var se *stepError
	if errors.As(err, &se) {
		step = se.step
	}
	msg := fmt.Sprintf("failback failed at %s: %s", step, err)
	if step == api.StepSnapshot || step == api.StepConversion {
		msg += "; the machine's disks may be partly written and must not boot: fail back again (only differing blocks are written)"
	}
	now := j.r.cfg.Now()
	uerr := j.r.cfg.DB.Update(context.WithoutCancel(ctx), func(tx *db.Tx) error {
		if p := j.job.Params.Failback; p != nil && api.ValidID(api.PrefixFailbackClient, p.Into) {
			if err := tx.SetFailbackAssignment(p.Into, nil); err != nil && !errors.Is(err, db.ErrNotFound) {
				return err
			}
		}
		if st.target != nil {
			if err := tx.ReleaseInstance(st.target.ID, row.RecoveryInstanceID, now); err != nil {
				return err
			}
		}
		return tx.SetFailbackState(row.RecoveryInstanceID, api.FailbackError, now)
	})
	if uerr != nil {
		j.r.log.Error("record a failed failback", "job", j.job.ID, "err", uerr)
	}
	j.event(ctx, row.SourceServerID, api.EventLaunchFailed, msg, map[string]any{"step": step, "error": err.Error()})
	row.LaunchStatus, row.Step, row.Error, row.Progress = api.LaunchFailed, step, err.Error(), nil
	if err := j.setServer(ctx, st.row); err != nil {
		j.r.log.Error("record a failed failback", "job", j.job.ID, "err", err)
	}
}

// runFailback: the final consistency point of the recovery instance, its PIT written
// onto the origin's machine (only the blocks that differ) and converted back, the
// origin's replica rebased onto that PIT, and the machine started.
func (j *jobCtx) runFailback(ctx context.Context, st *launchState) error {
	p := j.job.Params.Failback
	if p == nil {
		return fmt.Errorf("job %s is a failback without its parameters", j.job.ID)
	}
	if err := j.setStep(ctx, st, api.StepFinalPoint); err != nil {
		return err
	}
	if err := j.finalPoint(ctx, st, p); err != nil {
		return failAt(api.StepFinalPoint, err)
	}
	if err := j.setStep(ctx, st, api.StepPrepare); err != nil {
		return err
	}
	prepare, finish := j.prepareFailback, j.failbackLaunch
	if api.ValidID(api.PrefixFailbackClient, p.Into) {
		prepare, finish = j.prepareClientFailback, j.clientFailbackLaunch
	}
	origin, err := prepare(ctx, st, p)
	if err != nil {
		return failAt(api.StepPrepare, err)
	}
	stats, err := j.snapshotStep(ctx, st, true)
	if err != nil {
		return err
	}
	if err := j.setStep(ctx, st, api.StepConversion); err != nil {
		return err
	}
	j.event(ctx, st.row.SourceServerID, api.EventConversionStart, "putting the origin's identity back on "+p.Into, nil)
	spec := FailbackSpec{Disks: st.plan.Disks, OriginVolumes: origin.Volumes}
	for _, s := range stats {
		spec.Seeds = append(spec.Seeds, s.Hashes)
	}
	res, err := FailbackConvert(ctx, spec)
	if err != nil {
		return failAt(api.StepConversion, err)
	}
	j.event(ctx, st.row.SourceServerID, api.EventConversionEnd, "converted back "+res.Root+noteText(res.Notes), map[string]any{"root": res.Root})
	return finish(ctx, st, p, origin)
}

func noteText(notes []string) string {
	if len(notes) == 0 {
		return ""
	}
	return "; " + strings.Join(notes, "; ")
}

// finalPoint waits for the reversed server's first consistent PIT taken at or after the
// failback was asked for: everything written before that is in it.
func (j *jobCtx) finalPoint(ctx context.Context, st *launchState, p *db.FailbackParams) error {
	if st.row.SnapshotID != "" {
		return nil // a resumed job: the point was found before
	}
	j.event(ctx, st.row.SourceServerID, api.EventFinalPointStart, fmt.Sprintf("waiting for the final consistency point of %s (asked at %s)",
		p.RecoveryInstanceID, p.FinalPointAsked.UTC().Format(time.RFC3339Nano)), nil)
	deadline := time.Now().Add(finalPointWait)
	for {
		var snaps []db.Snapshot
		err := j.r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) {
			snaps, _, err = tx.ListSnapshots(st.row.SourceServerID, 20, "")
			return err
		})
		if err != nil {
			return err
		}
		for i := len(snaps) - 1; i >= 0; i-- {
			s := snaps[i]
			if !s.Time.Before(p.FinalPointAsked) && (s.Level == consistency.Filesystem || s.Level == consistency.Crash) {
				st.row.SnapshotID = s.ID
				j.event(ctx, st.row.SourceServerID, api.EventFinalPointEnd, fmt.Sprintf("final consistency point %s (%s) taken %s after the failback was asked for: nothing written before it is lost",
					s.ID, s.Level, s.Time.Sub(p.FinalPointAsked).Round(time.Millisecond)), map[string]any{"recoverySnapshotId": s.ID, "time": s.Time})
				return j.setServer(ctx, st.row)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("reversed source server %s sealed no consistency point within %s of the request: is its agent running and CONTINUOUS? (lifeboat source-servers describe %s)",
				st.row.SourceServerID, finalPointWait, st.row.SourceServerID)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// prepareFailback loads what the failback writes and where: the final PIT, the origin
// (its launch settings, as launch into existing uses them), and the instance, claimed
// and checked (stopped, tagged, disks large enough).
func (j *jobCtx) prepareFailback(ctx context.Context, st *launchState, p *db.FailbackParams) (db.SourceServer, error) {
	origin, settings, err := j.origin(ctx, p)
	if err != nil {
		return origin, err
	}
	// The origin's machine boots as the origin does.
	err = j.prepare(ctx, st, func(s *api.LaunchSettings) {
		*s = settings
		s.Provider, s.TargetInstanceID = api.ProviderExistingInstance, p.Into
	})
	if err != nil {
		return origin, err
	}
	if st.plan, err = st.provider.Plan(ctx, st.req); err != nil {
		return origin, err
	}
	return origin, nil
}

// origin reads the failback's origin source server and its launch settings.
func (j *jobCtx) origin(ctx context.Context, p *db.FailbackParams) (db.SourceServer, api.LaunchSettings, error) {
	var origin db.SourceServer
	var settings api.LaunchSettings
	err := j.r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) {
		if origin, err = tx.SourceServer(p.OriginSourceServerID); err != nil {
			return fmt.Errorf("origin source server %s: %w", p.OriginSourceServerID, err)
		}
		settings, _, err = tx.LaunchSettings(origin.ID)
		if errors.Is(err, db.ErrNotFound) {
			settings, err = api.DefaultLaunchSettings(origin.CPUs, origin.MemoryBytes), nil
		}
		return err
	})
	return origin, settings, err
}

// failbackLaunch rebases the origin's replica onto the PIT written, records the
// failback as completed, and starts the machine (unless asked not to).
func (j *jobCtx) failbackLaunch(ctx context.Context, st *launchState, p *db.FailbackParams, origin db.SourceServer) error {
	if err := j.setStep(ctx, st, api.StepLaunch); err != nil {
		return err
	}
	j.event(ctx, st.row.SourceServerID, api.EventLaunchStart, fmt.Sprintf("instance %s now holds %s as of PIT %s", p.Into, origin.ID, st.pit.ID), nil)
	state := api.InstanceStopped
	var l launch.Launched
	if !p.NoStart {
		ex, ok := st.provider.(interface {
			Start(context.Context, api.Instance, *api.LaunchSettings, bool) (launch.Launched, error)
		})
		if !ok {
			return failAt(api.StepLaunch, errors.New("the existing-instance provider cannot start instances here"))
		}
		s := st.settings
		var err error
		if l, err = ex.Start(ctx, st.target.Instance, &s, false); err != nil {
			return failAt(api.StepLaunch, fmt.Errorf("start instance %s: %w", p.Into, err))
		}
		state = api.InstanceRunning
	}
	st.launched = &l
	return j.failbackDone(ctx, st, p, origin, fmt.Sprintf("instance %s (%s)", p.Into, strings.ToLower(state)), func(tx *db.Tx, now time.Time) error {
		if err := tx.ReleaseInstance(st.target.ID, st.row.RecoveryInstanceID, now); err != nil {
			return err
		}
		return tx.SetInstanceState(st.target.ID, state, j.r.cfg.RunnerID, "", now)
	})
}

// failbackDone records a failback as completed: the origin's replica to be rebased onto
// the PIT written, the target's own records (done), the recovery instance's state.
func (j *jobCtx) failbackDone(ctx context.Context, st *launchState, p *db.FailbackParams, origin db.SourceServer, into string,
	done func(*db.Tx, time.Time) error) error {
	now := j.r.cfg.Now()
	err := j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error {
		if err := tx.SetRebase(origin.ID, st.pit.ID, now); err != nil {
			return err
		}
		// Until the machine written runs and its agent replicates again, the origin is
		// disconnected (and its rebase pending): whatever state it showed is stale.
		state := api.StateDisconnected
		if err := tx.SetReplicationState(origin.ID, origin.Replication.Apply(api.ReplicationStateUpdate{DataReplicationState: &state}, now), now); err != nil {
			return err
		}
		if err := done(tx, now); err != nil {
			return err
		}
		return tx.SetFailbackState(p.RecoveryInstanceID, api.FailbackCompleted, now)
	})
	if err != nil {
		return failAt(api.StepLaunch, err)
	}
	j.event(ctx, st.row.SourceServerID, api.EventLaunchEnd, fmt.Sprintf("failed back into %s; source server %s resumes replication from PIT %s when its agent starts",
		into, origin.ID, st.pit.ID), launchedDetail(st.launched, map[string]any{"into": p.Into, "originSourceServerId": origin.ID}))
	st.row.LaunchStatus, st.row.Step, st.row.Progress = api.LaunchLaunched, "", nil
	return j.setServer(ctx, st.row)
}

// launchedDetail adds where a machine started by a failback is reached (recovery plans
// health-check it) to a LAUNCH_END event's detail.
func launchedDetail(l *launch.Launched, d map[string]any) map[string]any {
	if l != nil {
		d["address"], d["portForwards"] = l.Address, l.Ports
	}
	return d
}
