package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
)

// RecoveryConfig configures drills and recoveries: the job runner and the launch
// providers. The zero value is a working default.
type RecoveryConfig struct {
	// Dir holds each recovery instance's files: materialized disks, seed, kernel, VM
	// state (Dir/<recovery instance id>/). Default DataDir/recovery.
	Dir string
	// InstanceDir holds the VM state of existing instances. Default DataDir/instances.
	InstanceDir string
	// QEMUBinary (default qemu-system-x86_64) and Accel (tcg, the default, or kvm).
	QEMUBinary, Accel string
	// AgentBinary is copied into recovered Linux servers for reversed replication
	// ("": none; lifeboat server sets its own binary).
	AgentBinary string
	// ConversionHook runs after the built-in conversion (docs/recovery.md).
	ConversionHook string
	// HostPathRoots are where accounts other than the system account may name paths
	// on this host (instance disks, image targets). Empty: only the system account may.
	HostPathRoots []string
	// MaxActiveJobs (default 20) and MaxServersPerJob (default 100) are DRS's limits;
	// MaxServersInActiveJobs (default 200) bounds the servers of all active jobs.
	MaxActiveJobs, MaxServersPerJob, MaxServersInActiveJobs int
	// ConsoleCapture is how long a VM's console is copied into its job's log (default 2 min).
	ConsoleCapture time.Duration
	// HydrationBytesPerSecond caps how fast an instant launch copies its disks from the
	// staging store (0: as fast as they come).
	HydrationBytesPerSecond int64
	// JobLease is how long a job's claim holds without renewal (default 30 s).
	JobLease time.Duration
	// MaxExports bounds the volumes exported through the API at once (default 4).
	MaxExports int
}

// recoveryState is the control plane's recovery machinery.
type recoveryState struct {
	cfg       RecoveryConfig
	runnerID  string
	stores    *recovery.Stores
	providers map[string]launch.Provider
	existing  *launch.Existing
	runner    *recovery.Runner
	ids       *recovery.EventIDs
	exports   chan struct{} // one per export running (export.go)
}

// openRecovery sets up the stores, providers and job runner (Serve runs it).
func (cp *ControlPlane) openRecovery() error {
	rc := cp.cfg.Recovery
	if rc.Dir == "" {
		rc.Dir = filepath.Join(cp.cfg.DataDir, "recovery")
	}
	if rc.InstanceDir == "" {
		rc.InstanceDir = filepath.Join(cp.cfg.DataDir, "instances")
	}
	if rc.MaxActiveJobs <= 0 {
		rc.MaxActiveJobs = api.DefaultMaxActiveJobs
	}
	if rc.MaxServersPerJob <= 0 {
		rc.MaxServersPerJob = api.DefaultMaxServersPerJob
	}
	if rc.MaxServersInActiveJobs <= 0 {
		rc.MaxServersInActiveJobs = 2 * rc.MaxServersPerJob
	}
	if rc.JobLease <= 0 {
		rc.JobLease = 30 * time.Second
	}
	if rc.MaxExports <= 0 {
		rc.MaxExports = defaultMaxExports
	}
	for _, d := range []string{rc.Dir, rc.InstanceDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create the recovery directory: %w", err)
		}
	}
	runnerID, err := loadRunnerID(filepath.Join(cp.cfg.DataDir, "runner-id"))
	if err != nil {
		return err
	}
	log := cp.log.With("component", "recovery")
	popts := launch.Options{QEMUBinary: rc.QEMUBinary, Accel: rc.Accel, InstanceDir: rc.InstanceDir,
		Host: runnerID, HydrationBytesPerSecond: rc.HydrationBytesPerSecond, Logger: log}
	providers := launch.Providers(popts)
	r := &recoveryState{cfg: rc, runnerID: runnerID, stores: recovery.NewStores(cp.storeAccess, chunkIndexDir(cp.cfg.DataDir, runnerID), log),
		providers: providers, existing: providers[api.ProviderExistingInstance].(*launch.Existing), ids: &recovery.EventIDs{},
		exports: make(chan struct{}, rc.MaxExports)}
	r.runner = recovery.NewRunner(recovery.Config{DB: cp.db, Stores: r.stores, Providers: providers,
		Sites: cp.SiteLaunchTarget, ProviderOptions: popts, Dir: rc.Dir,
		RunnerID: runnerID, Lease: rc.JobLease, IDs: r.ids, Publish: cp.events.publish,
		ControlPlane: func() (string, string) { return cp.URL(), cp.pin },
		AgentBinary:  rc.AgentBinary, ReverseKey: cp.reverseKey, ConversionHook: rc.ConversionHook, ConsoleCapture: rc.ConsoleCapture,
		SystemAccount: cp.system, Now: cp.cfg.Now, Logger: cp.log})
	cp.rec = r
	return nil
}

