package recovery

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// isInstant reports whether a plan's disks are overlays over the staging store.
func isInstant(p launch.Plan) bool {
	return len(p.Disks) > 0 && p.Disks[0].Mode == launch.WriteOverlay
}

// nbdSocket is where a recovery instance's exports are served.
func nbdSocket(dir string) string { return filepath.Join(dir, "nbd.sock") }

// instantStep is the SNAPSHOT step of an instant launch: instead of materializing, the
// PIT is locked against retention, served over NBD, and each disk is made an overlay
// over its volume's export.
func (j *jobCtx) instantStep(ctx context.Context, st *launchState) error {
	if err := j.setStep(ctx, st, api.StepSnapshot); err != nil {
		return err
	}
	start := time.Now()
	socket := nbdSocket(st.req.Dir)
	j.event(ctx, st.row.SourceServerID, api.EventSnapshotStart,
		fmt.Sprintf("instant launch: serving PIT %s from the staging store over NBD; the disks are copied after boot", st.pit.ID),
		map[string]any{"recoverySnapshotId": st.pit.ID, "instant": true})
	if _, err := st.repo.ProtectPIT(ctx, st.server.ID, st.pit.ID, j.r.cfg.Now().Add(pitHold)); err != nil {
		return failAt(api.StepSnapshot, fmt.Errorf("lock PIT %s against retention while it is served: %w", st.pit.ID, err))
	}
	if err := j.r.instant.serve(ctx, st.row.RecoveryInstanceID, socket, st.repo, st.pit); err != nil {
		return failAt(api.StepSnapshot, err)
	}
	for _, d := range st.plan.Disks {
		if err := launch.CreateOverlay(ctx, d.Path, d.SizeBytes, socket, d.Volume); err != nil {
			return failAt(api.StepSnapshot, err)
		}
	}
	j.event(ctx, st.row.SourceServerID, api.EventSnapshotEnd,
		fmt.Sprintf("%d copy-on-write %s over the staging store in %.1f s", len(st.plan.Disks),
			api.Plural("overlay", len(st.plan.Disks)), time.Since(start).Seconds()),
		map[string]any{"seconds": time.Since(start).Seconds(), "instant": true, "socket": socket})
	return nil
}

// rawDisks gives conversion raw images to work on: an instant launch's overlays are
// shown as raw files (close ends that, and must be called before the VM opens them).
func rawDisks(ctx context.Context, st *launchState) (disks []launch.Disk, close func() error, err error) {
	if !isInstant(st.plan) {
		return st.plan.Disks, func() error { return nil }, nil
	}
	var paths []string
	var sizes []int64
	for _, d := range st.plan.Disks {
		paths, sizes = append(paths, d.Path), append(sizes, d.SizeBytes)
	}
	v, err := launch.OpenRawView(ctx, st.req.Dir, paths, sizes)
	if err != nil {
		return nil, nil, err
	}
	disks = append([]launch.Disk(nil), st.plan.Disks...)
	for i := range disks {
		disks[i].Path, disks[i].Mode = v.Paths[i], launch.WriteFresh
	}
	return disks, v.Close, nil
}

// booted logs BOOT when a launched instance runs.
func (j *jobCtx) booted(ctx context.Context, st *launchState, l launch.Launched) {
	if l.State != api.InstanceRunning {
		return
	}
	msg := fmt.Sprintf("recovery instance %s is running", st.row.RecoveryInstanceID)
	if l.Handle.NBDSocket != "" {
		msg += " (instant launch: it reads from the staging store until its disks are copied)"
	}
	j.event(ctx, st.row.SourceServerID, api.EventBoot, msg, map[string]any{"recoveryInstanceId": st.row.RecoveryInstanceID,
		"instant": l.Handle.NBDSocket != ""})
}

// hydrateAfter starts copying an instant launch's disks once its post-launch actions
// ended (err is theirs, returned as it is): the copy would slow the boot and the checks
// that measure the RTO. Without actions it waits HydrationDelay after boot. The copy
// runs even while the VM waits to be started.
func (j *jobCtx) hydrateAfter(ctx context.Context, st *launchState, l launch.Launched, err error) error {
	if l.Handle.NBDSocket == "" || ctx.Err() != nil {
		return err
	}
	var delay time.Duration
	if len(st.settings.PostLaunchActions) == 0 && l.State == api.InstanceRunning {
		delay = j.r.cfg.HydrationDelay
	}
	j.r.startHydration(ctx, j, st.row.SourceServerID, st.row.RecoveryInstanceID, st.repo, st.pit, st.provider, l.Handle, delay)
	return err
}

// startHydration runs the copy of an instant launch's disks in the background: it ends
// with HYDRATED, when the instance is terminated, or at shutdown (the next start goes
// on: resumeHydrations).
func (r *Runner) startHydration(ctx context.Context, j *jobCtx, server, riID string, repo *store.Repo, pit store.PIT,
	p launch.Provider, h api.ProviderHandle, delay time.Duration) {
	hy, ok := p.(hydrater)
	if !ok {
		r.log.Error("the provider cannot hydrate an instant launch", "provider", p.Name(), "recoveryInstance", riID)
		return
	}
	if err := r.instant.serve(ctx, riID, h.NBDSocket, repo, pit); err != nil {
		j.event(ctx, server, api.EventHydrationStalled, fmt.Sprintf("cannot serve the disks of %s from the staging store: %v", riID, err),
			map[string]any{"recoveryInstanceId": riID, "error": err.Error()})
		return
	}
	if !r.instant.claimLoop(riID) {
		return
	}
	r.wg.Go(func() {
		defer r.instant.endLoop(riID)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		r.hydrate(ctx, j, server, riID, repo, pit, hy, h)
	})
}

