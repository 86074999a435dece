package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/healthcheck"
	"github.com/lifeboat-dr/lifeboat/internal/webhook"
)

// action runs one of a wave's steps.
func (r *Runner) action(ctx context.Context, i int) (string, error) {
	st := &r.Run.Steps[i]
	step := r.wave(st.Wave).step(st.Name)
	if step == nil {
		return "", fmt.Errorf("the plan (version %d) has no step %s in wave %s", r.Run.PlanVersion, st.Name, st.Wave)
	}
	switch {
	case step.DNS != nil:
		return r.dns(ctx, i, step.DNS)
	case step.HAProxy != nil:
		return r.haproxy(ctx, i, step.HAProxy)
	case step.Webhook != nil:
		return r.webhook(ctx, st, step.Webhook)
	case step.Script != nil:
		return r.script(ctx, st, step.Script)
	}
	return "", errors.New("the step has no action")
}

// step returns the wave's step of that name.
func (w *Wave) step(name string) *Step {
	for i := range w.Steps {
		if w.Steps[i].Name == name {
			return &w.Steps[i]
		}
	}
	return nil
}

// savedRecord is a record set as a step found it, kept in the step's Saved.
type savedRecord struct {
	TTL    uint32   `json:"ttl"`
	Values []string `json:"values"`
}

// previous is what the newest successful failover saved in the same step under key:
// what a failback puts back when the plan does not say.
func (r *Runner) previous(ctx context.Context, st *api.PlanRunStep, key string) (string, bool, error) {
	last, err := r.Env.LastRun(ctx, api.PlanFailover)
	if err != nil || last == nil {
		return "", false, err
	}
	for _, s := range last.Steps {
		if s.Kind == api.PlanStepAction && s.Wave == st.Wave && s.Name == st.Name {
			v, ok := s.Saved[key]
			return v, ok, nil
		}
	}
	return "", false, nil
}

// dns sets the step's records: on failover (or a drill: the drill records, in the drill
// zone) to their new values, after saving what they were; on failback back to what
// the plan says or what the failover found.
func (r *Runner) dns(ctx context.Context, i int, d *DNSStep) (string, error) {
	st := &r.Run.Steps[i]
	zone, records := d.Zone, d.Records
	if r.Run.Mode == api.PlanDrill {
		if d.Drill == nil {
			return "", errSkip{"drills change no DNS record: the step has no drill records"}
		}
		zone, records = d.Drill.Zone, d.Drill.Records
	}
	client, err := r.dnsClient(ctx, d)
	if err != nil {
		return "", err
	}
	if st.Saved == nil {
		st.Saved = map[string]string{}
	}
	var done []string
	for _, rec := range records {
		set := RecordSet{Name: fqdnIn(rec.Name, zone), Type: recordType(rec), TTL: uint32(rec.TTL)}
		if rec.TTL == 0 {
			set.TTL = 60
		}
		key := set.Name + " " + set.Type
		if set.Values, err = r.recordValues(ctx, st, rec, key); err != nil {
			return "", err
		}
		was, err := r.saveRecord(ctx, st, client, set, key)
		if err != nil {
			return "", err
		}
		if err := client.Replace(ctx, zone, set); err != nil {
			return "", err
		}
		done = append(done, fmt.Sprintf("%s %s → %s (TTL %d s; was %s)", set.Name, set.Type, strings.Join(set.Values, ","), set.TTL, was))
	}
	return strings.Join(done, "; "), nil
}

// dnsClient is the step's DNS server with its key.
func (r *Runner) dnsClient(ctx context.Context, d *DNSStep) (DNSClient, error) {
	secret, err := r.Env.Secret(ctx, d.Key.Secret)
	if err != nil {
		return nil, fmt.Errorf("the TSIG key's secret %s: %w", d.Key.Secret, err)
	}
	alg := d.Key.Algorithm
	if alg == "" {
		alg = "hmac-sha256"
	}
	return r.Env.DNS(dnsServer(d.Server), DNSKey{Name: d.Key.Name, Algorithm: alg, Secret: strings.TrimSpace(string(secret))}), nil
}

// dnsServer is host:port, port 53 when absent.
func dnsServer(s string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	return net.JoinHostPort(strings.Trim(s, "[]"), "53")
}

