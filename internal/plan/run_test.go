package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// fakeEnv is a control plane in memory: servers with PITs, jobs that complete when
// told, DNS records and backend servers.
type fakeEnv struct {
	mu       sync.Mutex
	now      time.Time
	servers  map[string][]Server // selector key → servers
	jobs     map[string]*api.Job
	keys     map[string]string // job key → id
	launched []string          // the servers of each launch, in order: "wave:s-1,s-2"
	hold     bool              // jobs stay STARTED
	ris      map[string]api.RecoveryInstance
	records  map[string]RecordSet // "name type" → set
	backends map[string]BackendServer
	saved    []api.PlanRun
	dnsErr   error
	last     map[string]*api.PlanRun
	port     int // the host port every launched instance's guest port 80 is forwarded from
	secrets  map[string]string
	started  int // launches started
}

func newFakeEnv(port int) *fakeEnv {
	return &fakeEnv{now: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC), servers: map[string][]Server{}, jobs: map[string]*api.Job{},
		keys: map[string]string{}, ris: map[string]api.RecoveryInstance{}, records: map[string]RecordSet{}, backends: map[string]BackendServer{},
		last: map[string]*api.PlanRun{}, port: port, secrets: map[string]string{"tsig": "c2VjcmV0", "hook": "k"}}
}

func selKey(s Selector) string {
	switch {
	case s.ID != "":
		return s.ID
	case s.Group != "":
		return "group:" + s.Group
	}
	var kv []string
	for k, v := range s.Tags {
		kv = append(kv, k+"="+v)
	}
	return "tags:" + strings.Join(kv, ",")
}

func (e *fakeEnv) SelectServers(_ context.Context, sel Selector) ([]Server, string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if sel.ID != "" {
		if s, ok := e.servers[sel.ID]; ok {
			return s, "", nil
		}
		return nil, "", &api.Error{Status: 404, Message: "source server " + sel.ID + " was not found"}
	}
	group := ""
	if sel.Group != "" {
		group = "cg-" + sel.Group
	}
	return e.servers[selKey(sel)], group, nil
}

func (e *fakeEnv) ChoosePIT(_ context.Context, id string, at time.Time) (PIT, error) {
	return PIT{ID: "pit-" + id, Time: at.Add(-3 * time.Second)}, nil
}

func (e *fakeEnv) GroupPoint(_ context.Context, g string, at time.Time) (string, map[string]PIT, error) {
	out := map[string]PIT{}
	for _, s := range e.servers["group:"+strings.TrimPrefix(g, "cg-")] {
		out[s.ID] = PIT{ID: "gpit-member-" + s.ID, Time: at.Add(-time.Second)}
	}
	return "gpit-1", out, nil
}

func (e *fakeEnv) Capacity(context.Context, int) error { return nil }

func (e *fakeEnv) FindJob(_ context.Context, key string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.keys[key], nil
}

func (e *fakeEnv) Job(_ context.Context, id string) (api.Job, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	j := e.jobs[id]
	if !e.hold {
		j.Status = api.JobCompleted
	}
	return *j, nil
}

func (e *fakeEnv) StartLaunch(_ context.Context, key string, req api.StartRecoveryRequest) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started++
	id := fmt.Sprintf("drsjob-%d", len(e.jobs)+1)
	j := &api.Job{ID: id, Status: api.JobStarted, IsDrill: req.IsDrill}
	var ids []string
	for _, s := range req.SourceServers {
		ri := api.RecoveryInstance{ID: "i-" + s.SourceServerID, SourceServerID: s.SourceServerID, IsDrill: req.IsDrill, Address: "10.0.0.1",
			PortForwards: []api.PortForward{{Protocol: "tcp", HostAddr: "127.0.0.1", HostPort: e.port, GuestPort: 80}}, CreatedAt: e.now}
		e.ris[ri.ID] = ri
		rpo := 1.5
		j.Servers = append(j.Servers, api.JobServer{SourceServerID: s.SourceServerID, RecoveryInstanceID: ri.ID, SnapshotID: s.RecoverySnapshotID,
			LaunchStatus: api.LaunchLaunched, RPOSeconds: &rpo})
		ids = append(ids, s.SourceServerID)
	}
	e.jobs[id], e.keys[key] = j, id
	e.launched = append(e.launched, strings.Join(ids, ","))
	return id, nil
}

