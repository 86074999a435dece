package plan

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// DryRun checks every precondition of the run and says, step by step, what it would
// do. It changes nothing and saves nothing: the run's state says whether every
// precondition holds (SUCCEEDED) or not (FAILED, the reason listing what does not).
func (r *Runner) DryRun(ctx context.Context) {
	r.Run.DryRun = true
	check := func(what string, err error, ok string) {
		c := api.PlanPrecondition{What: what, OK: err == nil, Message: ok}
		if err != nil {
			c.Message = err.Error()
		}
		r.Run.Checks = append(r.Run.Checks, c)
	}
	resolve := r.resolve
	if r.Run.Mode == api.PlanFailback {
		resolve = r.resolveFailback
	}
	msg, err := resolve(ctx)
	check("servers", err, msg)
	r.Run.Steps[0].Message = msg
	if err == nil {
		r.dryServers(ctx, check)
	}
	for i := range r.Run.Steps[1:] {
		st := &r.Run.Steps[i+1]
		st.Message = r.dryStep(ctx, st, check)
	}
	now := r.Env.Now()
	r.Run.EndedAt = &now
	var failed []string
	for _, c := range r.Run.Checks {
		if !c.OK {
			failed = append(failed, c.What+": "+c.Message)
		}
	}
	r.Run.State = api.PlanRunSucceeded
	if len(failed) > 0 {
		r.Run.State, r.Run.Reason = api.PlanRunFailed, strings.Join(failed, "; ")
	}
}

// dryServers checks each server's PIT (or recovery instance) and the launch capacity.
func (r *Runner) dryServers(ctx context.Context, check func(string, error, string)) {
	for _, s := range r.Run.Servers {
		if r.Run.Mode == api.PlanFailback {
			ri, err := r.Env.RecoveryInstance(ctx, s.RecoveryInstID)
			if err == nil && ri.FailbackState == api.FailbackError {
				err = fmt.Errorf("recovery instance %s is %s", ri.ID, ri.FailbackState)
			}
			check("recovery instance of "+s.SourceServerID, err, fmt.Sprintf("%s (%s), failback into %s", ri.ID, ri.FailbackState, s.FailbackInto))
			continue
		}
		check("PIT of "+s.SourceServerID, nil, fmt.Sprintf("%s taken %s, %s old", s.SnapshotID, s.SnapshotTime.UTC().Format(time.RFC3339),
			time.Duration(*s.PITAgeSeconds*float64(time.Second)).Round(time.Second)))
	}
	if r.Run.Mode == api.PlanFailback {
		return
	}
	for _, w := range r.Plan.Waves {
		n := len(r.servers(w.Name))
		check("launch capacity of wave "+w.Name, r.Env.Capacity(ctx, n), fmt.Sprintf("a job of %d %s is within the account's limits", n, api.Plural("server", n)))
	}
}

// dryStep checks a step's preconditions and says what it would do.
func (r *Runner) dryStep(ctx context.Context, st *api.PlanRunStep, check func(string, error, string)) string {
	w := r.wave(st.Wave)
	switch st.Kind {
	case api.PlanStepLaunch:
		what := "recover"
		if r.Run.Mode == api.PlanDrill {
			what = "drill"
		}
		return fmt.Sprintf("would %s %s", what, r.describeServers(st.Wave))
	case api.PlanStepReverse:
		return "would replicate back " + r.describeServers(st.Wave) + " until ready"
	case api.PlanStepFailback:
		return "would fail back " + r.describeServers(st.Wave)
	case api.PlanStepCheck:
		if w.runsCommands() && !r.Env.MayRunCommands() {
			check("health checks of wave "+w.Name, fmt.Errorf("only plans of the system account may run commands"), "")
		}
		return fmt.Sprintf("would run %d health %s on each server", len(w.HealthChecks), api.Plural("check", len(w.HealthChecks)))
	case api.PlanStepAction:
		return r.dryAction(ctx, st, w.step(st.Name), check)
	case api.PlanStepTerminate:
		return "would terminate the drill's instances"
	case api.PlanStepComplete:
		return "would complete each failback once its origin replicates again"
	}
	return ""
}

// dryAction checks that a step's DNS server accepts its key, its load balancer answers
// and knows its servers, and its secrets exist.
func (r *Runner) dryAction(ctx context.Context, st *api.PlanRunStep, step *Step, check func(string, error, string)) string {
	what := fmt.Sprintf("step %s of wave %s", st.Name, st.Wave)
	switch {
	case step.DNS != nil:
		d := step.DNS
		zone, records := d.Zone, d.Records
		if r.Run.Mode == api.PlanDrill {
			if d.Drill == nil {
				return "would change no DNS record (no drill records)"
			}
			zone, records = d.Drill.Zone, d.Drill.Records
		}
		client, err := r.dnsClient(ctx, d)
		if err == nil {
			err = client.Check(ctx, zone)
		}
		check(what, err, fmt.Sprintf("%s serves zone %s and accepts key %s", dnsServer(d.Server), zone, d.Key.Name))
		var names []string
		for _, rec := range records {
			names = append(names, fqdnIn(rec.Name, zone)+" "+recordType(rec))
		}
		return "would set " + strings.Join(names, ", ")
	case step.HAProxy != nil:
		h := step.HAProxy
		backend := h.Backend
		if r.Run.Mode == api.PlanDrill {
			if h.DrillBackend == "" {
				return "would leave the load balancer alone (no drill backend)"
			}
			backend = h.DrillBackend
		}
		lb := r.lb(h)
		err := lb.Ping(ctx)
		for _, s := range h.Servers {
			if err == nil {
				_, err = lb.Server(ctx, backend, s.Name)
			}
		}
		check(what, err, fmt.Sprintf("HAProxy answers and has the %d servers of backend %s", len(h.Servers), backend))
		return fmt.Sprintf("would point %d servers of backend %s", len(h.Servers), backend)
	case step.Webhook != nil:
		_, err := r.Env.Secret(ctx, step.Webhook.Secret)
		check(what, err, "the webhook's secret exists")
		return "would post to the webhook at " + webhookHost(step.Webhook.URL)
	case step.Script != nil:
		var err error
		if !r.Env.MayRunCommands() {
			err = fmt.Errorf("only plans of the system account may run scripts")
		}
		check(what, err, "the plan may run scripts")
		return "would run the script"
	}
	return ""
}

// describeServers lists a wave's servers with what each is launched from.
func (r *Runner) describeServers(wave string) string {
	var out []string
	for _, s := range r.servers(wave) {
		d := s.SourceServerID
		if s.Hostname != "" {
			d += " (" + s.Hostname + ")"
		}
		switch {
		case s.SnapshotID != "":
			d += " from " + s.SnapshotID
		case s.RecoveryInstID != "":
			d += " (" + s.RecoveryInstID + " into " + s.FailbackInto + ")"
		}
		out = append(out, d)
	}
	return strings.Join(out, ", ")
}