// loadRunnerID reads this control plane's runner id, made at first start: the jobs it
// claims are resumed by it at once after a restart.
// chunkIndexDir is where the control plane keeps the chunk indexes of the stores it
// reads (docs/store-format.md §12): one directory per runner, so that two control
// planes sharing a data directory do not share one.
func chunkIndexDir(dataDir, runnerID string) string {
	dir := filepath.Join(dataDir, "chunk-index")
	if filepath.IsLocal(runnerID) && !strings.ContainsAny(runnerID, `/\`) {
		dir = filepath.Join(dir, runnerID)
	}
	return dir
}

func loadRunnerID(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read the runner id: %w", err)
	}
	host, _ := os.Hostname()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := strings.Trim(host+"-"+hex.EncodeToString(b[:]), "-")
	if err := atomicfile.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write the runner id: %w", err)
	}
	return id, nil
}

// jobEvent is a job log entry made by the API (at job creation).
func (c *call) jobEvent(tx *db.Tx, jobID, server, typ, msg string, detail map[string]any) error {
	return tx.AddJobEvent(jobID, api.JobLogEvent{ID: c.cp.rec.ids.Next(), Time: c.cp.cfg.Now(), Type: typ,
		SourceServerID: server, Message: msg, Detail: detail})
}

// hostPaths is where the caller may name paths on this host.
func (c *call) hostPaths() recovery.HostPaths {
	return recovery.HostPaths{System: c.p.System, Roots: c.cp.rec.cfg.HostPathRoots}
}

// createdBy names the caller as a job's creator: the audit log's actor, or a user's name.
func (c *call) createdBy() string {
	kind, actor := c.p.actor()
	if kind == api.CallerUser {
		return actor
	}
	return kind + ":" + actor
}

// planCatalog is what planning a launch job reads (recovery.Catalog): tx, within the
// caller's account.
type planCatalog struct {
	c  *call
	tx *db.Tx
}

func (pc planCatalog) SourceServer(id string) (db.SourceServer, error) {
	return pc.c.loadServer(pc.tx, id)
}

func (pc planCatalog) Snapshot(id string) (db.Snapshot, error) {
	return pc.c.loadSnapshot(pc.tx, id)
}

func (pc planCatalog) StagingStoreURL(s db.SourceServer) (string, error) {
	a, err := pc.tx.Account(s.AccountID)
	if err != nil {
		return "", err
	}
	return a.Template.Apply(s.Overrides).StagingStoreURL, nil
}

func (pc planCatalog) LaunchSettings(serverID string) (api.LaunchSettings, error) {
	l, _, err := pc.tx.LaunchSettings(serverID)
	if errors.Is(err, db.ErrNotFound) {
		return api.LaunchSettings{}, nil
	}
	return l, err
}

func (pc planCatalog) ConsistentSnapshots(serverID string, at *time.Time, limit int) ([]db.Snapshot, error) {
	return pc.tx.ConsistentSnapshots(serverID, at, limit)
}

// startRecovery plans a drill or recovery job (package recovery: its servers and their
// PITs), then creates it.
func (c *call) startRecovery(req *api.StartRecoveryRequest) (api.Job, error) {
	rc := c.cp.rec.cfg
	group, err := c.expandGroup(req)
	if err != nil {
		return api.Job{}, err
	}
	if n := len(req.SourceServers); n > rc.MaxServersPerJob {
		return api.Job{}, api.Errorf(http.StatusConflict, api.CodeQuotaExceeded,
			"a job launches at most %d servers and this one names %d: split it into several jobs", rc.MaxServersPerJob, n)
	}
	var plan *recovery.LaunchPlan
	err = c.view(func(tx *db.Tx) (err error) {
		plan, err = recovery.ResolveLaunch(*req, planCatalog{c: c, tx: tx}, c.hostPaths())
		return err
	})
	if err != nil {
		return api.Job{}, err
	}
	if err := plan.ChoosePITs(c.ctx, c.cp.rec.stores); err != nil {
		return api.Job{}, err
	}
	job := plan.Job(c.cp.cfg.Now(), c.p.AccountID, c.createdBy())
	var out api.Job
	err = c.update(func(tx *db.Tx) (err error) {
		if out, err = c.createLaunchJob(tx, plan, job); err != nil || group == nil {
			return err
		}
		return c.jobEvent(tx, job.ID, "", api.EventUsingGroupPoint, fmt.Sprintf("every member of consistency group %s at its point %s (instant %s)",
			group.Name, req.GroupPointID, plan.Servers[0].PIT.Time.UTC().Format(recovery.TimeMillis)),
			map[string]any{"consistencyGroupId": group.ID, "groupPointId": req.GroupPointID})
	})
	if err != nil {
		return api.Job{}, err
	}
	c.cp.rec.runner.Wake()
	return out, nil
}

// createLaunchJob creates a planned job, once the account's limits and the servers'
// recoveries allow it, with its first log entries and audit entry.
func (c *call) createLaunchJob(tx *db.Tx, plan *recovery.LaunchPlan, job db.Job) (api.Job, error) {
	req := plan.Request
	if err := c.checkJobLimits(tx, len(job.Servers)); err != nil {
		return api.Job{}, err
	}
	if !req.IsDrill && !req.Force {
		for _, p := range plan.Servers {
			if err := refuseSecondRecovery(tx, p.Server.ID); err != nil {
				return api.Job{}, err
			}
		}
	}
	if err := tx.CreateJob(job); err != nil {
		return api.Job{}, err
	}
	what, action := "recovery", "job.start-recovery"
	if req.IsDrill {
		what, action = "drill", "job.start-drill"
	}
	if err := c.jobEvent(tx, job.ID, "", api.EventJobStart, fmt.Sprintf("%s of %d %s started by %s", what, len(plan.Servers),
		api.Plural("server", len(plan.Servers)), job.CreatedBy), map[string]any{"isDrill": req.IsDrill}); err != nil {
		return api.Job{}, err
	}
	for _, p := range plan.Servers {
		age := job.CreatedAt.Sub(p.PIT.Time).Round(time.Second)
		rpo := p.RPO()
		if err := c.jobEvent(tx, job.ID, p.Server.ID, api.EventUsingPreviousSnapshot,
			fmt.Sprintf("using PIT %s (%s consistent, taken %s, %s before the job); %s", p.PIT.ID, p.PIT.Level,
				p.PIT.Time.UTC().Format(recovery.TimeMillis), age, rpo),
			map[string]any{"recoverySnapshotId": p.PIT.ID, "time": p.PIT.Time, "level": p.PIT.Level, "ageSeconds": age.Seconds(),
				"rpoSeconds": rpo.Seconds(), "dataThrough": rpo.DataThrough}); err != nil {
			return api.Job{}, err
		}
	}
	var servers []string
	for _, s := range job.Servers {
		servers = append(servers, s.SourceServerID)
	}
	if err := c.record(tx, c.p.AccountID, action, "job", job.ID, map[string]any{"sourceServers": servers, "force": req.Force}, nil); err != nil {
		return api.Job{}, err
	}
	j, err := tx.Job(job.ID)
	return j.Job, err
}

// refuseSecondRecovery refuses a recovery of a server that has a recovery instance, or a
// recovery running, that is not a drill.
func refuseSecondRecovery(tx *db.Tx, serverID string) error {
	active, err := tx.ActiveRecoveryInstances(serverID)
	if err != nil {
		return err
	}
	for _, ri := range active {
		if !ri.IsDrill {
			return api.Conflict("source server %s already has recovery instance %s (from PIT %s, launched %s): terminate it first (lifeboat recovery-instances terminate %s), or recover again with --force",
				serverID, ri.ID, ri.SnapshotID, ri.CreatedAt.Format(time.RFC3339), ri.ID)
		}
	}
	pending, err := tx.PendingRecoveries(serverID)
	if err != nil {
		return err
	}
	if len(pending) > 0 {
		return api.Conflict("source server %s is being recovered by job %s: wait for it (lifeboat jobs describe %s), or recover again with --force",
			serverID, pending[0], pending[0])
	}
	return nil
}

// checkJobLimits refuses a job past the account's limits of active jobs and servers.
func (c *call) checkJobLimits(tx *db.Tx, servers int) error {
	rc := c.cp.rec.cfg
	jobs, inJobs, err := tx.ActiveJobCounts(c.p.AccountID)
	if err != nil {
		return err
	}
	if jobs >= rc.MaxActiveJobs {
		return api.Errorf(http.StatusConflict, api.CodeQuotaExceeded,
			"the account has %d jobs running, the most it may: wait for one to complete (lifeboat jobs list)", jobs)
	}
	if inJobs+servers > rc.MaxServersInActiveJobs {
		return api.Errorf(http.StatusConflict, api.CodeQuotaExceeded,
			"running jobs hold %d servers and this one adds %d, over the limit of %d: wait for jobs to complete (lifeboat jobs list)",
			inJobs, servers, rc.MaxServersInActiveJobs)
	}
	return nil
}

func (c *call) terminateRecoveryInstances(req *api.TerminateRecoveryInstancesRequest) (api.Job, error) {
	rc := c.cp.rec.cfg
	if n := len(req.RecoveryInstanceIDs); n > rc.MaxServersPerJob {
		return api.Job{}, api.Errorf(http.StatusConflict, api.CodeQuotaExceeded,
			"a job terminates at most %d recovery instances and this one names %d: split it", rc.MaxServersPerJob, n)
	}
	now := c.cp.cfg.Now()
	job := db.Job{Job: api.Job{ID: api.NewID(api.PrefixJob), Type: api.JobTerminate, InitiatedBy: api.InitiatedTerminate,
		Status: api.JobPending, IsDrill: true, CreatedAt: now}, AccountID: c.p.AccountID}
	job.CreatedBy = c.createdBy()
	var out api.Job
	err := c.update(func(tx *db.Tx) error {
		hosts := map[string]bool{}
		for _, id := range req.RecoveryInstanceIDs {
			ri, err := c.loadRecoveryInstance(tx, id)
			if err != nil {
				return err
			}
			if ri.TerminatedAt != nil {
				return api.Conflict("recovery instance %s ended on %s (%s): there is nothing to terminate", ri.ID,
					ri.TerminatedAt.Format(time.RFC3339), strings.ToLower(ri.State))
			}
			if ri.TerminationProtection {
				return api.Conflict("recovery instance %s has termination protection: lift it first with lifeboat recovery-instances protect %s --off", ri.ID, ri.ID)
			}
			if busy, err := tx.BusyRecoveryInstance(ri.ID); err != nil {
				return err
			} else if busy != "" {
				return api.Conflict("job %s is still working on recovery instance %s: wait for it (lifeboat jobs describe %s)", busy, ri.ID, busy)
			}
			job.IsDrill = job.IsDrill && ri.IsDrill
			hosts[ri.RunnerID] = true
			job.Servers = append(job.Servers, api.JobServer{SourceServerID: ri.SourceServerID, RecoveryInstanceID: ri.ID,
				SnapshotID: ri.SnapshotID, LaunchStatus: api.LaunchPending})
		}
		if len(hosts) == 1 {
			// The host that runs the instances takes the job (another only after its lease).
			for h := range hosts {
				if h != "" {
					lease := now.Add(rc.JobLease)
					job.RunnerID, job.LeaseUntil = h, &lease
				}
			}
		}
		if err := c.checkJobLimits(tx, len(job.Servers)); err != nil {
			return err
		}
		if err := tx.CreateJob(job); err != nil {
			return err
		}
		if err := c.jobEvent(tx, job.ID, "", api.EventJobStart, fmt.Sprintf("termination of %d recovery %s started by %s",
			len(job.Servers), api.Plural("instance", len(job.Servers)), job.CreatedBy), nil); err != nil {
			return err
		}
		if err := c.record(tx, c.p.AccountID, "job.terminate-recovery-instances", "job", job.ID,
			map[string]any{"recoveryInstances": req.RecoveryInstanceIDs}, nil); err != nil {
			return err
		}
		j, err := tx.Job(job.ID)
		out = j.Job
		return err
	})
	if err != nil {
		return api.Job{}, err
	}
	c.cp.rec.runner.Wake()
	return out, nil
}

func (c *call) loadJob(tx *db.Tx, id string) (db.Job, error) {
	j, err := tx.Job(id)
	if errors.Is(err, db.ErrNotFound) || (err == nil && j.AccountID != c.p.AccountID) {
		return j, api.NotFound("job %s was not found: see lifeboat jobs list", id)
	}
	return j, err
}

func (c *call) listJobs() (api.JobList, error) {
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return api.JobList{}, err
	}
	out := api.JobList{Items: []api.Job{}}
	err = c.view(func(tx *db.Tx) error {
		rows, next, err := tx.ListJobs(c.p.AccountID, limit, q.Get("page_token"))
		for _, r := range rows {
			out.Items = append(out.Items, r.Job)
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

func (c *call) getJob() (api.Job, error) {
	var out api.Job
	err := c.view(func(tx *db.Tx) error {
		j, err := c.loadJob(tx, c.pathID())
		out = j.Job
		return err
	})
	return out, err
}

func (c *call) jobLog() (api.JobLog, error) {
	q := c.r.URL.Query()
	limit := 1000
	if s := q.Get("limit"); s != "" {
		n, err := limitParam(s)
		if err != nil {
			return api.JobLog{}, err
		}
		limit = n
	}
	out := api.JobLog{Items: []api.JobLogEvent{}}
	err := c.view(func(tx *db.Tx) error {
		j, err := c.loadJob(tx, c.pathID())
		if err != nil {
			return err
		}
		out.Items, out.NextPageToken, err = tx.JobLog(j.ID, limit, q.Get("page_token"))
		return err
	})
	return out, err
}

// liveContext bounds the provider calls that refresh a state shown by the API.
func (c *call) liveContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.ctx, 5*time.Second)
}