func (e *fakeEnv) Terminate(_ context.Context, key string, ids []string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := fmt.Sprintf("drsjob-%d", len(e.jobs)+1)
	e.jobs[id], e.keys[key] = &api.Job{ID: id, Status: api.JobStarted}, id
	for _, ri := range ids {
		delete(e.ris, ri)
	}
	return id, nil
}

func (e *fakeEnv) RecoveryInstance(_ context.Context, id string) (api.RecoveryInstance, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ri, ok := e.ris[id]
	if !ok {
		return ri, errors.New("not found")
	}
	return ri, nil
}

func (e *fakeEnv) ActiveRecovery(_ context.Context, server string) (api.RecoveryInstance, error) {
	return e.RecoveryInstance(context.Background(), "i-"+server)
}

func (e *fakeEnv) Instance(_ context.Context, n string) (api.Instance, error) {
	return api.Instance{ID: "inst-" + n, Name: n}, nil
}

func (e *fakeEnv) StartReverse(_ context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	ri := e.ris[id]
	ri.FailbackState = api.FailbackReadyForLaunch
	e.ris[id] = ri
	return nil
}

func (e *fakeEnv) StartFailback(_ context.Context, key, id, into string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	jid := fmt.Sprintf("drsjob-%d", len(e.jobs)+1)
	e.jobs[jid], e.keys[key] = &api.Job{ID: jid, Status: api.JobStarted, Servers: []api.JobServer{{LaunchStatus: api.LaunchLaunched}}}, jid
	return jid, nil
}

func (e *fakeEnv) CompleteFailback(_ context.Context, key, id string) (string, error) {
	return e.Terminate(context.Background(), key, []string{id})
}

func (e *fakeEnv) Launched(context.Context, string, string) (string, []api.PortForward, error) {
	return "127.0.0.1", []api.PortForward{{Protocol: "tcp", HostPort: e.port, GuestPort: 80}}, nil
}

func (e *fakeEnv) Secret(_ context.Context, name string) ([]byte, error) {
	if v, ok := e.secrets[name]; ok {
		return []byte(v), nil
	}
	return nil, errors.New("no such secret")
}

func (e *fakeEnv) MayRunCommands() bool { return true }

func (e *fakeEnv) LastRun(_ context.Context, mode string) (*api.PlanRun, error) {
	return e.last[mode], nil
}

func (e *fakeEnv) Save(_ context.Context, r *api.PlanRun) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	b, _ := json.Marshal(r)
	var c api.PlanRun
	_ = json.Unmarshal(b, &c)
	e.saved = append(e.saved, c)
	return nil
}

func (e *fakeEnv) DNS(string, DNSKey) DNSClient        { return fakeDNS{e} }
func (e *fakeEnv) HAProxy(string, string) LoadBalancer { return fakeLB{e} }
func (e *fakeEnv) Now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(time.Second)
	return e.now
}
func (e *fakeEnv) lastSaved() api.PlanRun {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.saved[len(e.saved)-1]
}
func (e *fakeEnv) record(name string) RecordSet {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.records[name]
}
func (e *fakeEnv) backend(name string) BackendServer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.backends[name]
}
func (e *fakeEnv) setRecord(name string, s RecordSet) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.records[name] = s
}
func (e *fakeEnv) setBackend(name string, b BackendServer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.backends[name] = b
}

type fakeDNS struct{ e *fakeEnv }

func (d fakeDNS) Lookup(_ context.Context, name, typ string) (RecordSet, error) {
	if d.e.dnsErr != nil {
		return RecordSet{}, d.e.dnsErr
	}
	return d.e.record(name + " " + typ), nil
}

func (d fakeDNS) Replace(_ context.Context, _ string, s RecordSet) error {
	if d.e.dnsErr != nil {
		return d.e.dnsErr
	}
	d.e.setRecord(s.Name+" "+s.Type, s)
	return nil
}

