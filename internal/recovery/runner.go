// Package recovery launches recovery instances from PITs. Its Runner is the job runner
// inside the control plane: it claims drill, recovery and terminate jobs from the state
// database, runs the servers of a job in parallel (one failing does not stop the
// others), writes every step to the job's log with its time, so RTO is measured, and
// resumes the jobs it finds unfinished when the control plane starts again. A server's
// launch is PREPARE (the PIT and the provider's checks), SNAPSHOT (Materialize: the
// PIT's volumes streamed from the staging store into the target's disks), CONVERSION
// (Convert: hostname, network, agent, NoCloud seed), LAUNCH (the provider) and
// POST_LAUNCH (scripts and health checks).
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Config configures a Runner.
type Config struct {
	DB        *db.DB
	Stores    *Stores
	Providers map[string]launch.Provider
	// Sites returns a site's provider, URI, pool and credentials (nil: every launch
	// uses Providers); ProviderOptions configure the providers made for sites.
	Sites           func(ctx context.Context, accountID, siteID string) (db.SiteTarget, error)
	ProviderOptions launch.Options
	// Dir holds each recovery instance's files (Dir/<recovery instance id>/).
	Dir string
	// RunnerID names this control plane in job claims; stable across restarts.
	RunnerID string
	// Lease is how long a claim holds without renewal (default 30 s); Poll is how
	// often the runner looks for jobs and renews its claims (default Lease/6).
	Lease, Poll time.Duration
	// IDs orders job log entries.
	IDs *EventIDs
	// Publish sends an event to the account's event stream.
	Publish func(account string, ev api.Event)
	// ControlPlane returns the control plane's URL and CA pin, written into recovered
	// servers for reversed replication.
	ControlPlane func() (url, pin string)
	// AgentBinary is copied into recovered servers ("" copies none).
	AgentBinary string
	// ReverseKey derives a recovery instance's reverse key (api.RecoveryInfo), written
	// into recovered servers that are not drills; nil writes none.
	ReverseKey func(recoveryInstanceID string) string
	// ConversionHook runs after the built-in conversion ("" for none).
	ConversionHook string
	// SystemAccount is the system account's id: post-launch scripts run on the control
	// plane's host, so only its jobs may run them.
	SystemAccount string
	// ConsoleCapture is how long a VM's serial console is copied into the job's log
	// after its launch (default 2 minutes).
	ConsoleCapture time.Duration
	// HydrationDelay is how long after boot an instant launch without post-launch
	// checks starts copying its disks (default 30 s); with checks, the copy starts once
	// they end. The copy would otherwise slow the boot it competes with.
	HydrationDelay time.Duration
	Now            func() time.Time
	Logger         *slog.Logger
}

// Runner runs jobs.
type Runner struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}

	mu        sync.Mutex
	running   map[string]bool               // jobs with a goroutine in this process
	consoles  map[string]context.CancelFunc // console captures, by recovery instance
	instant   *instantExports
	providers *siteProviders
	wg        sync.WaitGroup
}

// NewRunner returns a runner; Run runs it.
func NewRunner(cfg Config) *Runner {
	if cfg.Lease <= 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = cfg.Lease / 6
	}
	if cfg.ConsoleCapture <= 0 {
		cfg.ConsoleCapture = 2 * time.Minute
	}
	if cfg.HydrationDelay <= 0 {
		cfg.HydrationDelay = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return time.Now().UTC() }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.IDs == nil {
		cfg.IDs = &EventIDs{}
	}
	if cfg.Publish == nil {
		cfg.Publish = func(string, api.Event) {}
	}
	if cfg.ControlPlane == nil {
		cfg.ControlPlane = func() (string, string) { return "", "" }
	}
	return &Runner{cfg: cfg, log: cfg.Logger.With("component", "jobs"), wake: make(chan struct{}, 1),
		running: map[string]bool{}, consoles: map[string]context.CancelFunc{},
		instant:   &instantExports{log: cfg.Logger.With("component", "nbd"), served: map[string]*servedExports{}, loops: map[string]bool{}},
		providers: &siteProviders{local: cfg.Providers, site: cfg.Sites, opts: cfg.ProviderOptions, libvirt: map[string]*cachedLibvirt{}}}
}

// Wake makes the runner look for new jobs now.
func (r *Runner) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run claims and runs jobs until ctx ends, then waits for the jobs' goroutines, which
// stop where they are: their state stays in the database for the next start.
func (r *Runner) Run(ctx context.Context) {
	r.wg.Go(func() { r.resumeHydrations(ctx) }) // a slow staging store must not hold up the jobs
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		r.claim(ctx)
		select {
		case <-ctx.Done():
			r.wg.Wait()
			return
		case <-t.C:
		case <-r.wake:
		}
	}
}

