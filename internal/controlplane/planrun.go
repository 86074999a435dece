package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/dnsupdate"
	"github.com/lifeboat-dr/lifeboat/internal/haproxy"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
)

// Plan runs (docs/plans.md "Runs"): each run executes in a goroutine of its own, saving
// itself after every change; a restarted control plane resumes the runs that were
// running at the step they were in. The database refuses a second running run of a
// plan. Scheduled drills start from the same loop.

// planRuns runs plan runs and scheduled drills.
type planRuns struct {
	cp   *ControlPlane
	mu   sync.Mutex
	ctx  context.Context // the control plane's background context, once Serve runs
	live map[string]bool // runs executing here
	wg   sync.WaitGroup
	wake chan struct{}
}

func newPlanRuns(cp *ControlPlane) *planRuns {
	return &planRuns{cp: cp, live: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// scheduleEvery is how often due scheduled drills are looked for.
const scheduleEvery = 5 * time.Second

// loop resumes the runs that were running, then starts scheduled drills when due, until
// ctx ends; it returns once every run it started has stopped (they stay RUNNING, to be
// resumed by the next start).
func (m *planRuns) loop(ctx context.Context) {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	defer m.wg.Wait()
	for {
		m.resume(ctx)
		m.schedule(ctx)
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-time.After(scheduleEvery):
		}
	}
}

// resume starts every running run not executing here.
func (m *planRuns) resume(ctx context.Context) {
	var runs []db.PlanRun
	err := m.cp.db.View(ctx, func(tx *db.Tx) (err error) { runs, err = tx.RunningPlanRuns(); return err })
	if err != nil {
		m.cp.log.Warn("listing running plan runs failed", "err", err)
		return
	}
	for _, r := range runs {
		m.start(r)
	}
}

// start executes a run in the background, unless it executes here already or this
// control plane does not coordinate (the coordinator's loop resumes it).
//
// Runs execute only in the coordinator (coordinator.go). A run started through the API
// of another control plane sharing the database is handed over through the database:
// it is stored RUNNING, and the coordinator's loop, which resumes every RUNNING run not
// executing in it, starts it within scheduleEvery. Executing it on the control plane
// that received the request instead would need a lease per run; the coordinator lease
// already guarantees one executor, and a run resumes from its saved steps wherever it
// continues.
func (m *planRuns) start(r db.PlanRun) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.ctx.Err() != nil || m.live[r.ID] {
		return
	}
	m.live[r.ID] = true
	m.wg.Go(func() {
		defer func() {
			m.mu.Lock()
			delete(m.live, r.ID)
			m.mu.Unlock()
		}()
		m.execute(m.ctx, r)
	})
}

// execute runs a run to its end (or until ctx ends), and publishes how it ended.
func (m *planRuns) execute(ctx context.Context, r db.PlanRun) {
	log := m.cp.log.With("component", "plan", "plan", r.Plan, "run", r.ID)
	var row db.Plan
	var versions []api.PlanVersion
	err := m.cp.db.View(ctx, func(tx *db.Tx) (err error) {
		versions, err = tx.PlanVersions(r.AccountID, r.Plan)
		return err
	})
	i := slices.IndexFunc(versions, func(v api.PlanVersion) bool { return v.Version == r.PlanVersion })
	if err == nil && i < 0 {
		err = fmt.Errorf("version %d of plan %s is gone", r.PlanVersion, r.Plan)
	}
	var p *plan.Plan
	if err == nil {
		row.Source = versions[i].Source
		p, err = plan.Parse([]byte(row.Source))
	}
	env := m.cp.planEnv(r.AccountID, r.Plan)
	runner := &plan.Runner{Env: env, Plan: p, Run: &r.PlanRun, Log: log}
	if err != nil {
		log.Error("a plan run cannot start", "err", err)
		r.State, r.Reason = api.PlanRunFailed, err.Error()
		_ = env.Save(ctx, &r.PlanRun)
		return
	}
	log.Info("plan run executing", "mode", r.Mode)
	if err := runner.Execute(ctx); err != nil && ctx.Err() == nil {
		log.Error("plan run stopped", "err", err)
	}
	if ctx.Err() != nil {
		log.Info("plan run interrupted: it resumes at the next start", "step", currentStep(r.PlanRun))
		return
	}
	m.ended(ctx, r.AccountID, &r.PlanRun)
}