func (d fakeDNS) Check(context.Context, string) error { return d.e.dnsErr }

type fakeLB struct{ e *fakeEnv }

func (l fakeLB) Ping(context.Context) error { return nil }
func (l fakeLB) Server(_ context.Context, b, n string) (BackendServer, error) {
	s, ok := l.e.backends[b+"/"+n]
	if !ok {
		return s, fmt.Errorf("no server %s/%s", b, n)
	}
	return s, nil
}
func (l fakeLB) SetAddr(_ context.Context, b, n, addr string, port int) error {
	s := l.e.backend(b + "/" + n)
	s.Addr, s.Port = addr, port
	l.e.setBackend(b+"/"+n, s)
	return nil
}
func (l fakeLB) SetState(_ context.Context, b, n, state string) error {
	s := l.e.backend(b + "/" + n)
	s.State = state
	l.e.setBackend(b+"/"+n, s)
	return nil
}

// labPlan is two waves: the database, then two web servers (by tag) whose page is
// checked, the DNS name and the load balancer switched.
func labPlan(url string) *Plan {
	check := HealthCheck{Name: "page", HTTP: &HTTPCheck{URL: url, Body: "web"}, Interval: Duration(10 * time.Millisecond), Retries: 3}
	return &Plan{Name: "lab", Waves: []Wave{
		{Name: "db", Servers: []Selector{{ID: "s-db"}}},
		{Name: "web", After: []string{"db"}, Servers: []Selector{{Tags: map[string]string{"role": "web"}}}, HealthChecks: []HealthCheck{check},
			Steps: []Step{
				{Name: "dns", DNS: &DNSStep{Server: "10.1.1.1", Zone: "lab.test.", Key: TSIGKey{Name: "k", Secret: "tsig"},
					Records: []DNSRecord{{Name: "www", TTL: 30, Values: []string{"127.0.0.2"}}}}},
				{Name: "lb", HAProxy: &HAProxyStep{Socket: "/run/haproxy.sock", Backend: "dr", Servers: []HAProxyServer{{Name: "web1", Instance: "s-web1"}}}},
			}},
	}}
}

// webServer answers "web" once asked more than failFirst times.
func webServer(t *testing.T, failFirst int) (*httptest.Server, int) {
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		n++
		ok := n > failFirst
		mu.Unlock()
		if !ok {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "web page")
	}))
	t.Cleanup(srv.Close)
	_, p, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	port, _ := strconv.Atoi(p)
	return srv, port
}

func labEnv(port int) *fakeEnv {
	e := newFakeEnv(port)
	e.servers["s-db"] = []Server{{ID: "s-db", Hostname: "db"}}
	e.servers["s-web1"] = []Server{{ID: "s-web1", Hostname: "web1"}}
	e.servers["tags:role=web"] = []Server{{ID: "s-web1", Hostname: "web1"}, {ID: "s-web2", Hostname: "web2"}}
	e.records["www.lab.test. A"] = RecordSet{Name: "www.lab.test.", Type: "A", TTL: 300, Values: []string{"127.0.0.1"}}
	e.backends["dr/web1"] = BackendServer{Addr: "127.0.0.9", Port: 9, State: "maint"}
	return e
}