// hydrate is the hydration loop of one instance.
func (r *Runner) hydrate(ctx context.Context, j *jobCtx, server, riID string, repo *store.Repo, pit store.PIT,
	p hydrater, h api.ProviderHandle) {
	start, lastLock, restarts := time.Now(), time.Now(), 0
	var reported string
	for {
		hy, err := p.Hydrate(ctx, h)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.log.Warn("look at an instant launch's copy", "recoveryInstance", riID, "err", err)
		case hy.Done:
			r.hydrated(ctx, j, server, riID, time.Since(start))
			return
		case hy.Started > 0 && hy.Running:
			if restarts++; restarts > 1 {
				j.event(ctx, server, api.EventHydrationStalled, fmt.Sprintf("the copy of %s's disks stopped and was started again", riID),
					map[string]any{"recoveryInstanceId": riID, "restarts": restarts - 1})
			}
		}
		if e := r.instant.lastStall(riID); e != "" && e != reported {
			reported = e
			j.event(ctx, server, api.EventHydrationStalled, fmt.Sprintf("reads of %s wait on the staging store: %s", riID, e),
				map[string]any{"recoveryInstanceId": riID, "error": e})
		}
		if r.instanceEnded(ctx, riID) {
			r.instant.stop(riID)
			return
		}
		if time.Since(lastLock) > hydrationLockRenew {
			if _, err := repo.ProtectPIT(ctx, pit.Server, pit.ID, r.cfg.Now().Add(pitHold)); err != nil {
				r.log.Warn("renew the lock of a PIT an instant launch reads", "pit", pit.ID, "err", err)
			}
			lastLock = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(hydrationPoll):
		}
	}
}

// hydrated records that an instant launch no longer needs the staging store.
func (r *Runner) hydrated(ctx context.Context, j *jobCtx, server, riID string, took time.Duration) {
	r.instant.stop(riID)
	err := r.cfg.DB.Update(ctx, func(tx *db.Tx) error {
		ri, err := tx.RecoveryInstance(riID)
		if err != nil {
			return err
		}
		ri.ProviderHandle.NBDSocket, ri.UpdatedAt = "", r.cfg.Now()
		return tx.PutRecoveryInstance(ri)
	})
	if err != nil {
		r.log.Error("record a hydrated instance", "recoveryInstance", riID, "err", err)
	}
	j.event(ctx, server, api.EventHydrated, fmt.Sprintf("the disks of %s are all local (copied in %.1f s): it no longer reads from the staging store",
		riID, took.Seconds()), map[string]any{"recoveryInstanceId": riID, "seconds": took.Seconds()})
}

// instanceEnded reports whether a recovery instance was terminated (or is gone).
func (r *Runner) instanceEnded(ctx context.Context, riID string) bool {
	var ri db.RecoveryInstance
	err := r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) { ri, err = tx.RecoveryInstance(riID); return err })
	return errors.Is(err, db.ErrNotFound) || err == nil && ri.TerminatedAt != nil
}

// resumeHydrations serves again the exports of this control plane's instant launches
// that were still copying when it stopped, and resumes their copies.
func (r *Runner) resumeHydrations(ctx context.Context) {
	var ris []db.RecoveryInstance
	err := r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) { ris, err = tx.RunnerRecoveryInstances(r.cfg.RunnerID); return err })
	if err != nil {
		r.log.Error("find instant launches to resume", "err", err)
		return
	}
	for _, ri := range ris {
		if ri.ProviderHandle.NBDSocket == "" {
			continue
		}
		if err := r.resumeHydration(ctx, ri); err != nil {
			r.log.Error("resume an instant launch's copy", "recoveryInstance", ri.ID, "err", err)
		}
	}
}

func (r *Runner) resumeHydration(ctx context.Context, ri db.RecoveryInstance) error {
	var job db.Job
	var snap db.Snapshot
	var storeURL string
	err := r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) {
		if job, err = tx.Job(ri.JobID); err != nil {
			return err
		}
		s, err := tx.SourceServer(ri.SourceServerID)
		if err != nil {
			return err
		}
		a, err := tx.Account(s.AccountID)
		if err != nil {
			return err
		}
		storeURL = a.Template.Apply(s.Overrides).StagingStoreURL
		snap, err = tx.Snapshot(ri.SnapshotID)
		return err
	})
	if err != nil {
		return err
	}
	repo, err := r.cfg.Stores.Open(ctx, ri.AccountID, storeURL)
	if err != nil {
		return err
	}
	pit, err := LoadPIT(ctx, repo, snap.RecoverySnapshot)
	if err != nil {
		return err
	}
	p, err := r.Provider(ctx, ri)
	if err != nil {
		return err
	}
	j := &jobCtx{r: r, job: job}
	j.event(ctx, ri.SourceServerID, api.EventJobResume, fmt.Sprintf("the control plane restarted while %s's disks were copied: serving them again and resuming the copy", ri.ID),
		map[string]any{"recoveryInstanceId": ri.ID})
	r.startHydration(ctx, j, ri.SourceServerID, ri.ID, repo, pit, p, ri.ProviderHandle, 0)
	return nil
}