func (r *Runner) claim(ctx context.Context) {
	now := r.cfg.Now()
	var ids []string
	err := r.cfg.DB.Update(ctx, func(tx *db.Tx) (err error) {
		ids, err = tx.ClaimJobs(r.cfg.RunnerID, now, now.Add(r.cfg.Lease))
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			r.log.Error("claim jobs", "err", err)
		}
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if r.running[id] {
			continue // its claim was renewed
		}
		r.running[id] = true
		r.wg.Go(func() {
			defer func() {
				r.mu.Lock()
				delete(r.running, id)
				r.mu.Unlock()
			}()
			if err := r.runJob(ctx, id); err != nil && ctx.Err() == nil {
				r.log.Error("job failed", "job", id, "err", err)
			}
		})
	}
}

// EventIDs makes job log entry ids that sort in the order they were made: wall-clock
// nanoseconds, strictly increasing within a process.
type EventIDs struct {
	mu   sync.Mutex
	last int64
}

// Next returns the next id.
func (g *EventIDs) Next() string {
	n := time.Now().UnixNano()
	g.mu.Lock()
	if n <= g.last {
		n = g.last + 1
	}
	g.last = n
	g.mu.Unlock()
	return fmt.Sprintf("%016x", n)
}

// jobCtx is one job being run.
type jobCtx struct {
	r   *Runner
	job db.Job
}

// event appends an entry to the job's log and publishes it.
func (j *jobCtx) event(ctx context.Context, server, typ, msg string, detail map[string]any) {
	e := api.JobLogEvent{ID: j.r.cfg.IDs.Next(), Time: j.r.cfg.Now(), Type: typ, SourceServerID: server, Message: msg, Detail: detail}
	err := j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error { return tx.AddJobEvent(j.job.ID, e) })
	if err != nil {
		j.r.log.Error("write the job log", "job", j.job.ID, "type", typ, "err", err)
		return
	}
	if typ != api.EventConsole {
		j.r.log.Info(msg, "job", j.job.ID, "event", typ, "server", server)
	}
	j.r.cfg.Publish(j.job.AccountID, api.Event{Type: "job.log", Time: e.Time, TargetKind: "job", TargetID: j.job.ID, Data: e})
}

// setServer records a server's row and publishes it.
func (j *jobCtx) setServer(ctx context.Context, s api.JobServer) error {
	row := db.JobServer{JobID: j.job.ID, JobServer: s, UpdatedAt: j.r.cfg.Now()}
	if err := j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error { return tx.PutJobServer(row) }); err != nil {
		return err
	}
	j.r.cfg.Publish(j.job.AccountID, api.Event{Type: "job.server", Time: row.UpdatedAt, TargetKind: "job", TargetID: j.job.ID, Data: s})
	return nil
}

// audit records a change the job made.
func (j *jobCtx) audit(tx *db.Tx, action, kind, id string, detail map[string]any) error {
	_, err := tx.AddAudit(j.job.AccountID, api.AuditEntry{Time: j.r.cfg.Now(), ActorKind: "system", ActorID: "job:" + j.job.ID,
		Action: action, TargetKind: kind, TargetID: id, Detail: detail})
	return err
}

func (r *Runner) runJob(ctx context.Context, id string) error {
	var job db.Job
	if err := r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) { job, err = tx.Job(id); return err }); err != nil {
		return err
	}
	if job.Status == api.JobCompleted {
		return nil
	}
	j := &jobCtx{r: r, job: job}
	if job.Status == api.JobPending {
		now := r.cfg.Now()
		if err := r.cfg.DB.Update(ctx, func(tx *db.Tx) error { return tx.SetJobStatus(id, api.JobStarted, now, nil) }); err != nil {
			return err
		}
		r.cfg.Publish(job.AccountID, api.Event{Type: "job.status", Time: now, TargetKind: "job", TargetID: id,
			Data: map[string]any{"status": api.JobStarted}})
	}
	var wg sync.WaitGroup
	for _, s := range job.Servers {
		if s.LaunchStatus != api.LaunchPending && s.LaunchStatus != api.LaunchInProgress {
			continue
		}
		resumed := s.LaunchStatus == api.LaunchInProgress // left so by an earlier process
		wg.Go(func() {
			switch job.Type {
			case api.JobTerminate:
				j.terminate(ctx, s)
			case api.JobFailback:
				j.failback(ctx, s)
			case api.JobReverseReplication:
				j.reverse(ctx, s)
			default:
				j.launch(ctx, s, resumed)
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err() // shutting down: the job stays STARTED and resumes at the next start
	}
	var final db.Job
	if err := r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) { final, err = tx.Job(id); return err }); err != nil {
		return err
	}
	counts := map[string]int{}
	for _, s := range final.Servers {
		counts[s.LaunchStatus]++
	}
	var parts []string
	for _, st := range []string{api.LaunchLaunched, api.LaunchTerminated, api.LaunchFailed} {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], strings.ToLower(st)))
		}
	}
	j.event(ctx, "", api.EventJobEnd, "job ended: "+strings.Join(parts, ", "), map[string]any{"launchStatuses": counts})
	end := r.cfg.Now()
	if err := r.cfg.DB.Update(ctx, func(tx *db.Tx) error { return tx.SetJobStatus(id, api.JobCompleted, end, &end) }); err != nil {
		return err
	}
	r.cfg.Publish(job.AccountID, api.Event{Type: "job.status", Time: end, TargetKind: "job", TargetID: id,
		Data: map[string]any{"status": api.JobCompleted}})
	return nil
}