// currentStep names the step a run is in.
func currentStep(r api.PlanRun) string {
	for _, s := range r.Steps {
		if s.State == api.PlanStepRunning || s.State == api.PlanStepPending {
			return s.Kind + " " + s.Wave + " " + s.Name
		}
	}
	return ""
}

// ended publishes a run's end (a failed drill is an event operators are paged on) and
// trims the plan's old reports.
func (m *planRuns) ended(ctx context.Context, account string, r *api.PlanRun) {
	typ := "plan-run.succeeded"
	if r.State == api.PlanRunFailed {
		typ = "plan-run.failed"
		if r.Mode == api.PlanDrill {
			typ = "plan.drill-failed"
		}
		m.cp.log.Warn("plan run failed", "plan", r.Plan, "run", r.ID, "mode", r.Mode, "reason", r.Reason)
	}
	m.cp.events.publish(account, api.Event{Type: typ, Time: m.cp.cfg.Now(), TargetKind: "plan-run", TargetID: r.ID,
		Data: map[string]any{"plan": r.Plan, "mode": r.Mode, "scheduled": r.Scheduled, "state": r.State, "reason": r.Reason, "rtoSeconds": r.RTOSeconds}})
	err := m.cp.db.Update(ctx, func(tx *db.Tx) error { return tx.TrimPlanRuns(account, r.Plan, api.DefaultPlanRunsKept) })
	if err != nil {
		m.cp.log.Warn("trimming old plan reports failed", "plan", r.Plan, "err", err)
	}
}

// schedule starts the scheduled drills that are due, and sets each plan's next one. A
// drill due while a run of its plan runs is skipped (the event says so).
//
// Only the coordinator runs this loop, and the database makes a drill start once even
// if two control planes believed they coordinate (a lease handover between hosts whose
// clocks disagree): the run is created in the transaction that moves the plan's next
// drill on, from the time it was due, so the second finds it moved and starts nothing.
func (m *planRuns) schedule(ctx context.Context) {
	now := m.cp.cfg.Now()
	var due []db.Plan
	if err := m.cp.db.View(ctx, func(tx *db.Tx) (err error) { due, err = tx.PlansDue(now); return err }); err != nil {
		m.cp.log.Warn("listing due scheduled drills failed", "err", err)
		return
	}
	for _, row := range due {
		m.scheduleOne(ctx, row, now)
	}
}

// scheduleOne starts the due scheduled drill of a plan and sets its next one.
func (m *planRuns) scheduleOne(ctx context.Context, row db.Plan, now time.Time) {
	c := m.cp.planCall(ctx, row.AccountID, "schedule")
	c.p.Kind, c.p.ID = "system", "plan-scheduler"
	p, err := plan.Parse([]byte(row.Source))
	var next time.Time
	if err == nil && p.Schedule != nil {
		next, err = p.Schedule.Next(now)
	}
	advance := func(tx *db.Tx) error { return tx.AdvanceNextDrill(row.AccountID, row.Name, row.NextDrillAt, next) }
	if err == nil {
		_, err = c.createPlanRun(row, p, &api.StartPlanRunRequest{Mode: api.PlanDrill}, advance)
	}
	switch {
	case err == nil:
		return // the run's transaction set the next drill
	case errors.Is(err, db.ErrNotFound):
		m.cp.log.Info("a scheduled drill was started by another control plane", "plan", row.Name)
		return
	case isConflict(err):
		m.cp.log.Info("a scheduled drill is skipped: a run of its plan runs", "plan", row.Name, "err", err)
	default:
		m.cp.log.Warn("a scheduled drill did not start", "plan", row.Name, "err", err)
		m.cp.events.publish(row.AccountID, api.Event{Type: "plan.drill-failed", Time: now, TargetKind: "plan", TargetID: row.Name,
			Data: map[string]any{"plan": row.Name, "scheduled": true, "reason": "the scheduled drill did not start: " + err.Error()}})
	}
	if err := m.cp.db.Update(ctx, advance); err != nil && !errors.Is(err, db.ErrNotFound) {
		m.cp.log.Warn("recording the next scheduled drill failed", "plan", row.Name, "err", err)
	}
}

