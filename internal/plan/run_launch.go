package plan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/healthcheck"
)

// Bounds of the steps that wait on replication.
const (
	waitPoll        = time.Second      // how often replication back, or an origin, is looked at
	reverseTimeout  = 2 * time.Hour    // a wave's instances replicating back until ready
	completeTimeout = 30 * time.Minute // an origin replicating again before failback complete
)

// selectWaves resolves every wave's selectors into the run's servers. A selector that
// matches nothing, or a server in two waves, fails the run: a plan must not silently
// recover less than it says.
func (r *Runner) selectWaves(ctx context.Context) (groups map[string]string, err error) {
	groups = map[string]string{} // server id → group id, for group selectors
	seen := map[string]string{}  // server id → wave
	r.Run.Servers = r.Run.Servers[:0]
	for _, w := range r.Plan.Waves {
		for _, sel := range w.Servers {
			servers, group, err := r.Env.SelectServers(ctx, sel)
			if err != nil {
				return nil, fmt.Errorf("wave %s: %w", w.Name, err)
			}
			if len(servers) == 0 {
				return nil, fmt.Errorf("wave %s: %s matches no source server", w.Name, describeSelector(sel))
			}
			for _, s := range servers {
				if other, ok := seen[s.ID]; ok {
					if other == w.Name {
						continue
					}
					return nil, fmt.Errorf("source server %s (%s) is selected by waves %s and %s: a server belongs to one wave", s.ID, s.Hostname, other, w.Name)
				}
				seen[s.ID] = w.Name
				if group != "" {
					groups[s.ID] = group
				}
				r.Run.Servers = append(r.Run.Servers, api.PlanRunServer{SourceServerID: s.ID, Hostname: s.Hostname, Wave: w.Name})
			}
		}
	}
	return groups, r.checkNamed()
}

// checkNamed fails when a wave's launch overrides or failback targets name a server the
// wave did not select (a tag or group that changed since the plan was applied).
func (r *Runner) checkNamed() error {
	for _, w := range r.Plan.Waves {
		in := map[string]bool{}
		for _, s := range r.servers(w.Name) {
			in[s.SourceServerID] = true
		}
		for _, o := range w.Launch {
			if o.Server != "" && !in[o.Server] {
				return fmt.Errorf("wave %s has launch overrides for source server %s, which it does not select", w.Name, o.Server)
			}
		}
		for _, f := range w.Failback {
			if !in[f.Server] {
				return fmt.Errorf("wave %s names a failback target for source server %s, which it does not select", w.Name, f.Server)
			}
		}
	}
	return nil
}

// describeSelector words a selector for an operator.
func describeSelector(s Selector) string {
	switch {
	case s.ID != "":
		return "source server " + s.ID
	case s.Group != "":
		return "consistency group " + s.Group
	}
	var tags []string
	for k, v := range s.Tags {
		tags = append(tags, k+"="+v)
	}
	return "the tag selector " + strings.Join(tags, ",")
}

// resolve picks every server and its PIT: one point in time for all (the run's --at,
// or its start), and a group's point for the members of a group.
func (r *Runner) resolve(ctx context.Context) (string, error) {
	groups, err := r.selectWaves(ctx)
	if err != nil {
		return "", err
	}
	at := r.Run.StartedAt
	if r.Run.At != nil {
		at = *r.Run.At
	}
	points := map[string]map[string]PIT{}
	pointIDs := map[string]string{}
	var oldest time.Duration
	for i := range r.Run.Servers {
		s := &r.Run.Servers[i]
		var pit PIT
		if g := groups[s.SourceServerID]; g != "" {
			if points[g] == nil {
				if pointIDs[g], points[g], err = r.Env.GroupPoint(ctx, g, at); err != nil {
					return "", err
				}
			}
			var ok bool
			if pit, ok = points[g][s.SourceServerID]; !ok {
				return "", fmt.Errorf("group point %s has no PIT of source server %s", pointIDs[g], s.SourceServerID)
			}
			s.GroupPointID = pointIDs[g]
		} else if pit, err = r.Env.ChoosePIT(ctx, s.SourceServerID, at); err != nil {
			return "", err
		}
		t := pit.Time
		s.SnapshotID, s.SnapshotTime = pit.ID, &t
		age := r.Run.StartedAt.Sub(pit.Time)
		s.PITAgeSeconds = seconds(age)
		oldest = max(oldest, age)
	}
	return fmt.Sprintf("%d %s in %d %s, PITs at or before %s (the oldest %s old)", len(r.Run.Servers), api.Plural("server", len(r.Run.Servers)),
		len(r.Plan.Waves), api.Plural("wave", len(r.Plan.Waves)), at.UTC().Format(time.RFC3339), oldest.Round(time.Second)), nil
}