// stepError is a launch failure at a step.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.err.Error() }

func failAt(step string, err error) error { return &stepError{step: step, err: err} }

// launchState is what a server's launch knows as it goes.
type launchState struct {
	row      api.JobServer
	server   db.SourceServer
	settings api.LaunchSettings
	launched *launch.Launched // a failback's machine, once started
	snapshot db.Snapshot
	pit      store.PIT
	repo     *store.Repo
	provider launch.Provider
	req      launch.Request
	plan     launch.Plan
	target   *db.Instance
}

// launch runs one server's launch to its end. A failure is recorded on the server's
// row and in the log; it never stops the job's other servers.
func (j *jobCtx) launch(ctx context.Context, row api.JobServer, resumed bool) {
	st := &launchState{row: row}
	err := j.runLaunch(ctx, st, resumed)
	if err == nil || ctx.Err() != nil {
		return // done, or shutting down: the row stays IN_PROGRESS for the next start
	}
	step := api.StepPrepare
	var se *stepError
	if errors.As(err, &se) {
		step = se.step
	}
	msg := fmt.Sprintf("launch failed at %s: %s", step, err)
	detail := map[string]any{"step": step, "error": err.Error()}
	if st.plan.Disks != nil && step != api.StepPrepare {
		defer j.r.instant.stop(row.RecoveryInstanceID)
		if cleaned := j.cleanup(context.WithoutCancel(ctx), st); cleaned != "" {
			detail["cleanup"] = cleaned
			msg += " (" + cleaned + ")"
		}
	}
	var ref *launch.Refusal
	if errors.As(err, &ref) {
		detail["refused"] = true
	}
	if st.target != nil {
		now := j.r.cfg.Now()
		if err := j.r.cfg.DB.Update(context.WithoutCancel(ctx), func(tx *db.Tx) error {
			return tx.ReleaseInstance(st.target.ID, row.RecoveryInstanceID, now)
		}); err != nil {
			j.r.log.Error("release the instance", "instance", st.target.ID, "err", err)
		}
	}
	j.event(ctx, row.SourceServerID, api.EventLaunchFailed, msg, detail)
	row.LaunchStatus, row.Step, row.Error, row.Progress = api.LaunchFailed, step, err.Error(), nil
	if err := j.setServer(ctx, row); err != nil {
		j.r.log.Error("record a failed launch", "job", j.job.ID, "server", row.SourceServerID, "err", err)
	}
}

// cleanup removes a failed launch's partial artifacts and says what it did (or what
// is left and where).
func (j *jobCtx) cleanup(ctx context.Context, st *launchState) string {
	h := api.ProviderHandle{Dir: st.req.Dir}
	for _, d := range st.plan.Disks {
		if d.Mode == launch.WriteFresh {
			h.Disks = append(h.Disks, d.Path)
		}
	}
	if st.provider.Name() == api.ProviderQEMU {
		h.VMDir = filepath.Join(st.req.Dir, "vm") // a VM whose launch failed half-way
	}
	if err := st.provider.Terminate(ctx, h); err != nil {
		now := j.r.cfg.Now()
		_ = j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error {
			return tx.SetRecoveryInstanceState(st.row.RecoveryInstanceID, api.InstanceFailed, false, now)
		})
		return fmt.Sprintf("partial files are left in %s (terminate recovery instance %s to remove them): %v", st.req.Dir, st.row.RecoveryInstanceID, err)
	}
	note := "partial files removed"
	if st.target != nil {
		note += fmt.Sprintf("; the disks of instance %s may be partly written: launch into it again to finish", st.target.ID)
	}
	now := j.r.cfg.Now()
	err := j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error {
		return tx.SetRecoveryInstanceState(st.row.RecoveryInstanceID, api.InstanceFailed, true, now)
	})
	if err != nil && !errors.Is(err, db.ErrNotFound) { // not found: the launch never got that far
		j.r.log.Error("record a failed recovery instance", "recoveryInstance", st.row.RecoveryInstanceID, "err", err)
	}
	return note
}

func (j *jobCtx) setStep(ctx context.Context, st *launchState, step string) error {
	st.row.LaunchStatus, st.row.Step, st.row.Progress = api.LaunchInProgress, step, nil
	return j.setServer(ctx, st.row)
}

