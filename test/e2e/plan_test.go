package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/dnsupdate"
	haproxyapi "github.com/lifeboat-dr/lifeboat/internal/haproxy"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// planLabYAML is the lab as a plan: web1, then web2 (selected by its tag) once web1
// answers; once both answer, the DR site's HAProxy backend points at them and
// www.lab.test moves to the DR site's address. A drill sets its own record in
// drill.lab.test and leaves HAProxy alone. Failback writes each server into its origin
// machine, registered as an instance.
const planLabYAML = `name: lab
description: The lab's two web servers behind HAProxy, www.lab.test served by BIND
drill:
  terminate: true
waves:
  - name: web1
    servers:
      - id: %[1]s
    healthChecks:
      - name: page
        http: {url: "http://${LIFEBOAT_PORT_TCP_80}/", status: 200, body: web1}
        interval: 1s
        retries: 300
    failback:
      - {server: %[1]s, into: web1-origin}
  - name: web2
    after: [web1]
    servers:
      - tags: {lab-wave: second}
    healthChecks:
      - name: page
        http: {url: "http://${LIFEBOAT_PORT_TCP_80}/", status: 200, body: web2}
        interval: 1s
        retries: 300
    steps:
      - name: load-balancer
        haproxy:
          socket: %[3]s
          backend: dr
          servers:
            - {name: web1, instance: %[1]s, port: 80}
            - {name: web2, instance: %[2]s, port: 80}
      - name: dns
        dns:
          server: %[4]s
          zone: lab.test
          key: {name: %[5]s, algorithm: hmac-sha256, secret: lab-tsig}
          records:
            - {name: www, type: A, ttl: 5, values: [127.0.0.2]}
          drill:
            zone: drill.lab.test
            records:
              - {name: www, type: A, ttl: 5, values: [127.0.0.2]}
    failback:
      - {server: %[2]s, into: web2-origin}
`