// launch starts the wave's drill or recovery job (or finds the one it started) and
// waits for it: every server must be launched.
func (r *Runner) launch(ctx context.Context, i int) (string, error) {
	st := &r.Run.Steps[i]
	w := r.wave(st.Wave)
	servers := r.servers(st.Wave)
	key := r.key(i, "")
	id, err := r.Env.FindJob(ctx, key)
	if err != nil {
		return "", err
	}
	if id == "" {
		req := api.StartRecoveryRequest{IsDrill: r.Run.Mode == api.PlanDrill, NetworkAccess: r.Plan.Drill.NetworkAccess}
		for _, s := range servers {
			req.SourceServers = append(req.SourceServers, api.RecoveryServer{SourceServerID: s.SourceServerID,
				RecoverySnapshotID: s.SnapshotID, Overrides: w.overrides(s.SourceServerID)})
		}
		if id, err = r.Env.StartLaunch(ctx, key, req); err != nil {
			return "", err
		}
	}
	st.JobIDs = []string{id}
	if err := r.save(ctx); err != nil {
		return "", err
	}
	j, err := r.waitJob(ctx, id)
	if err != nil {
		return "", err
	}
	var failed []string
	for _, js := range j.Servers {
		s := r.server(js.SourceServerID)
		if s == nil {
			continue
		}
		s.JobID, s.RPOSeconds = id, js.RPOSeconds
		if js.LaunchStatus != api.LaunchLaunched {
			s.Error = fmt.Sprintf("not launched (%s at %s): %s", js.LaunchStatus, js.Step, js.Error)
			failed = append(failed, fmt.Sprintf("%s %s", s.SourceServerID, s.Error))
			continue
		}
		ri, err := r.Env.RecoveryInstance(ctx, js.RecoveryInstanceID)
		if err != nil {
			return "", err
		}
		launched := ri.CreatedAt
		s.RecoveryInstID, s.Address, s.PortForwards, s.LaunchedAt = ri.ID, ri.Address, ri.PortForwards, &launched
		s.RTOSeconds = seconds(launched.Sub(r.Run.StartedAt))
	}
	if len(failed) > 0 {
		return "", fmt.Errorf("job %s: %s", id, strings.Join(failed, "; "))
	}
	return fmt.Sprintf("job %s launched %d %s", id, len(servers), api.Plural("server", len(servers))), nil
}

// overrides are the wave's launch overrides of a server (every-server ones first).
func (w *Wave) overrides(server string) *api.LaunchOverrides {
	var o *api.LaunchOverrides
	for _, l := range w.Launch {
		if l.Server != "" && l.Server != server {
			continue
		}
		if o == nil {
			o = &api.LaunchOverrides{}
		}
		if l.CPUs > 0 {
			o.CPUs = l.CPUs
		}
		if l.MemoryMiB > 0 {
			o.MemoryMiB = l.MemoryMiB
		}
		if l.Hostname != "" {
			o.Hostname = l.Hostname
		}
		if l.IP != "" {
			o.IP = l.IP
		}
		for k, v := range l.Tags {
			if o.Tags == nil {
				o.Tags = map[string]string{}
			}
			o.Tags[k] = v
		}
	}
	return o
}

// checkEnv is what a health check's addresses may name for a server: where its
// instance is reached, and the host:port each guest port is forwarded from.
func checkEnv(s *api.PlanRunServer) map[string]string {
	env := map[string]string{"LIFEBOAT_INSTANCE_ADDRESS": s.Address, "LIFEBOAT_SOURCE_SERVER_ID": s.SourceServerID,
		"LIFEBOAT_SOURCE_HOSTNAME": s.Hostname, "LIFEBOAT_RECOVERY_INSTANCE_ID": s.RecoveryInstID}
	for _, p := range s.PortForwards {
		host := p.HostAddr
		if host == "" || host == "0.0.0.0" {
			host = "127.0.0.1"
		}
		env[fmt.Sprintf("LIFEBOAT_PORT_%s_%d", strings.ToUpper(p.Protocol), p.GuestPort)] = net.JoinHostPort(host, strconv.Itoa(p.HostPort))
	}
	return env
}