func (j *jobCtx) runLaunch(ctx context.Context, st *launchState, resumed bool) error {
	r := j.r
	resumedStep := orStep(st.row.Step)
	if resumed {
		j.event(ctx, st.row.SourceServerID, api.EventJobResume, fmt.Sprintf("the control plane restarted during %s: resuming %s",
			strings.ToLower(resumedStep), st.row.SourceServerID), map[string]any{"resumedStep": resumedStep})
	}
	var err error
	if err := j.setStep(ctx, st, api.StepPrepare); err != nil {
		return err
	}
	if err := j.prepare(ctx, st, j.job.Params.Overrides[st.row.SourceServerID].Apply); err != nil {
		return failAt(api.StepPrepare, err)
	}
	if resumed {
		// An interrupted launch may have left its instance running (a VM outlives the
		// control plane): adopt it rather than write under it or start a second one.
		// The provider's checks would refuse it for running (an existing instance), so
		// the plan is only what they can say.
		plan, _ := st.provider.Plan(ctx, st.req)
		l, err := st.provider.Adopt(ctx, st.req, plan)
		if err == nil {
			st.plan = plan
			if isInstant(plan) {
				l.Handle.NBDSocket = nbdSocket(st.req.Dir)
			}
			if err := j.launched(ctx, st, l, "adopted the instance the interrupted launch started"); err != nil {
				return failAt(api.StepLaunch, err)
			}
			j.booted(ctx, st, l)
			return j.hydrateAfter(ctx, st, l, j.postLaunch(ctx, st, l))
		}
		if !errors.Is(err, launch.ErrNotRunning) {
			return failAt(api.StepLaunch, fmt.Errorf("the control plane restarted during %s and the instance's state is unknown: %w", resumedStep, err))
		}
	}
	if st.plan, err = st.provider.Plan(ctx, st.req); err != nil {
		return failAt(api.StepPrepare, err)
	}

	// SNAPSHOT: the PIT's volumes into the target's disks (or, for an instant launch,
	// overlays over them).
	stats, err := j.disksStep(ctx, st)
	if err != nil {
		return err
	}

	// CONVERSION: what the target needs to boot and be reachable.
	extras, err := j.convert(ctx, st, stats)
	if err != nil {
		return failAt(api.StepConversion, err)
	}

	// LAUNCH.
	if err := j.setStep(ctx, st, api.StepLaunch); err != nil {
		return err
	}
	if err := j.recordInstance(ctx, st, launch.Launched{Handle: api.ProviderHandle{Host: r.cfg.RunnerID, Dir: st.req.Dir},
		State: api.InstanceLaunching}); err != nil {
		return failAt(api.StepLaunch, err)
	}
	j.event(ctx, st.row.SourceServerID, api.EventLaunchStart, fmt.Sprintf("launching recovery instance %s with provider %s",
		st.row.RecoveryInstanceID, st.provider.Name()), map[string]any{"recoveryInstanceId": st.row.RecoveryInstanceID, "isolated": st.req.Isolated})
	l, err := st.provider.Launch(ctx, st.req, st.plan, extras)
	if err != nil {
		return failAt(api.StepLaunch, err)
	}
	if isInstant(st.plan) {
		l.Handle.NBDSocket = nbdSocket(st.req.Dir)
	}
	if err := j.launched(ctx, st, l, ""); err != nil {
		return failAt(api.StepLaunch, err)
	}
	j.booted(ctx, st, l)
	return j.hydrateAfter(ctx, st, l, j.postLaunch(ctx, st, l))
}