// startPlanRun starts a run of a plan (or answers a dry run of one).
func (c *call) startPlanRun(req *api.StartPlanRunRequest) (api.PlanRun, error) {
	var row db.Plan
	var p *plan.Plan
	err := c.view(func(tx *db.Tx) (err error) {
		if row, err = c.loadPlan(tx, c.pathID()); err == nil {
			p, err = c.parsePlan(tx, row.Source)
		}
		return err
	})
	if err != nil {
		return api.PlanRun{}, err
	}
	return c.createPlanRun(row, p, req, nil)
}

// createPlanRun creates a run and starts it; a dry run is answered instead. A
// scheduled run passes advance, which moves the plan's schedule on in the transaction
// that creates the run.
func (c *call) createPlanRun(row db.Plan, p *plan.Plan, req *api.StartPlanRunRequest, advance func(*db.Tx) error) (api.PlanRun, error) {
	now := c.cp.cfg.Now()
	scheduled := advance != nil
	run, err := plan.NewRun(p, row.Version, req.Mode, req.At, scheduled, api.NewID(api.PrefixPlanRun), c.createdBy(), now)
	if err != nil {
		return api.PlanRun{}, api.Invalid("plan %s: %v", row.Name, err)
	}
	if req.DryRun {
		runner := &plan.Runner{Env: c.cp.planEnv(c.p.AccountID, row.Name), Plan: p, Run: run}
		runner.DryRun(c.ctx)
		return *run, nil
	}
	err = c.update(func(tx *db.Tx) error {
		if advance != nil {
			if err := advance(tx); err != nil {
				return err
			}
		}
		if err := tx.CreatePlanRun(db.PlanRun{AccountID: c.p.AccountID, PlanRun: *run}, now); err != nil {
			return err
		}
		return c.record(tx, c.p.AccountID, "plan.run", "plan-run", run.ID, map[string]any{"plan": row.Name, "mode": run.Mode,
			"version": row.Version, "scheduled": scheduled}, nil)
	})
	if errors.Is(err, db.ErrConflict) {
		// The running run is looked up in a transaction of its own: PostgreSQL's failed
		// insert has aborted the one above.
		id := "another"
		var running *db.PlanRun
		if c.view(func(tx *db.Tx) (err error) {
			running, err = tx.LastPlanRun(c.p.AccountID, row.Name, "", api.PlanRunRunning)
			return err
		}) == nil && running != nil {
			id = running.ID + " (" + running.Mode + ")"
		}
		return api.PlanRun{}, api.Conflict("plan %s has run %s running: two runs of a plan at once are refused; wait for it (lifeboat plan reports %s)",
			row.Name, id, row.Name)
	}
	if err != nil {
		return api.PlanRun{}, err
	}
	// The answer is a copy: the run's goroutine changes its steps as it goes.
	out := *run
	out.Steps, out.Servers = slices.Clone(run.Steps), slices.Clone(run.Servers)
	c.cp.plans.start(db.PlanRun{AccountID: c.p.AccountID, PlanRun: *run})
	return out, nil
}

