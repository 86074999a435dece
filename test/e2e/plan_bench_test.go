package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/dnsupdate"
	haproxyapi "github.com/lifeboat-dr/lifeboat/internal/haproxy"
)

// planBenchYAML is the lab in one wave (both servers launched by one job, as an
// operator recovering them by hand would), then the same steps as planLabYAML.
const planBenchYAML = `name: lab
waves:
  - name: web
    servers:
      - id: %[1]s
      - id: %[2]s
    healthChecks:
      - name: page
        http: {url: "http://${LIFEBOAT_PORT_TCP_80}/", status: 200, body: " v1"}
        interval: 500ms
        retries: 600
    steps:
      - name: load-balancer
        haproxy:
          socket: %[3]s
          backend: dr
          servers:
            - {name: web1, instance: %[1]s}
            - {name: web2, instance: %[2]s}
      - name: dns
        dns:
          server: %[4]s
          zone: lab.test
          key: {name: %[5]s, secret: lab-tsig}
          records:
            - {name: www, ttl: 5, values: [127.0.0.2]}
`

// TestLabPlanRTOBench measures the lab plan's RTO — from the start of plan failover
// until the site answers through its DNS name (www.lab.test resolved through BIND, both
// pages served by the DR site) — against the same recovery done by hand: lifeboat
// recover of both servers, their pages polled, the DR backend set through HAProxy's
// runtime API and the record updated (RFC 2136, as nsupdate would). Rounds alternate;
// every round starts from production (record and backend put back, instances
// terminated). It runs when LIFEBOAT_BENCH_PLAN_OUT names the results file
// (bench/plan/run.sh); LIFEBOAT_BENCH_ROUNDS sets the rounds (default 3).
func TestLabPlanRTOBench(t *testing.T) {
	out := os.Getenv("LIFEBOAT_BENCH_PLAN_OUT")
	if out == "" {
		t.Skip("a benchmark: bench/plan/run.sh runs it (LIFEBOAT_BENCH_PLAN_OUT)")
	}
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("LIFEBOAT_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	l := newPlanLab(t, planBenchYAML)
	for _, s := range l.web { // the disaster: the originals are gone (and use no CPU)
		s.kill(t)
	}
	var plan, hand []time.Duration
	var reportRTO []float64
	for i := 0; i < rounds; i++ {
		l.reset(t)
		start := time.Now()
		report := l.c.cli("plan", "failover", "lab", "--wait")
		siteThroughDNS(t, l.bind, l.sitePort, time.Minute, "web1 v1\n", "web2 v1\n")
		plan = append(plan, time.Since(start))
		runs, err := l.c.admin.PlanRuns(context.Background(), "lab", 1, "")
		if err != nil || len(runs.Items) != 1 || runs.Items[0].RTOSeconds == nil {
			t.Fatalf("the plan's report: %+v (%v)\n%s", runs.Items, err, report)
		}
		reportRTO = append(reportRTO, *runs.Items[0].RTOSeconds)
		l.terminateAll(t)

		l.reset(t)
		start = time.Now()
		l.byHand(t)
		hand = append(hand, time.Since(start))
		l.terminateAll(t)
		t.Logf("round %d: plan %s (its report's RTO %.1f s), by hand %s", i+1, plan[i].Round(100*time.Millisecond),
			reportRTO[i], hand[i].Round(100*time.Millisecond))
	}
	writePlanBench(t, out, plan, hand, reportRTO)
}

// reset puts production back: the record, the DR backend, no recovery instance.
func (l *planLab) reset(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	dc := &dnsupdate.Client{Server: l.bind.Addr, Key: dnsupdate.Key{Name: l.bind.KeyName, Algorithm: l.bind.Algorithm, Secret: l.bind.Secret}}
	if err := dc.Replace(ctx, "lab.test.", dnsupdate.RRSet{Name: "www.lab.test.", Type: "A", TTL: 300, Values: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	lb := &haproxyapi.Client{Network: "unix", Address: l.socket}
	for _, name := range []string{"web1", "web2"} {
		if err := lb.SetAddr(ctx, "dr", name, "127.0.0.1", 1); err != nil {
			t.Fatal(err)
		}
		if err := lb.SetState(ctx, "dr", name, "maint"); err != nil {
			t.Fatal(err)
		}
	}
}

// byHand recovers the lab as an operator would, one command and call after another.
func (l *planLab) byHand(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	l.c.cli("recover", l.web[0].server.ID, l.web[1].server.ID, "--wait")
	ris, err := l.c.admin.RecoveryInstances(ctx, api.RecoveryInstanceFilter{})
	if err != nil || len(ris.Items) != 2 {
		t.Fatalf("recovered by hand: %d instances (%v)", len(ris.Items), err)
	}
	lb := &haproxyapi.Client{Network: "unix", Address: l.socket}
	for _, ri := range ris.Items {
		name := "web1"
		if ri.SourceServerID == l.web[1].server.ID {
			name = "web2"
		}
		port := ri.PortForwards[0].HostPort
		waitPage(t, fmt.Sprintf("http://127.0.0.1:%d/", port), name+" v1\n", 5*time.Minute)
		if err := lb.SetAddr(ctx, "dr", name, "127.0.0.1", port); err != nil {
			t.Fatal(err)
		}
		if err := lb.SetState(ctx, "dr", name, "ready"); err != nil {
			t.Fatal(err)
		}
	}
	dc := &dnsupdate.Client{Server: l.bind.Addr, Key: dnsupdate.Key{Name: l.bind.KeyName, Algorithm: l.bind.Algorithm, Secret: l.bind.Secret}}
	if err := dc.Replace(ctx, "lab.test.", dnsupdate.RRSet{Name: "www.lab.test.", Type: "A", TTL: 5, Values: []string{"127.0.0.2"}}); err != nil {
		t.Fatal(err)
	}
	siteThroughDNS(t, l.bind, l.sitePort, time.Minute, "web1 v1\n", "web2 v1\n")
}

// terminateAll terminates every recovery instance and waits for it.
func (l *planLab) terminateAll(t *testing.T) {
	t.Helper()
	ris, err := l.c.admin.RecoveryInstances(context.Background(), api.RecoveryInstanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"recovery-instances", "terminate"}
	for _, ri := range ris.Items {
		args = append(args, ri.ID)
	}
	if len(args) > 2 {
		l.c.cli(append(args, "--wait")...)
	}
}

// writePlanBench writes the results (BENCHMARKS.md's section) to path.
func writePlanBench(t *testing.T, path string, plan, hand []time.Duration, rto []float64) {
	t.Helper()
	med := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| Round | plan failover → site via DNS | its report's RTO (last check passed) | by hand → site via DNS | plan / by hand |\n|---|---|---|---|---|\n")
	for i := range plan {
		fmt.Fprintf(&b, "| %d | %.1f s | %.1f s | %.1f s | %.2f× |\n", i+1, plan[i].Seconds(), rto[i], hand[i].Seconds(), plan[i].Seconds()/hand[i].Seconds())
	}
	mp, mh := med(plan), med(hand)
	fmt.Fprintf(&b, "| **median** | **%.1f s** | | **%.1f s** | **%.2f×** (overhead %+.1f s) |\n", mp.Seconds(), mh.Seconds(), mp.Seconds()/mh.Seconds(), (mp - mh).Seconds())
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("results:\n%s", b.String())
}