// convert runs the CONVERSION step when the plan asks for it: what the target needs to
// boot and be reachable, and what reversed replication starts from.
func (j *jobCtx) convert(ctx context.Context, st *launchState, stats []VolumeStats) (launch.Extras, error) {
	var extras launch.Extras
	if !st.plan.Convert {
		return extras, nil
	}
	r := j.r
	if err := j.setStep(ctx, st, api.StepConversion); err != nil {
		return extras, err
	}
	j.event(ctx, st.row.SourceServerID, api.EventConversionStart, "converting the recovered disks for "+st.provider.Name(), nil)
	url, pin := r.cfg.ControlPlane()
	info := api.RecoveryInfo{RecoveryInstanceID: st.row.RecoveryInstanceID, SourceServerID: st.server.ID,
		RecoverySnapshotID: st.pit.ID, JobID: j.job.ID, IsDrill: j.job.IsDrill, ControlPlane: url, ControlPlanePin: pin}
	var seeds [][]byte
	if !j.job.IsDrill && r.cfg.ReverseKey != nil {
		info.ReverseKey = r.cfg.ReverseKey(st.row.RecoveryInstanceID)
		for _, s := range stats {
			if s.Hashes == nil {
				seeds = nil
				break
			}
			b, err := s.Hashes.MarshalBinary()
			if err != nil {
				return extras, err
			}
			seeds = append(seeds, b)
		}
	}
	disks, closeDisks, err := rawDisks(ctx, st)
	if err != nil {
		return extras, err
	}
	res, err := Convert(ctx, ConvertSpec{Disks: disks, Network: st.plan.Network, Hostname: st.settings.Hostname,
		Info: info, GuestVolumes: guestVolumes(st.plan.Disks), SeedTables: seeds,
		AgentBinary: r.cfg.AgentBinary, Hook: r.cfg.ConversionHook, Settings: st.settings, Provider: st.provider.Name(),
		SeedDir: filepath.Join(st.req.Dir, "seed")})
	if cerr := closeDisks(); err == nil && cerr != nil {
		err = fmt.Errorf("close the raw view of the overlays: %w", cerr)
	}
	if err != nil {
		return extras, err
	}
	extras.Seed = res.Seed
	msg := "converted"
	if res.Root != "" {
		msg += " root filesystem " + res.Root
	}
	if res.Seed != "" {
		msg += ", NoCloud seed for cloud-init"
	}
	if len(res.Notes) > 0 {
		msg += "; " + strings.Join(res.Notes, "; ")
	}
	d := map[string]any{"root": res.Root, "seed": res.Seed}
	if st.plan.Network != nil {
		d["address"] = st.plan.Network.Address
	}
	j.event(ctx, st.row.SourceServerID, api.EventConversionEnd, msg, d)
	return extras, nil
}

// guestVolumes are the disks as the recovered server sees them: a block device written
// in place is that device (the server runs on this host's device, or the device moves
// to a machine where it has the same name); a disk image is attached to a VM as a
// virtio disk, /dev/vda, /dev/vdb… in order.
func guestVolumes(disks []launch.Disk) []string {
	out := make([]string, len(disks))
	for i, d := range disks {
		if d.Mode == launch.WriteDevice {
			out[i] = d.Path
		} else {
			out[i] = "/dev/vd" + string(rune('a'+i%26))
		}
	}
	return out
}

// disksStep runs the SNAPSHOT step of a launch: materialized disks, or an instant
// launch's overlays (which have no stats).
func (j *jobCtx) disksStep(ctx context.Context, st *launchState) ([]VolumeStats, error) {
	if isInstant(st.plan) {
		return nil, j.instantStep(ctx, st)
	}
	return j.snapshotStep(ctx, st, st.plan.Convert && !j.job.IsDrill && j.r.cfg.ReverseKey != nil)
}

// snapshotStep runs the SNAPSHOT step: the PIT's volumes materialized onto the plan's
// disks (with the PIT's hash tables when asked for), logged with what it wrote.
func (j *jobCtx) snapshotStep(ctx context.Context, st *launchState, hashes bool) ([]VolumeStats, error) {
	if err := j.setStep(ctx, st, api.StepSnapshot); err != nil {
		return nil, err
	}
	var total int64
	for _, d := range st.plan.Disks {
		total += d.SizeBytes
	}
	j.event(ctx, st.row.SourceServerID, api.EventSnapshotStart,
		fmt.Sprintf("materializing %d %s (%s) of PIT %s: %s", len(st.plan.Disks), api.Plural("volume", len(st.plan.Disks)),
			sizeText(total), st.pit.ID, st.plan.Disks[0].Mode), map[string]any{"bytes": total, "recoverySnapshotId": st.pit.ID})
	start := time.Now()
	stats, err := j.materialize(ctx, st, hashes)
	if err != nil {
		return nil, failAt(api.StepSnapshot, err)
	}
	secs := time.Since(start).Seconds()
	var written, writtenBlocks, same, zero int64
	for _, s := range stats {
		written, writtenBlocks, same, zero = written+s.WrittenBytes, writtenBlocks+s.WrittenBlocks, same+s.SameBlocks, zero+s.ZeroBlocks
	}
	detail := map[string]any{"bytes": total, "writtenBytes": written, "writtenBlocks": writtenBlocks, "sameBlocks": same,
		"zeroBlocks": zero, "seconds": secs, "volumes": stats}
	msg := fmt.Sprintf("materialized %s in %.1f s (%.0f MB/s): %d blocks written", sizeText(total), secs, float64(total)/1e6/max(secs, 1e-3), writtenBlocks)
	if st.plan.Disks[0].Mode == launch.WriteDiffering {
		msg += fmt.Sprintf(", %d already equal", same)
	}
	j.event(ctx, st.row.SourceServerID, api.EventSnapshotEnd, msg, detail)
	return stats, nil
}

func orStep(s string) string {
	if s == "" {
		return api.StepPrepare
	}
	return s
}

