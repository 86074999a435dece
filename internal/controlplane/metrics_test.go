package controlplane_test

import (
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// series is a scrape: metric name → label set (sorted k=v,…) → value. Histograms give
// their count and sum as NAME_count and NAME_sum.
type series map[string]map[string]float64

// get returns the value of name with exactly the given labels (k=v pairs), and whether
// it is there.
func (s series) get(name string, labels ...string) (float64, bool) {
	sort.Strings(labels)
	v, ok := s[name][strings.Join(labels, ",")]
	return v, ok
}

// with returns the values of name whose labels include every one given.
func (s series) with(name string, labels ...string) []float64 {
	var out []float64
	for ls, v := range s[name] {
		all := true
		for _, l := range labels {
			if !strings.Contains(","+ls+",", ","+l+",") {
				all = false
			}
		}
		if all {
			out = append(out, v)
		}
	}
	return out
}

// parseMetrics parses the Prometheus text format.
func parseMetrics(t *testing.T, r io.Reader) series {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	out := series{}
	add := func(name string, m *dto.Metric, v float64) {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(ls)
		if out[name] == nil {
			out[name] = map[string]float64{}
		}
		out[name][strings.Join(ls, ",")] = v
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				add(name, m, m.GetGauge().GetValue())
			case m.GetCounter() != nil:
				add(name, m, m.GetCounter().GetValue())
			case m.GetHistogram() != nil:
				add(name+"_count", m, float64(m.GetHistogram().GetSampleCount()))
				add(name+"_sum", m, m.GetHistogram().GetSampleSum())
			}
		}
	}
	return out
}

// scrape GETs url (with a bearer token, when given) and parses the answer.
func (e *env) scrape(c *http.Client, url, token string) series {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		e.t.Errorf("GET %s answers %q, want the Prometheus text format", url, ct)
	}
	return parseMetrics(e.t, resp.Body)
}

// TestMetricsOfSourceServersAndReplicators: GET /metrics with a viewer token gives the
// state, readiness, lag, backlog, freeze, throughput and newest PIT of each of the
// account's servers, its replicators as their heartbeats said, and the control
// plane's certificates; another account's viewer sees none of them; the metrics
// listener, without a token, sees every account.
func TestMetricsOfSourceServersAndReplicators(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			testMetrics(t, startWith(t, kind, func(c *controlplane.Config) { c.MetricsListen = "127.0.0.1:0" }))
		})
	}
}

// testMetrics checks the series of a replicating server, a waiting one and their
// replicator, as a viewer scrapes them.
func testMetrics(t *testing.T, e *env) {
	rep, r := e.replicator("r1", "default")
	ag, a := e.agent("machine-a")
	_, b := e.agent("machine-b")
	state, lag, backlog, freeze, tput := api.StateContinuous, 1.5, int64(4096), 2.5, int64(1000)
	if _, err := ag.UpdateReplicationState(e.ctx, a.SourceServer.ID, api.ReplicationStateUpdate{DataReplicationState: &state,
		LagSeconds: &lag, BacklogBytes: &backlog, LastFreezeMs: &freeze, ThroughputBytesPerSecond: &tput}); err != nil {
		t.Fatal(err)
	}
	pitAt := e.clock.Now().Add(-10 * time.Second)
	if _, err := rep.CreateRecoverySnapshot(e.ctx, a.SourceServer.ID, api.CreateRecoverySnapshotRequest{Time: pitAt,
		Level: consistency.Filesystem, Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 10 << 30}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := rep.Heartbeat(e.ctx, r.Replicator.ID, api.HeartbeatRequest{Metrics: api.ReplicatorMetrics{CPUPercent: 50,
		RSSBytes: 1 << 20, Sessions: 2, IngestBytesPerSecond: 500}}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(30 * time.Second)

	viewer := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
	got := e.scrape(e.httpClient(""), e.cp.URL()+"/metrics", viewer)
	srvA := []string{"account=default", "source_server=" + a.SourceServer.ID, "hostname=host-machine-a"}
	srvB := []string{"account=default", "source_server=" + b.SourceServer.ID, "hostname=host-machine-b"}
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"lifeboat_source_server_replication_state", append(srvA, "replicator=r1", "state=CONTINUOUS"), 1},
		{"lifeboat_source_server_replication_state", append(srvB, "replicator=r1", "state=INITIATING"), 1},
		{"lifeboat_source_server_info", append(srvA, "replicator=r1"), 1},
		{"lifeboat_source_server_ready_for_recovery", srvA, 1},
		{"lifeboat_source_server_ready_for_recovery", srvB, 0},
		{"lifeboat_source_server_lag_seconds", srvA, 1.5},
		{"lifeboat_source_server_backlog_bytes", srvA, 4096},
		{"lifeboat_source_server_last_freeze_seconds", srvA, 0.0025},
		{"lifeboat_source_server_throughput_bytes_per_second", srvA, 1000},
		{"lifeboat_source_server_newest_pit_age_seconds", srvA, 40},
		{"lifeboat_source_server_newest_recoverable_pit_age_seconds", srvA, 40},
		{"lifeboat_replicator_live", []string{"account=default", "replicator=r1", "site=default"}, 1},
		{"lifeboat_replicator_heartbeat_age_seconds", []string{"account=default", "replicator=r1", "site=default"}, 30},
		{"lifeboat_replicator_heartbeat_sessions", []string{"account=default", "replicator=r1", "site=default"}, 2},
		{"lifeboat_replicator_heartbeat_ingest_bytes_per_second", []string{"account=default", "replicator=r1", "site=default"}, 500},
		{"lifeboat_replicator_heartbeat_cpu_ratio", []string{"account=default", "replicator=r1", "site=default"}, 0.5},
		{"lifeboat_replicator_assigned_source_servers", []string{"account=default", "replicator=r1", "site=default"}, 2},
	}
	for _, w := range want {
		if v, ok := got.get(w.name, w.labels...); !ok || v != w.value {
			t.Errorf("%s{%s} = %v (present %v), want %v; the series of that name: %v", w.name, strings.Join(w.labels, ","), v, ok, w.value, got[w.name])
		}
	}
	// The agent reported no lag for b yet: no series rather than a made-up 0.
	if v := got.with("lifeboat_source_server_lag_seconds", "source_server="+b.SourceServer.ID); len(v) != 0 {
		t.Errorf("server b, which reported no lag, has a lag series %v", v)
	}
	// RPO: the newest data known is the match the reported lag implies (1.5 s before the
	// report), newer than the PIT; 30 s passed since.
	if v, ok := got.get("lifeboat_source_server_rpo_seconds", srvA...); !ok || v != 31.5 {
		t.Errorf("RPO of server a = %v (present %v), want 31.5 s", v, ok)
	}
	for _, c := range []string{"server", "control-plane-ca", "agent-ca", "replicator-ca"} {
		if v, ok := got.get("lifeboat_certificate_expiry_seconds", "certificate="+c); !ok || v < 24*3600 {
			t.Errorf("certificate %s expires in %v s (present %v): want it there, and more than a day away", c, v, ok)
		}
	}
	if v := got.with("lifeboat_source_server_certificate_expiry_seconds", "source_server="+a.SourceServer.ID); len(v) != 1 || v[0] < 24*3600 {
		t.Errorf("the agent certificate's expiry: %v", v)
	}
	checkMetricsScope(t, e, a.SourceServer.ID)
}