// check runs the wave's health checks against each of its servers, at once; every
// check of every server must pass.
func (r *Runner) check(ctx context.Context, i int) (string, error) {
	st := &r.Run.Steps[i]
	w := r.wave(st.Wave)
	servers := r.servers(st.Wave)
	if len(w.HealthChecks) == 0 {
		for _, s := range servers {
			s.HealthyAt = s.LaunchedAt
		}
		return "", errSkip{"the wave has no health checks"}
	}
	if !r.Env.MayRunCommands() && w.runsCommands() {
		return "", errors.New("only plans of the system account may run commands")
	}
	st.Checks = nil
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results := r.checkServer(ctx, w, s)
			mu.Lock()
			st.Checks = append(st.Checks, results...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	var failed []string
	for _, c := range st.Checks {
		if !c.Passed {
			failed = append(failed, fmt.Sprintf("%s of %s did not pass after %d %s: %s", c.Check, c.SourceServerID, c.Attempts,
				api.Plural("attempt", c.Attempts), c.Message))
		}
	}
	if len(failed) > 0 {
		return "", errors.New(strings.Join(failed, "; "))
	}
	return fmt.Sprintf("%d %s passed on %d %s", len(w.HealthChecks), api.Plural("check", len(w.HealthChecks)), len(servers),
		api.Plural("server", len(servers))), nil
}

// runsCommands reports whether the wave has command checks.
func (w *Wave) runsCommands() bool {
	for _, c := range w.HealthChecks {
		if c.Command != nil {
			return true
		}
	}
	return false
}

// checkServer runs a wave's checks against one server, in order, and records when it
// passed them all.
func (r *Runner) checkServer(ctx context.Context, w *Wave, s *api.PlanRunServer) []api.PlanCheckResult {
	env := checkEnv(s)
	var out []api.PlanCheckResult
	for _, hc := range w.HealthChecks {
		res := healthcheck.Run(ctx, hc.check(env), nil)
		out = append(out, api.PlanCheckResult{Check: hc.Name, SourceServerID: s.SourceServerID, Passed: res.Passed, Attempts: res.Attempts,
			StartedAt: res.Started, EndedAt: res.Ended, Message: res.Message})
		if !res.Passed {
			return out
		}
	}
	now := r.Env.Now()
	s.HealthyAt, s.RTOSeconds = &now, seconds(now.Sub(r.Run.StartedAt))
	return out
}

// check is the health check with a server's values in its addresses.
func (hc HealthCheck) check(env map[string]string) healthcheck.Check {
	c := healthcheck.Check{Name: hc.Name, Timeout: hc.Timeout.D(5 * time.Second), Interval: hc.Interval.D(5 * time.Second), Attempts: hc.Retries}
	if c.Attempts <= 0 {
		c.Attempts = 60
	}
	switch {
	case hc.HTTP != nil:
		status := hc.HTTP.Status
		if status == 0 {
			status = http.StatusOK
		}
		c.HTTP = &healthcheck.HTTP{URL: healthcheck.Expand(hc.HTTP.URL, env), Status: status, Body: hc.HTTP.Body}
	case hc.TCP != nil:
		c.TCP = &healthcheck.TCP{Address: healthcheck.Expand(hc.TCP.Address, env)}
	case hc.Command != nil:
		cmd := &healthcheck.Command{Run: hc.Command.Run}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		c.Command = cmd
	}
	return c
}

// terminate terminates the instances the run launched (a drill's, after its checks;
// or, from fail, those of a failed run).
func (r *Runner) terminate(ctx context.Context, i int, onFailure bool) (string, error) {
	var ids []string
	for _, s := range r.Run.Servers {
		if s.RecoveryInstID != "" {
			ids = append(ids, s.RecoveryInstID)
		}
	}
	if len(ids) == 0 {
		return "", errSkip{"nothing was launched"}
	}
	key := r.key(i, "")
	if onFailure {
		key = r.Run.ID + "/terminate-on-failure"
	}
	id, err := r.Env.FindJob(ctx, key)
	if err == nil && id == "" {
		id, err = r.Env.Terminate(ctx, key, ids)
	}
	if err != nil {
		return "", err
	}
	if i >= 0 {
		r.Run.Steps[i].JobIDs = []string{id}
	}
	j, err := r.waitJob(ctx, id)
	if err != nil {
		return "", err
	}
	var failed []string
	for _, js := range j.Servers {
		if js.Error != "" {
			failed = append(failed, fmt.Sprintf("%s: %s", js.RecoveryInstanceID, js.Error))
		}
	}
	if len(failed) > 0 {
		return "", fmt.Errorf("job %s could not terminate %s", id, strings.Join(failed, "; "))
	}
	return fmt.Sprintf("job %s terminated %d recovery %s", id, len(ids), api.Plural("instance", len(ids))), nil
}

// isConflict reports whether err is the control plane's 409: not now, try later.
func isConflict(err error) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Status == http.StatusConflict
}

// SelectAll resolves the plan's selectors (as a run's first step does) and counts the
// servers: a plan is refused at apply when it would fail there.
func (r *Runner) SelectAll(ctx context.Context) (int, error) {
	if _, err := r.selectWaves(ctx); err != nil {
		return 0, err
	}
	return len(r.Run.Servers), nil
}