// prepare loads the server, its launch settings and the PIT (from the state database
// and the staging store), and builds the launch request.
//
// override, when set, changes the launch settings read (a failback launches into the
// instance it names, whatever the server's settings say).
func (j *jobCtx) prepare(ctx context.Context, st *launchState, override func(*api.LaunchSettings)) error {
	r := j.r
	var storeURL string
	err := r.cfg.DB.View(ctx, func(tx *db.Tx) error {
		s, err := tx.SourceServer(st.row.SourceServerID)
		if errors.Is(err, db.ErrNotFound) {
			return fmt.Errorf("source server %s was deleted", st.row.SourceServerID)
		}
		if err != nil {
			return err
		}
		st.server = s
		a, err := tx.Account(s.AccountID)
		if err != nil {
			return err
		}
		storeURL = a.Template.Apply(s.Overrides).StagingStoreURL
		st.settings, _, err = tx.LaunchSettings(s.ID)
		if errors.Is(err, db.ErrNotFound) {
			st.settings, err = api.DefaultLaunchSettings(s.CPUs, s.MemoryBytes), nil
		}
		if err != nil {
			return err
		}
		if override != nil {
			override(&st.settings)
		}
		copySourceTags(&st.settings, s.Tags)
		st.snapshot, err = tx.Snapshot(st.row.SnapshotID)
		if errors.Is(err, db.ErrNotFound) {
			return fmt.Errorf("recovery snapshot %s was deleted (expired by retention?): start the job again with another PIT", st.row.SnapshotID)
		}
		if err != nil {
			return err
		}
		if st.settings.Provider == api.ProviderExistingInstance {
			in, err := tx.Instance(st.settings.TargetInstanceID)
			if errors.Is(err, db.ErrNotFound) || (err == nil && in.AccountID != s.AccountID) {
				return &launch.Refusal{Reason: fmt.Sprintf("instance %s to launch into is not registered: see lifeboat instances list", st.settings.TargetInstanceID)}
			}
			if err != nil {
				return err
			}
			st.target = &in
		}
		return nil
	})
	if err != nil {
		return err
	}
	if st.target != nil {
		// One launch at a time into an instance: it is held until the recovery
		// instance is terminated (or its launch fails).
		var held bool
		err := r.cfg.DB.Update(ctx, func(tx *db.Tx) (err error) {
			held, err = tx.ClaimInstance(st.target.ID, st.row.RecoveryInstanceID, r.cfg.Now())
			return err
		})
		if err != nil {
			return err
		}
		if !held {
			return &launch.Refusal{Reason: fmt.Sprintf("instance %s holds another recovery instance (%s): terminate that first",
				st.target.ID, st.target.RecoveryInstanceID)}
		}
	}
	if st.provider, err = r.launchProvider(ctx, st); err != nil {
		return err
	}
	if st.repo, err = r.cfg.Stores.Open(ctx, st.server.AccountID, storeURL); err != nil {
		return err
	}
	st.pit, err = LoadPIT(ctx, st.repo, st.snapshot.RecoverySnapshot)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("PIT %s is no longer in the staging store (removed by retention): choose a newer one (lifeboat snapshots list %s)", st.snapshot.ID, st.server.ID)
	}
	if err != nil {
		return err
	}
	st.req = launch.Request{RecoveryInstanceID: st.row.RecoveryInstanceID, SourceServer: st.server.SourceServer,
		Volumes: orderVolumes(st.pit, st.server.Volumes), Settings: st.settings, Drill: j.job.IsDrill,
		Isolated: j.job.IsDrill && !j.job.Params.NetworkAccess, Dir: filepath.Join(r.cfg.Dir, st.row.RecoveryInstanceID)}
	if st.target != nil {
		in := st.target.Instance
		st.req.Target = &in
	}
	return nil
}

// launchProvider is the provider of a launch: the site's, or for a launch into a
// domain of a libvirt site, that site's.
func (r *Runner) launchProvider(ctx context.Context, st *launchState) (launch.Provider, error) {
	site, name := st.server.SiteID, st.settings.Provider
	if st.target != nil && st.target.Provider == api.ProviderLibvirt {
		site, name = st.target.SiteID, api.ProviderLibvirt
	}
	return r.providers.provider(ctx, st.server.AccountID, site, name)
}

// orderVolumes lists a PIT's volumes in the source server's order (its boot disk
// first), then any the server no longer reports, by name.
func orderVolumes(pit store.PIT, server []api.Volume) []launch.Volume {
	var out []launch.Volume
	seen := map[string]bool{}
	for _, sv := range server {
		if v, ok := pit.Volume(sv.Name); ok && !seen[v.Name] {
			out = append(out, launch.Volume{Name: v.Name, SizeBytes: v.Size})
			seen[v.Name] = true
		}
	}
	rest := []launch.Volume{}
	for _, v := range pit.Volumes {
		if !seen[v.Name] {
			rest = append(rest, launch.Volume{Name: v.Name, SizeBytes: v.Size})
		}
	}
	sort.Slice(rest, func(a, b int) bool { return rest[a].Name < rest[b].Name })
	return append(out, rest...)
}