// planCall is a call made by a plan run, within the plan's account. Jobs it starts name
// it (key) as their creator, so that a resumed run finds them.
func (cp *ControlPlane) planCall(ctx context.Context, account, key string) *call {
	r, _ := http.NewRequestWithContext(ctx, http.MethodPost, "/", nil)
	return &call{cp: cp, ctx: ctx, r: r, p: principal{Kind: "plan", ID: key, AccountID: account, Role: api.RoleOperator,
		System: account == cp.system}}
}

// planEnv is what a plan's runs act on: the control plane, within the plan's account.
type planEnv struct {
	cp      *ControlPlane
	account string
	plan    string
}

func (cp *ControlPlane) planEnv(account, name string) *planEnv {
	return &planEnv{cp: cp, account: account, plan: name}
}

// call is a call of the run, for the recovery instance (or other object) id.
func (e *planEnv) call(ctx context.Context, key, id string) *call {
	c := e.cp.planCall(ctx, e.account, key)
	c.r.SetPathValue("id", id)
	return c
}

func (e *planEnv) Now() time.Time       { return e.cp.cfg.Now() }
func (e *planEnv) MayRunCommands() bool { return e.account == e.cp.system }

func (e *planEnv) SelectServers(ctx context.Context, sel plan.Selector) ([]plan.Server, string, error) {
	c := e.call(ctx, "", "")
	var out []plan.Server
	var group string
	err := c.view(func(tx *db.Tx) error {
		var servers []db.SourceServer
		switch {
		case sel.ID != "":
			s, err := c.loadServer(tx, sel.ID)
			if err != nil {
				return err
			}
			servers = []db.SourceServer{s}
		case sel.Group != "":
			g, err := c.loadGroup(tx, sel.Group)
			if err != nil {
				return err
			}
			group = g.ID
			for _, id := range g.SourceServerIDs {
				s, err := tx.SourceServer(id)
				if err != nil {
					return err
				}
				servers = append(servers, s)
			}
		default:
			var err error
			if servers, err = tx.SourceServersWithTags(e.account, sel.Tags); err != nil {
				return err
			}
		}
		for _, s := range servers {
			if s.Reversed == nil {
				out = append(out, plan.Server{ID: s.ID, Hostname: s.Hostname})
			}
		}
		return nil
	})
	return out, group, err
}

func (e *planEnv) ChoosePIT(ctx context.Context, serverID string, at time.Time) (plan.PIT, error) {
	c := e.call(ctx, "", "")
	req := api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: serverID}}, At: &at}
	var lp *recovery.LaunchPlan
	err := c.view(func(tx *db.Tx) (err error) {
		lp, err = recovery.ResolveLaunch(req, planCatalog{c: c, tx: tx}, c.hostPaths())
		return err
	})
	if err == nil {
		err = lp.ChoosePITs(ctx, e.cp.rec.stores)
	}
	if err != nil {
		return plan.PIT{}, err
	}
	return plan.PIT{ID: lp.Servers[0].PIT.ID, Time: lp.Servers[0].PIT.Time}, nil
}

func (e *planEnv) GroupPoint(ctx context.Context, groupID string, at time.Time) (string, map[string]plan.PIT, error) {
	c := e.call(ctx, "", "")
	out := map[string]plan.PIT{}
	var id string
	err := c.view(func(tx *db.Tx) error {
		g, err := c.loadGroup(tx, groupID)
		if err != nil {
			return err
		}
		p, err := c.wholePoint(tx, g, &api.StartRecoveryRequest{At: &at})
		if err != nil {
			return err
		}
		id = p.ID
		for _, s := range p.Snapshots {
			snap, err := tx.Snapshot(s.SnapshotID)
			if err != nil {
				return err
			}
			out[s.SourceServerID] = plan.PIT{ID: snap.ID, Time: snap.Time}
		}
		return nil
	})
	return id, out, err
}

func (e *planEnv) Capacity(ctx context.Context, n int) error {
	c := e.call(ctx, "", "")
	if max := e.cp.rec.cfg.MaxServersPerJob; n > max {
		return fmt.Errorf("a job launches at most %d servers and this wave has %d", max, n)
	}
	return c.view(func(tx *db.Tx) error { return c.checkJobLimits(tx, n) })
}

