package plan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// NewRun is a run of the plan as it starts: its steps in order, none begun. A drill
// terminates its instances after its checks when the plan says so, and always when it
// is scheduled.
func NewRun(p *Plan, version int, mode string, at *time.Time, scheduled bool, id, createdBy string, now time.Time) (*api.PlanRun, error) {
	order, err := p.Order()
	if err != nil {
		return nil, err
	}
	run := &api.PlanRun{ID: id, Plan: p.Name, PlanVersion: version, Mode: mode, Scheduled: scheduled, At: at,
		State: api.PlanRunRunning, CreatedBy: createdBy, StartedAt: now, Servers: []api.PlanRunServer{}}
	add := func(kind, wave, name string) {
		run.Steps = append(run.Steps, api.PlanRunStep{Kind: kind, Wave: wave, Name: name, State: api.PlanStepPending})
	}
	add(api.PlanStepResolve, "", "")
	for _, i := range order {
		w := p.Waves[i]
		if mode == api.PlanFailback {
			add(api.PlanStepReverse, w.Name, "")
			add(api.PlanStepFailback, w.Name, "")
		} else {
			add(api.PlanStepLaunch, w.Name, "")
		}
		add(api.PlanStepCheck, w.Name, "")
		for _, s := range w.Steps {
			add(api.PlanStepAction, w.Name, s.Name)
		}
	}
	switch {
	case mode == api.PlanFailback:
		add(api.PlanStepComplete, "", "")
	case mode == api.PlanDrill && (scheduled || p.Drill.Terminate):
		add(api.PlanStepTerminate, "", "")
	}
	return run, nil
}

// Runner executes a run of a plan, step after step, saving the run after every change:
// a run interrupted (a restart) resumes at the step it was in. A step that is started
// again finds the jobs it had started (by key) and what it had saved.
type Runner struct {
	Env  Env
	Plan *Plan
	Run  *api.PlanRun
	Log  *slog.Logger
	// Poll is how often jobs and failback states are looked at (default 250 ms: the RTO
	// counts the time until a run sees that a job ended).
	Poll time.Duration
}

// errSkip marks a step that does nothing in this mode; its message says why.
type errSkip struct{ why string }

func (e errSkip) Error() string { return e.why }

// Execute runs the steps not done yet. It returns when the run ended (its state says
// how) or ctx ended (the run stays RUNNING, to be resumed).
func (r *Runner) Execute(ctx context.Context) error {
	if r.Poll <= 0 {
		r.Poll = 250 * time.Millisecond
	}
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	for i := range r.Run.Steps {
		st := &r.Run.Steps[i]
		if st.State == api.PlanStepDone || st.State == api.PlanStepSkipped {
			continue
		}
		if err := r.begin(ctx, st); err != nil {
			return err
		}
		msg, err := r.step(ctx, i)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		now := r.Env.Now()
		st.EndedAt = &now
		var skip errSkip
		switch {
		case errors.As(err, &skip):
			st.State, st.Message = api.PlanStepSkipped, skip.why
		case err != nil:
			st.State, st.Message = api.PlanStepFailed, err.Error()
			return r.fail(ctx, st, err)
		default:
			st.State, st.Message = api.PlanStepDone, msg
		}
		if err := r.save(ctx); err != nil {
			return err
		}
	}
	return r.finish(ctx, api.PlanRunSucceeded, "")
}

// begin marks a step running (once: a resumed step keeps its start).
func (r *Runner) begin(ctx context.Context, st *api.PlanRunStep) error {
	if st.State == api.PlanStepRunning && st.StartedAt != nil {
		r.Log.Info("resuming plan run step", "run", r.Run.ID, "kind", st.Kind, "wave", st.Wave, "name", st.Name)
		return nil
	}
	now := r.Env.Now()
	st.State, st.StartedAt = api.PlanStepRunning, &now
	return r.save(ctx)
}

// step runs step i and says what it did.
func (r *Runner) step(ctx context.Context, i int) (string, error) {
	st := &r.Run.Steps[i]
	switch st.Kind {
	case api.PlanStepResolve:
		if r.Run.Mode == api.PlanFailback {
			return r.resolveFailback(ctx)
		}
		return r.resolve(ctx)
	case api.PlanStepLaunch:
		return r.launch(ctx, i)
	case api.PlanStepCheck:
		return r.check(ctx, i)
	case api.PlanStepAction:
		return r.action(ctx, i)
	case api.PlanStepTerminate:
		return r.terminate(ctx, i, false)
	case api.PlanStepReverse:
		return r.reverse(ctx, i)
	case api.PlanStepFailback:
		return r.failback(ctx, i)
	case api.PlanStepComplete:
		return r.complete(ctx, i)
	}
	return "", fmt.Errorf("unknown step kind %q", st.Kind)
}