// planHAProxy is the lab's load balancer with two sites: production (frontend on
// 127.0.0.1, backend prod: the original servers) and DR (frontend on 127.0.0.2, backend
// dr: nothing until a failover points it at the recovered servers).
func planHAProxy(t *testing.T, c *cluster, p1, p2 int) (port int, socket string) {
	t.Helper()
	port, socket = testutil.FreePort(t), filepath.Join(c.dir, "haproxy.sock")
	cfg := fmt.Sprintf(`global
  stats socket %s mode 600 level admin
  maxconn 200
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend prod
  bind 127.0.0.1:%[2]d
  default_backend prod
frontend dr
  bind 127.0.0.2:%[2]d
  default_backend dr
backend prod
  balance roundrobin
  server web1 127.0.0.1:%[3]d
  server web2 127.0.0.1:%[4]d
backend dr
  balance roundrobin
  server web1 127.0.0.1:1 disabled
  server web2 127.0.0.1:1 disabled
`, socket, port, p1, p2)
	path := filepath.Join(c.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.startCmd("haproxy", "haproxy", "-f", path, "-db")
	testutil.WaitTCP(t, fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second)
	return port, socket
}

// resolve asks BIND for name's A record.
func resolve(t *testing.T, dns *testutil.BIND, name string) dnsupdate.RRSet {
	t.Helper()
	c := &dnsupdate.Client{Server: dns.Addr}
	set, err := c.Lookup(context.Background(), name, "A")
	if err != nil {
		t.Fatalf("resolve %s through BIND: %v", name, err)
	}
	return set
}

// siteThroughDNS resolves www.lab.test through BIND and fetches the site there, until
// every page has been served (round robin) or the timeout passes.
func siteThroughDNS(t *testing.T, dns *testutil.BIND, port int, timeout time.Duration, pages ...string) string {
	t.Helper()
	seen := map[string]bool{}
	var addr string
	for deadline := time.Now().Add(timeout); len(seen) < len(pages) && time.Now().Before(deadline); {
		set := resolve(t, dns, "www.lab.test.")
		if len(set.Values) != 1 {
			t.Fatalf("www.lab.test. resolves to %v", set.Values)
		}
		addr = set.Values[0]
		got := httpGet(fmt.Sprintf("http://%s/", net.JoinHostPort(addr, fmt.Sprint(port))))
		if got != "" && strings.Contains(strings.Join(pages, "\x00"), got) {
			seen[got] = true
		} else {
			time.Sleep(200 * time.Millisecond)
		}
	}
	if len(seen) < len(pages) {
		t.Fatalf("the site at www.lab.test (%s) served %v, want every one of %q", addr, seen, pages)
	}
	return addr
}

// backendState is a DR backend server as HAProxy has it.
func backendState(t *testing.T, socket, name string) haproxyapi.Server {
	t.Helper()
	s, err := (&haproxyapi.Client{Network: "unix", Address: socket}).Server(context.Background(), "dr", name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// planLab is the lab's parts for a plan: the cluster, BIND, the two web servers
// replicating, HAProxy's two sites and the plan stored.
type planLab struct {
	c        *cluster
	bind     *testutil.BIND
	web      []*labServer
	sitePort int
	socket   string
	dir      string
}

// newPlanLab builds the lab: BIND serving lab.test and drill.lab.test, the two web
// servers replicating (web2 tagged lab-wave=second), HAProxy, the TSIG key stored as a
// plan secret, and the plan yaml (planLabYAML, or another of its form) applied as lab.
func newPlanLab(t *testing.T, yaml string) *planLab {
	needVMs(t)
	testutil.RequireCommand(t, "haproxy", "haproxy")
	dir, err := os.MkdirTemp("", "lb-plan-") // QEMU's monitor socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	recoverytest.KillVMsAtCleanup(t, dir)
	l := &planLab{dir: dir}
	l.bind = testutil.StartBIND(t, testutil.BINDOptions{Zones: []string{"lab.test", "drill.lab.test"},
		Records: map[string][]string{"lab.test": {"www 300 IN A 127.0.0.1"}, "drill.lab.test": {"www 300 IN A 127.0.0.1"}}})
	c := newClusterWith(t, clusterOptions{advertise: "10.0.2.2", dir: dir})
	l.c = c
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(c.url, "https://"))
	cpURL := "https://10.0.2.2:" + port

	l.web = []*labServer{newLabServer(t, c, "web1", cpURL), newLabServer(t, c, "web2", cpURL)}
	for _, s := range l.web {
		waitPage(t, fmt.Sprintf("http://127.0.0.1:%d/", s.port), s.name+" v1\n", 3*time.Minute)
	}
	ls := webSettings(api.ProviderQEMU, "")
	ls.PostLaunchActions = nil // the plan's health checks gate its waves
	for _, s := range l.web {
		// A failover needs a consistent PIT: CONTINUOUS may come before the first.
		s.server = c.waitServerWhere(s.name, 5*time.Minute, "CONTINUOUS with a consistent PIT", func(s api.SourceServer) bool {
			return s.Replication.DataReplicationState == api.StateContinuous && s.Replication.ReadyForRecovery
		})
		if _, err := c.admin.SetLaunchSettings(context.Background(), s.server.ID, ls); err != nil {
			t.Fatal(err)
		}
	}
	c.cli("source-servers", "tag", l.web[1].server.ID, "lab-wave=second")
	l.sitePort, l.socket = planHAProxy(t, c, l.web[0].port, l.web[1].port)
	siteThroughDNS(t, l.bind, l.sitePort, time.Minute, "web1 v1\n", "web2 v1\n")

	keyFile := c.tokenFile("lab.tsig", l.bind.Secret)
	c.cli("plan", "secrets", "set", "lab-tsig", "--from-file", keyFile)
	planFile := filepath.Join(dir, "lab.yaml")
	text := fmt.Sprintf(yaml, l.web[0].server.ID, l.web[1].server.ID, l.socket, l.bind.Addr, l.bind.KeyName)
	if err := os.WriteFile(planFile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("lifeboat plan apply:\n%s", c.cli("plan", "apply", "-f", planFile))
	return l
}

// TestLabPlan is the lab as a plan: a drill leaves production DNS and HAProxy alone;
// after the disaster, plan failover recovers both web servers in order, checks them,
// points the DR backend at them and moves www.lab.test, so that a client resolving the
// name through BIND gets the recovered site; what is written there comes home with plan
// failback, which puts the record and the backend back. Every run's report has each
// step's timing and the RTO.
func TestLabPlan(t *testing.T) {
	l := newPlanLab(t, planLabYAML)
	c, bind, web, sitePort, socket := l.c, l.bind, l.web, l.sitePort, l.socket
	dry := c.cli("plan", "failover", "lab", "--dry-run")
	for _, want := range []string{"accepts key " + bind.KeyName, "HAProxy answers", "would recover " + web[0].server.ID} {
		if !strings.Contains(dry, want) {
			t.Fatalf("the dry run does not say %q:\n%s", want, dry)
		}
	}

	// A drill: both servers launched isolated and checked, the drill record set; the
	// production record and the DR backend untouched; the drill's instances gone.
	report := c.cli("plan", "drill", "lab", "--wait")
	t.Logf("lifeboat plan drill lab --wait:\n%s", report)
	wantReport(t, report, "SUCCEEDED", "RTO:", "check wave web2", "step dns (wave web2)", "terminate")
	if got := resolve(t, bind, "www.lab.test."); fmt.Sprint(got.Values) != "[127.0.0.1]" || got.TTL != 300 {
		t.Fatalf("after the drill www.lab.test is %v (TTL %d): a drill changed a production record", got.Values, got.TTL)
	}
	if got := resolve(t, bind, "www.drill.lab.test."); fmt.Sprint(got.Values) != "[127.0.0.2]" {
		t.Fatalf("after the drill www.drill.lab.test is %v, want the drill record", got.Values)
	}
	for _, name := range []string{"web1", "web2"} {
		if s := backendState(t, socket, name); s.Admin != "maint" || s.Port != 1 {
			t.Fatalf("after the drill HAProxy's dr/%s is %+v: a drill changed the load balancer", name, s)
		}
	}
	left, err := c.admin.RecoveryInstances(context.Background(), api.RecoveryInstanceFilter{})
	if err != nil || len(left.Items) != 0 {
		t.Fatalf("the drill left %d recovery instances (%v)", len(left.Items), err)
	}

	// The disaster, and the failover as one command.
	for _, s := range web {
		s.kill(t)
	}
	start := time.Now()
	report = c.cli("plan", "failover", "lab", "--wait")
	t.Logf("lifeboat plan failover lab --wait:\n%s", report)
	wantReport(t, report, "SUCCEEDED", "RTO:", "launch wave web1", "check wave web1", "step load-balancer (wave web2)", "step dns (wave web2)")
	if addr := siteThroughDNS(t, bind, sitePort, time.Minute, "web1 v1\n", "web2 v1\n"); addr != "127.0.0.2" {
		t.Fatalf("www.lab.test resolves to %s after the failover, want the DR site 127.0.0.2", addr)
	}
	t.Logf("failover: the site answered through its DNS name %s after the plan started", time.Since(start).Round(time.Second))
	ris, err := c.admin.RecoveryInstances(context.Background(), api.RecoveryInstanceFilter{})
	if err != nil || len(ris.Items) != 2 {
		t.Fatalf("after the failover: %d recovery instances (%v)", len(ris.Items), err)
	}
	for _, ri := range ris.Items {
		name := "web1"
		if ri.SourceServerID == web[1].server.ID {
			name = "web2"
		}
		page := name + " v2, written during the failover\n"
		if got := httpPost(fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/write", ri.PortForwards[0].HostPort), page); got != "written\n" {
			t.Fatalf("write on %s: %q", ri.ID, got)
		}
	}

	// The way home: each origin machine registered as an instance answers where it did.
	for _, s := range web {
		home := webSettings(api.ProviderQEMU, "")
		home.PostLaunchActions = nil
		home.Network.PortForwards[0].HostPort = s.port
		if _, err := c.admin.SetLaunchSettings(context.Background(), s.server.ID, home); err != nil {
			t.Fatal(err)
		}
		c.cli("instances", "add", "--name", s.name+"-origin", "--disk", s.image, "--boot-mode", "kernel", "--tag", "AWSDRS=AllowLaunchingIntoThisInstance")
	}
	report = c.cli("plan", "failback", "lab", "--wait")
	t.Logf("lifeboat plan failback lab --wait:\n%s", report)
	wantReport(t, report, "SUCCEEDED", "reverse wave web1", "failback wave web2", "complete")
	if addr := siteThroughDNS(t, bind, sitePort, time.Minute, "web1 v2, written during the failover\n", "web2 v2, written during the failover\n"); addr != "127.0.0.1" {
		t.Fatalf("www.lab.test resolves to %s after the failback, want production 127.0.0.1", addr)
	}
	for _, name := range []string{"web1", "web2"} {
		if s := backendState(t, socket, name); s.Admin != "maint" || s.Port != 1 {
			t.Fatalf("after the failback HAProxy's dr/%s is %+v, want it put back (127.0.0.1:1, maint)", name, s)
		}
	}
	reports := c.cli("plan", "reports", "lab")
	if strings.Count(reports, "SUCCEEDED") != 3 {
		t.Fatalf("plan reports lab lists:\n%s", reports)
	}
}

// wantReport fails unless a report says every one of wants.
func wantReport(t *testing.T, report string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(report, w) {
			t.Fatalf("the report does not say %q:\n%s", w, report)
		}
	}
}