// checkMetricsScope: another account's token sees none of the system account's series,
// no token gets 401, and the metrics listener, without a token, sees every account's.
func checkMetricsScope(t *testing.T, e *env, server string) {
	t.Helper()
	other, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
	if err != nil {
		t.Fatal(err)
	}
	theirs := e.scrape(e.httpClient(""), e.cp.URL()+"/metrics", other.AdminToken)
	if n := len(theirs["lifeboat_source_server_info"]) + len(theirs["lifeboat_replicator_live"]); n != 0 {
		t.Errorf("another account's token sees %d series of the system account's servers and replicators", n)
	}
	if e.status(e.httpClient(""), "GET", "/metrics", "", "") != http.StatusUnauthorized {
		t.Error("GET /metrics without a token is not refused with 401")
	}

	// The metrics listener: no token, every account.
	addr := e.cp.MetricsAddr()
	if addr == "" {
		t.Fatal("the control plane has no metrics listener although MetricsListen was set")
	}
	all := e.scrape(http.DefaultClient, "http://"+addr+"/metrics", "")
	if v := all.with("lifeboat_source_server_info", "source_server="+server); len(v) != 1 {
		t.Errorf("the metrics listener does not list server a: %v", all["lifeboat_source_server_info"])
	}
	if _, ok := all.get("lifeboat_build_info", "version=dev"); !ok {
		t.Errorf("no build info on the listener: %v", all["lifeboat_build_info"])
	}
	if len(all["process_resident_memory_bytes"]) != 1 {
		t.Error("the metrics listener serves no process_resident_memory_bytes")
	}
}

// TestMetricsStateFollowsPause: pausing replication changes the state series at the
// next scrape, as an alert on it expects.
func TestMetricsStateFollowsPause(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		e.replicator("r1", "default")
		ag, a := e.agent("machine-a")
		state := api.StateContinuous
		if _, err := ag.UpdateReplicationState(e.ctx, a.SourceServer.ID, api.ReplicationStateUpdate{DataReplicationState: &state}); err != nil {
			t.Fatal(err)
		}
		viewer := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
		stateOf := func() string {
			var states []string
			for ls := range e.scrape(e.httpClient(""), e.cp.URL()+"/metrics", viewer)["lifeboat_source_server_replication_state"] {
				if strings.Contains(ls, "source_server="+a.SourceServer.ID) {
					states = append(states, ls[strings.Index(ls, "state=")+len("state="):])
				}
			}
			if len(states) != 1 {
				t.Fatalf("server a has %d state series, want exactly one: %v", len(states), states)
			}
			return states[0]
		}
		if s := stateOf(); s != api.StateContinuous {
			t.Fatalf("state series says %s, want CONTINUOUS", s)
		}
		if _, err := e.admin.ReplicationAction(e.ctx, a.SourceServer.ID, api.ActionPause); err != nil {
			t.Fatal(err)
		}
		if s := stateOf(); s != api.StatePaused {
			t.Fatalf("after a pause the state series says %s, want PAUSED", s)
		}
	})
}