// recordValues are a record's values in this run's mode.
func (r *Runner) recordValues(ctx context.Context, st *api.PlanRunStep, rec DNSRecord, key string) ([]string, error) {
	if r.Run.Mode == api.PlanFailback {
		if len(rec.Failback) > 0 {
			return rec.Failback, nil
		}
		prev, ok, err := r.previous(ctx, st, key)
		if err != nil {
			return nil, err
		}
		var saved savedRecord
		if !ok || json.Unmarshal([]byte(prev), &saved) != nil || len(saved.Values) == 0 {
			return nil, fmt.Errorf("%s: no value to put back: the plan gives no failback values and no failover of it recorded the record", key)
		}
		return saved.Values, nil
	}
	if rec.Instance == "" {
		return rec.Values, nil
	}
	s := r.server(rec.Instance)
	if s == nil || s.Address == "" {
		return nil, fmt.Errorf("%s names the instance of %s, which has no address in this run", key, rec.Instance)
	}
	return []string{s.Address}, nil
}

// saveRecord keeps what a record set was before the step first changed it (a resumed
// step keeps the first) and says it.
func (r *Runner) saveRecord(ctx context.Context, st *api.PlanRunStep, client DNSClient, set RecordSet, key string) (string, error) {
	if v, ok := st.Saved[key]; ok {
		return describeSaved(v), nil
	}
	cur, err := client.Lookup(ctx, set.Name, set.Type)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(savedRecord{TTL: cur.TTL, Values: cur.Values})
	st.Saved[key] = string(b)
	if err := r.save(ctx); err != nil {
		return "", err
	}
	if len(cur.Values) > 0 && cur.TTL > 0 {
		until := r.Env.Now().Add(time.Duration(cur.TTL) * time.Second)
		return describeSaved(st.Saved[key]) + fmt.Sprintf(": resolvers may answer the old value until %s", until.UTC().Format(time.TimeOnly)), nil
	}
	return describeSaved(st.Saved[key]), nil
}

func describeSaved(v string) string {
	var s savedRecord
	if json.Unmarshal([]byte(v), &s) != nil || len(s.Values) == 0 {
		return "absent"
	}
	return fmt.Sprintf("%s, TTL %d s", strings.Join(s.Values, ","), s.TTL)
}

// fqdnIn is name made absolute within zone (a name with a trailing dot already is).
func fqdnIn(name, zone string) string {
	zone = strings.TrimSuffix(zone, ".") + "."
	switch {
	case strings.HasSuffix(name, "."):
		return name
	case name == "@" || name == "":
		return zone
	case strings.HasSuffix(name+".", "."+zone) || name+"." == zone:
		return name + "."
	}
	return name + "." + zone
}

// recordType is the record's type, A by default.
func recordType(rec DNSRecord) string {
	if rec.Type == "" {
		return "A"
	}
	return strings.ToUpper(rec.Type)
}

// haproxy points the step's backend servers at the recovered instances (a drill: only
// with a drill backend), saving where they pointed; a failback points them back.
func (r *Runner) haproxy(ctx context.Context, i int, h *HAProxyStep) (string, error) {
	st := &r.Run.Steps[i]
	backend := h.Backend
	if r.Run.Mode == api.PlanDrill {
		if h.DrillBackend == "" {
			return "", errSkip{"drills leave the load balancer alone: the step has no drill backend"}
		}
		backend = h.DrillBackend
	}
	lb := r.lb(h)
	if st.Saved == nil {
		st.Saved = map[string]string{}
	}
	var done []string
	for _, srv := range h.Servers {
		addr, port, state, err := r.backendTarget(ctx, st, srv)
		if err != nil {
			return "", err
		}
		key := backend + "/" + srv.Name
		if _, ok := st.Saved[key]; !ok {
			cur, err := lb.Server(ctx, backend, srv.Name)
			if err != nil {
				return "", err
			}
			st.Saved[key] = fmt.Sprintf("%s %s", net.JoinHostPort(cur.Addr, strconv.Itoa(cur.Port)), cur.State)
			if err := r.save(ctx); err != nil {
				return "", err
			}
		}
		if err := lb.SetAddr(ctx, backend, srv.Name, addr, port); err != nil {
			return "", err
		}
		if err := lb.SetState(ctx, backend, srv.Name, state); err != nil {
			return "", err
		}
		done = append(done, fmt.Sprintf("%s → %s %s (was %s)", key, net.JoinHostPort(addr, strconv.Itoa(port)), state, st.Saved[key]))
	}
	return strings.Join(done, "; "), nil
}

// lb is the step's load balancer.
func (r *Runner) lb(h *HAProxyStep) LoadBalancer {
	if h.Socket != "" {
		return r.Env.HAProxy("unix", h.Socket)
	}
	return r.Env.HAProxy("tcp", h.Address)
}