func (e *planEnv) FindJob(ctx context.Context, key string) (id string, err error) {
	err = e.cp.db.View(ctx, func(tx *db.Tx) error { id, err = tx.JobCreatedBy(e.account, "plan:"+key); return err })
	return id, err
}

func (e *planEnv) Job(ctx context.Context, id string) (api.Job, error) {
	c := e.call(ctx, "", "")
	var j db.Job
	err := c.view(func(tx *db.Tx) (err error) { j, err = c.loadJob(tx, id); return err })
	return j.Job, err
}

func (e *planEnv) StartLaunch(ctx context.Context, key string, req api.StartRecoveryRequest) (string, error) {
	if err := req.Validate(); err != nil {
		return "", err
	}
	j, err := e.call(ctx, key, "").startRecovery(&req)
	return j.ID, err
}

func (e *planEnv) Terminate(ctx context.Context, key string, ids []string) (string, error) {
	j, err := e.call(ctx, key, "").terminateRecoveryInstances(&api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: ids})
	return j.ID, err
}

func (e *planEnv) RecoveryInstance(ctx context.Context, id string) (api.RecoveryInstance, error) {
	c := e.call(ctx, "", id)
	return c.getRecoveryInstance()
}

func (e *planEnv) ActiveRecovery(ctx context.Context, serverID string) (api.RecoveryInstance, error) {
	var out api.RecoveryInstance
	err := e.cp.db.View(ctx, func(tx *db.Tx) error {
		ris, err := tx.ActiveRecoveryInstances(serverID)
		if err != nil {
			return err
		}
		for _, ri := range ris { // oldest first: the newest recovery wins
			if !ri.IsDrill && ri.AccountID == e.account {
				out = ri.RecoveryInstance
			}
		}
		if out.ID == "" {
			return api.NotFound("source server %s has no recovery instance that is not a drill", serverID)
		}
		return nil
	})
	return out, err
}

func (e *planEnv) Instance(ctx context.Context, nameOrID string) (api.Instance, error) {
	var out api.Instance
	err := e.cp.db.View(ctx, func(tx *db.Tx) error {
		ins, err := tx.Instances(e.account)
		if err != nil {
			return err
		}
		for _, in := range ins {
			if in.ID == nameOrID || in.Name == nameOrID {
				out = in.Instance
				return nil
			}
		}
		return api.NotFound("instance %s is not registered: see lifeboat instances list", nameOrID)
	})
	return out, err
}

func (e *planEnv) StartReverse(ctx context.Context, id string) error {
	_, err := e.call(ctx, "", id).startReverseReplication()
	return err
}

func (e *planEnv) StartFailback(ctx context.Context, key, id, into string) (string, error) {
	j, err := e.call(ctx, key, id).startFailback(&api.FailbackRequest{Into: into})
	return j.ID, err
}

func (e *planEnv) CompleteFailback(ctx context.Context, key, id string) (string, error) {
	j, err := e.call(ctx, key, id).completeFailback()
	return j.ID, err
}

// Launched reads where a failback job's machine is reached from the job's LAUNCH_END.
func (e *planEnv) Launched(ctx context.Context, jobID, _ string) (string, []api.PortForward, error) {
	var events []api.JobLogEvent
	err := e.cp.db.View(ctx, func(tx *db.Tx) (err error) { events, _, err = tx.JobLog(jobID, 1000, ""); return err })
	if err != nil {
		return "", nil, err
	}
	for _, ev := range events {
		if ev.Type != api.EventLaunchEnd {
			continue
		}
		addr, _ := ev.Detail["address"].(string)
		var ports []api.PortForward
		if raw, ok := ev.Detail["portForwards"]; ok {
			_ = remarshal(raw, &ports)
		}
		return addr, ports, nil
	}
	return "", nil, nil
}