// fail ends the run as failed at st. What a failed failover or drill launched is left
// running unless the plan says terminate; a scheduled drill always cleans up.
func (r *Runner) fail(ctx context.Context, st *api.PlanRunStep, cause error) error {
	where := st.Kind
	if st.Wave != "" {
		where += " of wave " + st.Wave
	}
	if st.Name != "" {
		where = fmt.Sprintf("step %s of wave %s", st.Name, st.Wave)
	}
	reason := fmt.Sprintf("%s failed: %v", where, cause)
	if r.Run.Mode != api.PlanFailback && (r.Plan.OnFailure == OnFailureTerminate || r.Run.Scheduled) && r.launchedAny() {
		if msg, err := r.terminate(ctx, -1, true); err != nil {
			reason += "; terminating what it launched failed too: " + err.Error()
		} else {
			reason += "; " + msg
		}
	} else if r.launchedAny() && r.Run.Mode != api.PlanFailback {
		reason += "; what it launched keeps running (terminate it with lifeboat recovery-instances terminate)"
	}
	return r.finish(ctx, api.PlanRunFailed, reason)
}

// finish ends the run: its state, reason, and the RTO and RPO figures.
func (r *Runner) finish(ctx context.Context, state, reason string) error {
	now := r.Env.Now()
	r.Run.State, r.Run.Reason, r.Run.EndedAt = state, reason, &now
	var rto, rpo *float64
	for _, s := range r.Run.Servers {
		if s.RTOSeconds != nil && (rto == nil || *s.RTOSeconds > *rto) {
			rto = s.RTOSeconds
		}
		if s.RPOSeconds != nil && (rpo == nil || *s.RPOSeconds > *rpo) {
			rpo = s.RPOSeconds
		}
	}
	if state == api.PlanRunSucceeded {
		r.Run.RTOSeconds = rto
	}
	r.Run.MaxRPOSeconds = rpo
	return r.save(ctx)
}

// save stores the run; it is retried while ctx lasts (a database hiccup must not lose
// where the run is).
func (r *Runner) save(ctx context.Context) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = r.Env.Save(ctx, r.Run); err == nil || ctx.Err() != nil {
			return err
		}
		r.Log.Warn("saving the plan run failed; retrying", "run", r.Run.ID, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * time.Second):
		}
	}
	return fmt.Errorf("save plan run %s: %w", r.Run.ID, err)
}

// launchedAny reports whether any server has a recovery instance from this run.
func (r *Runner) launchedAny() bool {
	return slices.ContainsFunc(r.Run.Servers, func(s api.PlanRunServer) bool { return s.RecoveryInstID != "" })
}

// wave returns the plan's wave of that name.
func (r *Runner) wave(name string) *Wave {
	for i := range r.Plan.Waves {
		if r.Plan.Waves[i].Name == name {
			return &r.Plan.Waves[i]
		}
	}
	return nil
}

// servers returns the run's servers of a wave.
func (r *Runner) servers(wave string) []*api.PlanRunServer {
	var out []*api.PlanRunServer
	for i := range r.Run.Servers {
		if r.Run.Servers[i].Wave == wave {
			out = append(out, &r.Run.Servers[i])
		}
	}
	return out
}

// server returns the run's server of that id.
func (r *Runner) server(id string) *api.PlanRunServer {
	for i := range r.Run.Servers {
		if r.Run.Servers[i].SourceServerID == id {
			return &r.Run.Servers[i]
		}
	}
	return nil
}

// key names a job a step starts (FindJob finds it after a restart).
func (r *Runner) key(step int, server string) string {
	if server == "" {
		return fmt.Sprintf("%s/%d", r.Run.ID, step)
	}
	return fmt.Sprintf("%s/%d/%s", r.Run.ID, step, server)
}

// waitJob waits until a job completes, and returns it.
func (r *Runner) waitJob(ctx context.Context, id string) (api.Job, error) {
	for {
		j, err := r.Env.Job(ctx, id)
		if err != nil {
			return j, fmt.Errorf("job %s: %w", id, err)
		}
		if j.Status == api.JobCompleted {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-time.After(r.Poll):
		}
	}
}

// seconds is d in seconds, as the API writes durations.
func seconds(d time.Duration) *float64 {
	s := d.Round(time.Millisecond).Seconds()
	return &s
}
