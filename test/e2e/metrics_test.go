package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// repoRoot is the repository's top directory (deploy/ is there).
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the test's source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// promConfig is a Prometheus configuration scraping the control plane twice (the API
// with a viewer token, and its metrics listener), the replicator and the agent, every
// second, with Lifeboat's alerting rules loaded.
const promConfig = `global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - %[1]s
scrape_configs:
  - job_name: lifeboat-api
    scheme: https
    authorization:
      credentials_file: %[2]s
    tls_config:
      ca_file: %[3]s
    static_configs:
      - targets: ["%[4]s"]
  - job_name: lifeboat-server
    static_configs:
      - targets: ["%[5]s"]
  - job_name: lifeboat-replicator
    static_configs:
      - targets: ["%[6]s"]
  - job_name: lifeboat-agent
    static_configs:
      - targets: ["%[7]s"]
`

// prometheus is a running Prometheus server and its HTTP API.
type prometheus struct {
	t    *testing.T
	addr string
}

// sample is one series of an instant query's answer.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query and returns its series.
func (p *prometheus) query(q string) []sample {
	p.t.Helper()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []sample `json:"result"`
		} `json:"data"`
	}
	p.get("/api/v1/query?query="+url.QueryEscape(q), &out)
	if out.Status != "success" {
		p.t.Fatalf("Prometheus query %q: %s", q, out.Error)
	}
	return out.Data.Result
}

func (p *prometheus) get(path string, v any) {
	p.t.Helper()
	resp, err := http.Get("http://" + p.addr + path)
	if err != nil {
		p.t.Fatalf("Prometheus API %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		p.t.Fatalf("Prometheus API %s answered %s: %v", path, b, err)
	}
}

// wait polls q until check accepts its answer, or fails the test after timeout.
func (p *prometheus) wait(what, q string, timeout time.Duration, check func([]sample) bool) []sample {
	p.t.Helper()
	var got []sample
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Second) {
		if got = p.query(q); check(got) {
			return got
		}
	}
	p.t.Fatalf("%s: Prometheus answered %q with %+v for %s", what, q, got, timeout)
	return nil
}

func nonEmpty(s []sample) bool { return len(s) > 0 }

// startPrometheus runs Prometheus with the configuration and waits for its API.
func (c *cluster) startPrometheus(config string) *prometheus {
	c.t.Helper()
	bin := testutil.RequireCommand(c.t, "prometheus", "prometheus")
	cfg := filepath.Join(c.dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		c.t.Fatal(err)
	}
	p := &prometheus{t: c.t, addr: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(c.t))}
	c.startCmd("prometheus", bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(c.dir, "tsdb"),
		"--web.listen-address="+p.addr, "--log.level=warn")
	testutil.WaitTCP(c.t, p.addr, 60*time.Second)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("Prometheus was not ready within 60 s (%v)", err)
		}
	}
}