// backendTarget is where a backend server points in this run's mode, and its state.
func (r *Runner) backendTarget(ctx context.Context, st *api.PlanRunStep, srv HAProxyServer) (string, int, string, error) {
	if r.Run.Mode == api.PlanFailback {
		target, state := srv.Failback, "ready"
		if target == "" {
			prev, ok, err := r.previous(ctx, st, r.lbKey(st, srv))
			if err != nil {
				return "", 0, "", err
			}
			if !ok {
				return "", 0, "", fmt.Errorf("server %s: nowhere to point it back: the plan gives no failback address and no failover of it recorded one", srv.Name)
			}
			target, state, _ = strings.Cut(prev, " ")
		}
		host, p, err := net.SplitHostPort(target)
		port, _ := strconv.Atoi(p)
		if err != nil || port <= 0 {
			return "", 0, "", fmt.Errorf("server %s: failback address %q is not host:port", srv.Name, target)
		}
		return host, port, state, nil
	}
	s := r.server(srv.Instance)
	if s == nil || s.RecoveryInstID == "" {
		return "", 0, "", fmt.Errorf("server %s names the instance of %s, which this run did not launch", srv.Name, srv.Instance)
	}
	guest := srv.Port
	if guest == 0 {
		guest = 80
	}
	if hp, ok := checkEnv(s)[fmt.Sprintf("LIFEBOAT_PORT_TCP_%d", guest)]; ok {
		host, p, _ := net.SplitHostPort(hp)
		port, _ := strconv.Atoi(p)
		return host, port, "ready", nil
	}
	if s.Address == "" {
		return "", 0, "", fmt.Errorf("server %s: recovery instance %s has no address", srv.Name, s.RecoveryInstID)
	}
	return s.Address, guest, "ready", nil
}

// lbKey is the Saved key of a backend server in the failover the failback undoes.
func (r *Runner) lbKey(st *api.PlanRunStep, srv HAProxyServer) string {
	step := r.wave(st.Wave).step(st.Name)
	return step.HAProxy.Backend + "/" + srv.Name
}

// webhookEvent is what a webhook step posts.
type webhookEvent struct {
	Type    string              `json:"type"` // plan.step
	Plan    string              `json:"plan"`
	RunID   string              `json:"runId"`
	Mode    string              `json:"mode"`
	Wave    string              `json:"wave"`
	Step    string              `json:"step"`
	Time    time.Time           `json:"time"`
	Servers []api.PlanRunServer `json:"servers"`
}

// webhook posts the run's progress, signed.
func (r *Runner) webhook(ctx context.Context, st *api.PlanRunStep, w *WebhookStep) (string, error) {
	secret, err := r.Env.Secret(ctx, w.Secret)
	if err != nil {
		return "", fmt.Errorf("the webhook's secret %s: %w", w.Secret, err)
	}
	cfg := webhook.Config{URL: w.URL, Secret: secret, Timeout: w.Timeout.D(10 * time.Second)}
	if w.CA != "" {
		if cfg.CAPEM, err = r.Env.Secret(ctx, w.CA); err != nil {
			return "", fmt.Errorf("the webhook's CA %s: %w", w.CA, err)
		}
	}
	ev := webhookEvent{Type: "plan.step", Plan: r.Run.Plan, RunID: r.Run.ID, Mode: r.Run.Mode, Wave: st.Wave, Step: st.Name,
		Time: r.Env.Now(), Servers: r.Run.Servers}
	resp, err := webhook.Post(ctx, cfg, ev)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("the webhook at %s answered %s", webhookHost(w.URL), resp.Status), nil
}

// webhookHost names a webhook by its host only: its URL may carry a secret.
func webhookHost(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Host
	}
	return "its URL"
}

// script runs the step's command on the control plane's host (system account only).
func (r *Runner) script(ctx context.Context, st *api.PlanRunStep, s *ScriptStep) (string, error) {
	if !r.Env.MayRunCommands() {
		return "", errors.New("only plans of the system account may run scripts")
	}
	env := []string{"LIFEBOAT_PLAN=" + r.Run.Plan, "LIFEBOAT_RUN_ID=" + r.Run.ID, "LIFEBOAT_MODE=" + r.Run.Mode, "LIFEBOAT_WAVE=" + st.Wave}
	for _, sv := range r.servers(st.Wave) {
		env = append(env, fmt.Sprintf("LIFEBOAT_ADDRESS_%s=%s", strings.ReplaceAll(sv.SourceServerID, "-", "_"), sv.Address))
	}
	res := healthcheck.Run(ctx, healthcheck.Check{Name: st.Name, Command: &healthcheck.Command{Run: s.Run, Env: env},
		Timeout: s.Timeout.D(time.Minute), Attempts: 1}, nil)
	if !res.Passed {
		return "", fmt.Errorf("the script failed: %s", res.Message)
	}
	return "the script succeeded: " + res.Message, nil
}