// materialize runs Materialize and records its progress on the server's row (at most
// once a second).
func (j *jobCtx) materialize(ctx context.Context, st *launchState, hashes bool) ([]VolumeStats, error) {
	var done, total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last := int64(-1)
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if d := done.Load(); d != last {
				last = d
				row := st.row
				row.Progress = &api.JobProgress{DoneBytes: d, TotalBytes: total.Load()}
				_ = j.setServer(ctx, row)
			}
		}
	})
	stats, err := Materialize(ctx, st.repo, st.pit, st.plan.Disks, hashes, func(d, t int64) {
		done.Store(d)
		total.Store(t)
	})
	close(stop)
	wg.Wait()
	return stats, err
}

// recordInstance writes the recovery instance's row.
func (j *jobCtx) recordInstance(ctx context.Context, st *launchState, l launch.Launched) error {
	now := j.r.cfg.Now()
	return j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error {
		created := now
		existing, err := tx.RecoveryInstance(st.row.RecoveryInstanceID)
		isNew := errors.Is(err, db.ErrNotFound)
		if err != nil && !isNew {
			return err
		}
		if !isNew {
			created = existing.CreatedAt
		}
		ri := db.RecoveryInstance{RecoveryInstance: api.RecoveryInstance{ID: st.row.RecoveryInstanceID,
			SourceServerID: st.server.ID, JobID: j.job.ID, SnapshotID: st.pit.ID, SnapshotTime: st.snapshot.Time,
			IsDrill: j.job.IsDrill, SiteID: st.server.SiteID, Provider: st.provider.Name(), ProviderHandle: l.Handle,
			Address: l.Address, PortForwards: l.Ports, State: l.State, LaunchSettings: st.settings,
			CreatedAt: created, UpdatedAt: now}, AccountID: j.job.AccountID, RunnerID: j.r.cfg.RunnerID}
		if !isNew {
			ri.TerminationProtection = existing.TerminationProtection
		}
		if err := tx.PutRecoveryInstance(ri); err != nil {
			return err
		}
		if isNew {
			return j.audit(tx, "recovery-instance.launch", "recovery-instance", ri.ID, map[string]any{
				"sourceServerId": ri.SourceServerID, "recoverySnapshotId": ri.SnapshotID, "isDrill": ri.IsDrill, "provider": ri.Provider})
		}
		return nil
	})
}

// launched records a launched instance (and the instance launched into), logs
// LAUNCH_END and starts copying its console into the log.
func (j *jobCtx) launched(ctx context.Context, st *launchState, l launch.Launched, note string) error {
	if err := j.recordInstance(ctx, st, l); err != nil {
		return err
	}
	if st.target != nil {
		now := j.r.cfg.Now()
		err := j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error {
			return tx.SetInstanceState(st.target.ID, l.State, j.r.cfg.RunnerID, st.row.RecoveryInstanceID, now)
		})
		if err != nil {
			return err
		}
	}
	msg := fmt.Sprintf("recovery instance %s is %s", st.row.RecoveryInstanceID, strings.ToLower(l.State))
	if len(l.Ports) > 0 {
		var fw []string
		for _, p := range l.Ports {
			fw = append(fw, fmt.Sprintf("%s:%d→%d/%s", p.HostAddr, p.HostPort, p.GuestPort, p.Protocol))
		}
		msg += ", forwarding " + strings.Join(fw, " ")
	}
	if note != "" {
		msg += " (" + note + ")"
	}
	if l.Note != "" {
		msg += "; " + l.Note
	}
	j.event(ctx, st.row.SourceServerID, api.EventLaunchEnd, msg, map[string]any{"recoveryInstanceId": st.row.RecoveryInstanceID,
		"state": l.State, "address": l.Address, "portForwards": l.Ports, "pid": l.Handle.PID})
	if l.Handle.ConsoleLog != "" {
		j.r.captureConsole(ctx, j, st.row.SourceServerID, st.row.RecoveryInstanceID, l.Handle.ConsoleLog)
	}
	j.r.cfg.Publish(j.job.AccountID, api.Event{Type: "recovery-instance.launch", Time: j.r.cfg.Now(), TargetKind: "recovery-instance",
		TargetID: st.row.RecoveryInstanceID, Data: map[string]any{"state": l.State, "address": l.Address}})
	return nil
}