func newTestRun(t *testing.T, p *Plan, e *fakeEnv, mode string) *Runner {
	t.Helper()
	run, err := NewRun(p, 1, mode, nil, false, "prun-1", "test", e.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &Runner{Env: e, Plan: p, Run: run, Poll: time.Millisecond}
}

func TestFailoverRunsWavesInOrderAndSwitches(t *testing.T) {
	_, port := webServer(t, 2)
	e := labEnv(port)
	r := newTestRun(t, labPlan("http://${LIFEBOAT_PORT_TCP_80}/"), e, api.PlanFailover)
	if err := r.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	run := e.lastSaved()
	if run.State != api.PlanRunSucceeded {
		t.Fatalf("run %s: %s\n%s", run.State, run.Reason, Markdown(&run))
	}
	if want := []string{"s-db", "s-web1,s-web2"}; fmt.Sprint(e.launched) != fmt.Sprint(want) {
		t.Fatalf("launches %v, want the database before the web servers %v", e.launched, want)
	}
	if got := e.record("www.lab.test. A"); got.TTL != 30 || fmt.Sprint(got.Values) != "[127.0.0.2]" {
		t.Fatalf("www after failover: %+v", got)
	}
	if got := e.backend("dr/web1"); got.Port != port || got.State != "ready" {
		t.Fatalf("dr/web1 after failover: %+v (want port %d ready)", got, port)
	}
	if run.RTOSeconds == nil || run.MaxRPOSeconds == nil || *run.MaxRPOSeconds != 1.5 {
		t.Fatalf("RTO %v, RPO %v", run.RTOSeconds, run.MaxRPOSeconds)
	}
	for _, s := range run.Steps {
		if s.StartedAt == nil || s.EndedAt == nil || (s.State != api.PlanStepDone && s.State != api.PlanStepSkipped) {
			t.Fatalf("step %+v has no timing or did not end", s)
		}
	}
	checks := run.Steps[4].Checks
	if len(checks) != 2 || !checks[0].Passed || checks[0].Attempts+checks[1].Attempts != 4 {
		t.Fatalf("checks of wave web: %+v (the page answers from the third request)", checks)
	}
	if saved := run.Steps[5].Saved["www.lab.test. A"]; !strings.Contains(saved, "127.0.0.1") {
		t.Fatalf("the DNS step saved %q, want the production value", saved)
	}
	md := Markdown(&run)
	for _, want := range []string{"RTO:", "| page | s-web1 |", "step dns (wave web)", "s-web2 (web2)"} {
		if !strings.Contains(md, want) {
			t.Fatalf("the report lacks %q:\n%s", want, md)
		}
	}
	if _, err := HTML(&run); err != nil {
		t.Fatal(err)
	}
}

func TestHealthCheckThatNeverPassesStopsAtItsWave(t *testing.T) {
	_, port := webServer(t, 1000)
	e := labEnv(port)
	p := labPlan("http://${LIFEBOAT_PORT_TCP_80}/")
	p.Waves = append(p.Waves, Wave{Name: "after", Servers: []Selector{{ID: "s-late"}}})
	e.servers["s-late"] = []Server{{ID: "s-late"}}
	r := newTestRun(t, p, e, api.PlanFailover)
	if err := r.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	run := e.lastSaved()
	if run.State != api.PlanRunFailed || !strings.Contains(run.Reason, "check of wave web failed") ||
		!strings.Contains(run.Reason, "keeps running") {
		t.Fatalf("run %s: %q", run.State, run.Reason)
	}
	if len(e.launched) != 2 || len(e.ris) != 3 {
		t.Fatalf("launched %v, instances %d: the wave after must not start, and what launched stays", e.launched, len(e.ris))
	}
	if got := e.record("www.lab.test. A"); fmt.Sprint(got.Values) != "[127.0.0.1]" {
		t.Fatalf("DNS changed although the checks failed: %+v", got)
	}
	// With onFailure: terminate, what launched is terminated.
	e2 := labEnv(port)
	e2.servers["s-late"] = []Server{{ID: "s-late"}}
	p.OnFailure = OnFailureTerminate
	r2 := newTestRun(t, p, e2, api.PlanFailover)
	if err := r2.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	if run := e2.lastSaved(); run.State != api.PlanRunFailed || len(e2.ris) != 0 || !strings.Contains(run.Reason, "terminated 3") {
		t.Fatalf("onFailure terminate: %s %q, %d instances left", run.State, run.Reason, len(e2.ris))
	}
}

func TestRunResumesAtItsStepWithoutRelaunching(t *testing.T) {
	_, port := webServer(t, 0)
	e := labEnv(port)
	e.hold = true // jobs do not complete: the "control plane" stops during the launch
	p := labPlan("http://${LIFEBOAT_PORT_TCP_80}/")
	r := newTestRun(t, p, e, api.PlanFailover)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Execute(ctx) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		e.mu.Lock()
		n := e.started
		e.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first launch did not start")
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run returned %v", err)
	}
	saved := e.lastSaved()
	if saved.State != api.PlanRunRunning || saved.Steps[1].State != api.PlanStepRunning || len(saved.Steps[1].JobIDs) != 1 {
		t.Fatalf("saved after the interruption: %s, step %+v", saved.State, saved.Steps[1])
	}
	e.hold = false
	r2 := &Runner{Env: e, Plan: p, Run: &saved, Poll: time.Millisecond}
	if err := r2.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	if run := e.lastSaved(); run.State != api.PlanRunSucceeded || e.started != 2 {
		t.Fatalf("resumed run %s (%s) started %d launches, want 2 (the first found again, not restarted)", run.State, run.Reason, e.started)
	}
}