func (e *planEnv) Secret(ctx context.Context, name string) ([]byte, error) {
	var sealed []byte
	err := e.cp.db.View(ctx, func(tx *db.Tx) (err error) { sealed, err = tx.PlanSecret(e.account, name); return err })
	if errors.Is(err, db.ErrNotFound) {
		return nil, fmt.Errorf("plan secret %s does not exist: store it with lifeboat plan secrets set %s --from-file FILE", name, name)
	}
	if err != nil {
		return nil, err
	}
	b, err := e.cp.keys.master.Unwrap(sealed, planSecretAAD(e.account, name))
	if err != nil {
		return nil, fmt.Errorf("plan secret %s does not open with this master key: %w", name, err)
	}
	return b, nil
}

func (e *planEnv) LastRun(ctx context.Context, mode string) (*api.PlanRun, error) {
	var r *db.PlanRun
	err := e.cp.db.View(ctx, func(tx *db.Tx) (err error) {
		r, err = tx.LastPlanRun(e.account, e.plan, mode, api.PlanRunSucceeded)
		return err
	})
	if r == nil || err != nil {
		return nil, err
	}
	return &r.PlanRun, nil
}

func (e *planEnv) Save(ctx context.Context, run *api.PlanRun) error {
	now := e.cp.cfg.Now()
	err := e.cp.db.Update(ctx, func(tx *db.Tx) error {
		return tx.UpdatePlanRun(db.PlanRun{AccountID: e.account, PlanRun: *run}, now)
	})
	if err == nil {
		e.cp.events.publish(e.account, api.Event{Type: "plan-run.progress", Time: now, TargetKind: "plan-run", TargetID: run.ID,
			Data: map[string]any{"plan": run.Plan, "state": run.State, "step": currentStep(*run)}})
	}
	return err
}

func (e *planEnv) DNS(server string, key plan.DNSKey) plan.DNSClient {
	return dnsClient{&dnsupdate.Client{Server: server, Key: dnsupdate.Key{Name: key.Name, Algorithm: key.Algorithm, Secret: key.Secret}}}
}

func (e *planEnv) HAProxy(network, address string) plan.LoadBalancer {
	return lbClient{&haproxy.Client{Network: network, Address: address}}
}

// dnsClient adapts package dnsupdate to the plan's DNS client.
type dnsClient struct{ c *dnsupdate.Client }

func (d dnsClient) Lookup(ctx context.Context, name, typ string) (plan.RecordSet, error) {
	s, err := d.c.Lookup(ctx, name, typ)
	return plan.RecordSet{Name: s.Name, Type: s.Type, TTL: s.TTL, Values: s.Values}, err
}

func (d dnsClient) Replace(ctx context.Context, zone string, s plan.RecordSet) error {
	return d.c.Replace(ctx, zone, dnsupdate.RRSet{Name: s.Name, Type: s.Type, TTL: s.TTL, Values: s.Values})
}

func (d dnsClient) Check(ctx context.Context, zone string) error { return d.c.Check(ctx, zone) }

// lbClient adapts package haproxy to the plan's load balancer.
type lbClient struct{ c *haproxy.Client }

func (l lbClient) Ping(ctx context.Context) error { return l.c.Ping(ctx) }

func (l lbClient) Server(ctx context.Context, backend, name string) (plan.BackendServer, error) {
	s, err := l.c.Server(ctx, backend, name)
	return plan.BackendServer{Addr: s.Addr, Port: s.Port, State: s.Admin}, err
}

func (l lbClient) SetAddr(ctx context.Context, backend, name, addr string, port int) error {
	return l.c.SetAddr(ctx, backend, name, addr, port)
}

func (l lbClient) SetState(ctx context.Context, backend, name, state string) error {
	return l.c.SetState(ctx, backend, name, state)
}

// remarshal converts a decoded JSON value (a job event's detail) into out.
func remarshal(v any, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// isConflict reports whether err is a 409 of the API.
func isConflict(err error) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Status == http.StatusConflict
}