// TestPrometheusScrapesEveryPart: a real Prometheus scrapes the control plane (through
// the API with a viewer token, and its metrics listener), the replicator and the agent
// of a server replicating a loop device. The state and lag series exist, the state
// series follows a pause and a resume, a plan drill shows in the jobs and drill series,
// Lifeboat's alerting rules load (and pass promtool), and every series the Grafana
// dashboard names is one the parts expose.
func TestPrometheusScrapesEveryPart(t *testing.T) {
	root := repoRoot(t)
	rules := filepath.Join(root, "deploy", "prometheus", "alerts.yml")
	promtool := testutil.RequireCommand(t, "promtool", "prometheus")
	testutil.Run(t, promtool, "check", "rules", rules)
	dev, _ := testutil.LoopDevice(t, 64<<20)
	testutil.MkfsExt4(t, dev)
	mnt := testutil.Mount(t, dev) // mounted: points freeze it, and the freeze series have values
	writeFiles(t, mnt, 1, 10, 256)

	cpMetrics := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	repMetrics := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	agentMetrics := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	c := newClusterWith(t, clusterOptions{serverExtra: []string{"--metrics-listen", cpMetrics},
		repExtra: []string{"--metrics-listen", repMetrics}})
	c.installAgent(dev)
	c.startAgent("--metrics-listen", agentMetrics)
	c.waitState(2*time.Minute, api.StateContinuous)

	ctx := context.Background()
	viewer, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer, Description: "prometheus"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(c.url)
	p := c.startPrometheus(fmt.Sprintf(promConfig, rules, c.tokenFile("prometheus.token", viewer.Secret),
		filepath.Join(c.dir, "cp", "pki", "ca.crt"), u.Host, cpMetrics, repMetrics, agentMetrics))

	p.wait("every part scraped", `up == 1`, 90*time.Second, func(s []sample) bool { return len(s) == 4 })
	server := fmt.Sprintf(`source_server=%q`, c.agentID)
	p.wait("the state series", `lifeboat_source_server_replication_state{job="lifeboat-api",`+server+`,state="CONTINUOUS"} == 1`,
		time.Minute, nonEmpty)
	p.wait("the lag series", `lifeboat_source_server_lag_seconds{job="lifeboat-api",`+server+`}`, time.Minute, nonEmpty)
	p.wait("the agent's lag", `lifeboat_agent_lag_seconds{`+server+`}`, time.Minute, nonEmpty)
	p.wait("the replicator's sealed PITs", `lifeboat_replicator_pits_sealed_total{level="filesystem"} > 0`, time.Minute, nonEmpty)

	// A pause shows in the control plane's state series and the agent's; a resume too.
	c.cli("replication", "pause", c.agentID)
	for _, q := range []string{
		`lifeboat_source_server_replication_state{job="lifeboat-api",` + server + `}`,
		`lifeboat_source_server_replication_state{job="lifeboat-server",` + server + `}`,
		`lifeboat_agent_replication_state{` + server + `}`,
	} {
		p.wait("PAUSED in "+q, q, time.Minute, func(s []sample) bool { return len(s) == 1 && s[0].Metric["state"] == api.StatePaused })
	}
	c.cli("replication", "resume", c.agentID)
	p.wait("CONTINUOUS again", `lifeboat_source_server_replication_state{job="lifeboat-api",`+server+`}`, 2*time.Minute,
		func(s []sample) bool { return len(s) == 1 && s[0].Metric["state"] == api.StateContinuous })

	// A plan drill (image provider: no VM) makes the job and drill series exist.
	c.snapshot()
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider = api.ProviderImage
	if _, err := c.admin.SetLaunchSettings(ctx, c.agentID, ls); err != nil {
		t.Fatal(err)
	}
	plan := filepath.Join(c.dir, "metrics-plan.yaml")
	if err := os.WriteFile(plan, []byte("name: metrics\nwaves:\n  - name: all\n    servers:\n      - id: "+c.agentID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.cli("plan", "apply", "-f", plan)
	c.cli("plan", "drill", "metrics", "--wait")
	p.wait("the drill's result", `lifeboat_plan_last_drill_success{job="lifeboat-api",plan="metrics"} == 1`, time.Minute, nonEmpty)
	p.wait("the drill's RTO", `lifeboat_launch_rto_seconds_count{job="lifeboat-api",drill="true"} > 0`, time.Minute, nonEmpty)
	p.wait("the drill's job", `lifeboat_jobs{job="lifeboat-api",type="LAUNCH",status="COMPLETED",drill="true"} > 0`, time.Minute, nonEmpty)

	checkRulesLoaded(t, p)
	checkDashboard(t, p, filepath.Join(root, "deploy", "grafana", "lifeboat.json"))
}

// checkRulesLoaded: Prometheus loaded every group of alerts.yml without error.
func checkRulesLoaded(t *testing.T, p *prometheus) {
	t.Helper()
	var rules struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name   string `json:"name"`
					Health string `json:"health"`
					Error  string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	var groups []string
	for deadline := time.Now().Add(30 * time.Second); len(groups) < 3 && time.Now().Before(deadline); time.Sleep(time.Second) {
		p.get("/api/v1/rules", &rules)
		groups = groups[:0]
		for _, g := range rules.Data.Groups {
			groups = append(groups, g.Name)
		}
	}
	slices.Sort(groups)
	if !slices.Equal(groups, []string{"lifeboat-drills", "lifeboat-infrastructure", "lifeboat-replication"}) {
		t.Fatalf("Prometheus loaded the rule groups %v from alerts.yml", groups)
	}
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			if r.Health == "err" {
				t.Errorf("rule %s fails to evaluate: %s", r.Name, r.Error)
			}
		}
	}
}

// metricNameRE finds series names in PromQL: Lifeboat's own and the process's.
var metricNameRE = regexp.MustCompile(`\b(?:lifeboat|process|go)_[a-z0-9_]+\b`)

// checkDashboard: the Grafana dashboard parses, has panels with queries, and every series
// name in its queries is one Prometheus scraped from the parts.
func checkDashboard(t *testing.T, p *prometheus, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s does not parse: %v", path, err)
	}
	var exprs []string
	for _, pn := range dash.Panels {
		for _, tg := range pn.Targets {
			exprs = append(exprs, tg.Expr)
		}
		if pn.Type != "row" && len(pn.Targets) == 0 {
			t.Errorf("panel %q has no query", pn.Title)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	var names struct {
		Data []string `json:"data"`
	}
	p.get("/api/v1/label/__name__/values", &names)
	exposed := map[string]bool{}
	for _, n := range names.Data {
		exposed[n] = true
	}
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricNameRE.FindAllString(e, -1) {
			used[n] = true
		}
	}
	if len(used) < 20 {
		t.Fatalf("the dashboard names %d series; it should show lag, backlog, state, PITs, freezes, throughput, jobs and drills", len(used))
	}
	for n := range used {
		if !exposed[n] {
			t.Errorf("the dashboard queries %s, which no part exposes (Prometheus has: %s)", n, strings.Join(names.Data, " "))
		}
	}
}