func TestDrillTouchesNoProductionRecordOrBackend(t *testing.T) {
	_, port := webServer(t, 0)
	e := labEnv(port)
	p := labPlan("http://${LIFEBOAT_PORT_TCP_80}/")
	p.Drill.Terminate = true
	r := newTestRun(t, p, e, api.PlanDrill)
	if err := r.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	run := e.lastSaved()
	if run.State != api.PlanRunSucceeded {
		t.Fatalf("drill %s: %s", run.State, run.Reason)
	}
	if got := e.record("www.lab.test. A"); fmt.Sprint(got.Values) != "[127.0.0.1]" || got.TTL != 300 {
		t.Fatalf("a drill changed the production record: %+v", got)
	}
	if got := e.backend("dr/web1"); got.State != "maint" || got.Port != 9 {
		t.Fatalf("a drill changed the backend: %+v", got)
	}
	if len(e.ris) != 0 || run.Steps[len(run.Steps)-1].Kind != api.PlanStepTerminate {
		t.Fatalf("the drill left %d instances; last step %+v", len(e.ris), run.Steps[len(run.Steps)-1])
	}
	// With drill records, a drill sets those, in the drill zone.
	p.Waves[1].Steps[0].DNS.Drill = &DNSDrill{Zone: "drill.lab.test.", Records: []DNSRecord{{Name: "www", Values: []string{"10.9.9.9"}}}}
	e2 := labEnv(port)
	if err := newTestRun(t, p, e2, api.PlanDrill).Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e2.record("www.drill.lab.test. A"); fmt.Sprint(got.Values) != "[10.9.9.9]" {
		t.Fatalf("drill record: %+v", got)
	}
}

func TestFailbackPutsBackWhatTheFailoverFound(t *testing.T) {
	_, port := webServer(t, 0)
	e := labEnv(port)
	p := labPlan("http://${LIFEBOAT_PORT_TCP_80}/")
	if err := newTestRun(t, p, e, api.PlanFailover).Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	failover := e.lastSaved()
	e.last[api.PlanFailover] = &failover
	r := newTestRun(t, p, e, api.PlanFailback)
	if err := r.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	run := e.lastSaved()
	if run.State != api.PlanRunSucceeded {
		t.Fatalf("failback %s: %s\n%s", run.State, run.Reason, Markdown(&run))
	}
	if got := e.record("www.lab.test. A"); fmt.Sprint(got.Values) != "[127.0.0.1]" {
		t.Fatalf("www after failback: %+v, want the production value back", got)
	}
	if got := e.backend("dr/web1"); got.Addr != "127.0.0.9" || got.Port != 9 || got.State != "maint" {
		t.Fatalf("dr/web1 after failback: %+v, want it as it was", got)
	}
	if len(e.ris) != 0 {
		t.Fatalf("failback complete left %d recovery instances", len(e.ris))
	}
}

func TestSelectorMatchingNothingFailsTheRun(t *testing.T) {
	e := labEnv(1)
	delete(e.servers, "tags:role=web")
	r := newTestRun(t, labPlan("http://x/"), e, api.PlanFailover)
	if err := r.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	if run := e.lastSaved(); run.State != api.PlanRunFailed || !strings.Contains(run.Reason, "role=web matches no source server") || len(e.launched) != 0 {
		t.Fatalf("run %s %q, launched %v", run.State, run.Reason, e.launched)
	}
}