// postLaunch runs the post-launch actions, then marks the server LAUNCHED. A failed
// action is recorded on the row; the instance stays launched.
func (j *jobCtx) postLaunch(ctx context.Context, st *launchState, l launch.Launched) error {
	if len(st.settings.PostLaunchActions) > 0 {
		if err := j.setStep(ctx, st, api.StepPostLaunch); err != nil {
			return err
		}
	}
	env := actionEnv(j.job, st, l)
	var failed []string
	for _, a := range st.settings.PostLaunchActions {
		j.event(ctx, st.row.SourceServerID, api.EventPostLaunchStart, fmt.Sprintf("post-launch action %s (%s)", a.Name, a.Type),
			map[string]any{"action": a.Name, "type": a.Type})
		start := time.Now()
		var out string
		var err error
		if a.Type == "script" && j.job.AccountID != j.r.cfg.SystemAccount {
			err = errors.New("post-launch scripts run on the control plane's host: only the system account's servers may have them")
		} else {
			out, err = runAction(ctx, a, env)
		}
		d := map[string]any{"action": a.Name, "type": a.Type, "seconds": time.Since(start).Seconds()}
		if out != "" {
			d["output"] = out
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			d["error"] = err.Error()
			failed = append(failed, fmt.Sprintf("%s: %v", a.Name, err))
			j.event(ctx, st.row.SourceServerID, api.EventPostLaunchFailed, fmt.Sprintf("post-launch action %s failed: %v", a.Name, err), d)
			continue
		}
		j.event(ctx, st.row.SourceServerID, api.EventPostLaunchEnd, fmt.Sprintf("post-launch action %s succeeded", a.Name), d)
	}
	st.row.LaunchStatus, st.row.Step, st.row.Progress, st.row.Error = api.LaunchLaunched, "", nil, ""
	if len(failed) > 0 {
		st.row.Error = "post-launch actions failed: " + strings.Join(failed, "; ")
	}
	return j.setServer(ctx, st.row)
}

// terminate runs one recovery instance's termination.
func (j *jobCtx) terminate(ctx context.Context, row api.JobServer) {
	r := j.r
	fail := func(err error) {
		j.event(ctx, row.SourceServerID, api.EventTerminateFailed, fmt.Sprintf("terminating %s failed: %v", row.RecoveryInstanceID, err),
			map[string]any{"recoveryInstanceId": row.RecoveryInstanceID, "error": err.Error()})
		row.LaunchStatus, row.Step, row.Error = api.LaunchFailed, api.StepTerminate, err.Error()
		_ = j.setServer(ctx, row)
	}
	row.LaunchStatus, row.Step = api.LaunchInProgress, api.StepTerminate
	if err := j.setServer(ctx, row); err != nil {
		fail(err)
		return
	}
	var ri db.RecoveryInstance
	if err := r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) { ri, err = tx.RecoveryInstance(row.RecoveryInstanceID); return err }); err != nil {
		fail(err)
		return
	}
	if ri.State != api.InstanceTerminated {
		j.event(ctx, row.SourceServerID, api.EventTerminateStart, fmt.Sprintf("terminating recovery instance %s (%s)", ri.ID, ri.Provider),
			map[string]any{"recoveryInstanceId": ri.ID})
		p, err := r.Provider(ctx, ri)
		if err != nil {
			fail(err)
			return
		}
		r.stopConsole(ri.ID)
		if err := p.Terminate(ctx, ri.ProviderHandle); err != nil {
			if ctx.Err() != nil {
				return
			}
			fail(err)
			return
		}
		r.instant.stop(ri.ID)
		now := r.cfg.Now()
		err = r.cfg.DB.Update(ctx, func(tx *db.Tx) error {
			if err := tx.SetRecoveryInstanceState(ri.ID, api.InstanceTerminated, true, now); err != nil {
				return err
			}
			if in := ri.ProviderHandle.InstanceID; in != "" {
				if err := tx.SetInstanceState(in, api.InstanceStopped, r.cfg.RunnerID, "", now); err != nil && !errors.Is(err, db.ErrNotFound) {
					return err
				}
			}
			return j.audit(tx, "recovery-instance.terminate", "recovery-instance", ri.ID, map[string]any{"sourceServerId": ri.SourceServerID})
		})
		if err != nil {
			fail(err)
			return
		}
		r.cfg.Publish(j.job.AccountID, api.Event{Type: "recovery-instance.terminate", Time: now, TargetKind: "recovery-instance", TargetID: ri.ID})
		j.event(ctx, row.SourceServerID, api.EventTerminateEnd, fmt.Sprintf("recovery instance %s terminated", ri.ID),
			map[string]any{"recoveryInstanceId": ri.ID})
	}
	row.LaunchStatus, row.Step, row.Error = api.LaunchTerminated, "", ""
	_ = j.setServer(ctx, row)
}

func sizeText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}

// copySourceTags gives a recovery instance the source server's tags when its launch
// settings say copyTags, as DRS does (the settings' own tags win).
func copySourceTags(ls *api.LaunchSettings, source map[string]string) {
	if !ls.CopyTags || len(source) == 0 {
		return
	}
	tags := maps.Clone(source)
	maps.Copy(tags, ls.Tags)
	ls.Tags = tags
}