func TestDryRunChecksAndChangesNothing(t *testing.T) {
	e := labEnv(1)
	e.dnsErr = errors.New("the DNS server 10.1.1.1:53 refused the TSIG key k")
	r := newTestRun(t, labPlan("http://x/"), e, api.PlanFailover)
	r.DryRun(context.Background())
	run := *r.Run
	if run.State != api.PlanRunFailed || !strings.Contains(run.Reason, "refused the TSIG key") {
		t.Fatalf("dry run %s: %q", run.State, run.Reason)
	}
	if len(e.launched) != 0 || len(e.saved) != 0 || e.record("www.lab.test. A").TTL != 300 {
		t.Fatalf("a dry run changed something: launched %v, saved %d", e.launched, len(e.saved))
	}
	if !strings.Contains(run.Steps[1].Message, "would recover s-db (db) from pit-s-db") {
		t.Fatalf("dry run step: %q", run.Steps[1].Message)
	}
	e.dnsErr = nil
	r = newTestRun(t, labPlan("http://x/"), e, api.PlanFailover)
	r.DryRun(context.Background())
	if r.Run.State != api.PlanRunSucceeded {
		t.Fatalf("dry run with everything in place: %s %q", r.Run.State, r.Run.Reason)
	}
}

func TestDNSRefusalFailsTheRunAtItsStep(t *testing.T) {
	_, port := webServer(t, 0)
	e := labEnv(port)
	e.dnsErr = errors.New("the DNS server 10.1.1.1:53 refused the TSIG key k: check the key name, algorithm and secret")
	r := newTestRun(t, labPlan("http://${LIFEBOAT_PORT_TCP_80}/"), e, api.PlanFailover)
	if err := r.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	run := e.lastSaved()
	if run.State != api.PlanRunFailed || !strings.Contains(run.Reason, "step dns of wave web failed: the DNS server 10.1.1.1:53 refused the TSIG key") {
		t.Fatalf("run %s: %q", run.State, run.Reason)
	}
	if got := run.Steps[len(run.Steps)-1]; got.Kind != api.PlanStepAction || got.Name != "lb" || got.State != api.PlanStepPending {
		t.Fatalf("the step after the failed one: %+v, want it not run", got)
	}
	if got := e.backend("dr/web1"); got.State != "maint" {
		t.Fatalf("the load balancer was switched after the DNS step failed: %+v", got)
	}
}

func TestOnePointInTimeAndGroupPoints(t *testing.T) {
	e := labEnv(1)
	e.servers["group:db"] = []Server{{ID: "s-db1"}, {ID: "s-db2"}}
	p := &Plan{Name: "g", Waves: []Wave{{Name: "db", Servers: []Selector{{Group: "db"}}}, {Name: "web", Servers: []Selector{{ID: "s-web1"}}}}}
	at := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	run, err := NewRun(p, 1, api.PlanFailover, &at, false, "prun-2", "test", e.Now())
	if err != nil {
		t.Fatal(err)
	}
	r := &Runner{Env: e, Plan: p, Run: run, Poll: time.Millisecond}
	if err := r.Execute(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := e.lastSaved()
	if got.State != api.PlanRunSucceeded || len(got.Servers) != 3 {
		t.Fatalf("run %s (%s), servers %+v", got.State, got.Reason, got.Servers)
	}
	for _, s := range got.Servers {
		switch s.SourceServerID {
		case "s-db1", "s-db2":
			if s.GroupPointID != "gpit-1" || s.SnapshotID != "gpit-member-"+s.SourceServerID || !s.SnapshotTime.Equal(at.Add(-time.Second)) {
				t.Fatalf("group member %+v: want the group point's PIT at or before --at", s)
			}
		default:
			if s.GroupPointID != "" || !s.SnapshotTime.Equal(at.Add(-3*time.Second)) {
				t.Fatalf("server %+v: want its own PIT at or before --at", s)
			}
		}
	}
}
