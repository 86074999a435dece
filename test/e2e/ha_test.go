package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// haLease is the control planes' coordinator lease in this test: short, so the
// takeover is quick.
const haLease = 4 * time.Second

// startFrontHAProxy starts HAProxy in TCP mode on front, round robin over the two
// control planes' ports (TLS and client certificates pass through), skipping one that
// does not answer and retrying a refused connection on the other.
func startFrontHAProxy(t *testing.T, dir string, front string, p1, p2 int) {
	t.Helper()
	cfg := fmt.Sprintf(`global
  maxconn 500
defaults
  mode tcp
  timeout connect 2s
  timeout client 10m
  timeout server 10m
  retries 3
  option redispatch
frontend lifeboat
  bind %s
  default_backend cps
backend cps
  balance roundrobin
  server cp1 127.0.0.1:%d check inter 500ms fall 1 rise 1
  server cp2 127.0.0.1:%d check inter 500ms fall 1 rise 1
`, front, p1, p2)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("haproxy", "-f", path, "-db")
	cmd.Stdout, cmd.Stderr = logf, logf
	testutil.StartProcess(t, cmd)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	})
	testutil.WaitTCP(t, front, 30*time.Second)
}

// startSecondServer starts another control plane on the cluster's database, with a copy
// of the first's data directory without its runner id, listening on port.
func (c *cluster) startSecondServer(port int) *proc {
	c.t.Helper()
	data := filepath.Join(c.dir, "cp2")
	if err := os.CopyFS(data, os.DirFS(filepath.Join(c.dir, "cp"))); err != nil {
		c.t.Fatalf("copy the data directory: %v", err)
	}
	if err := os.Remove(filepath.Join(data, "runner-id")); err != nil {
		c.t.Fatal(err)
	}
	args := append([]string(nil), c.serverArgs...)
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--data":
			args[i+1] = data
		case "--listen":
			args[i+1] = fmt.Sprintf("127.0.0.1:%d", port)
		}
	}
	p := c.start("server2", args...)
	testutil.WaitTCP(c.t, fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second)
	return p
}

// healthAt asks the control plane at port (not through the load balancer) for its health.
func (c *cluster) healthAt(port int) (api.Health, error) {
	ca, err := os.ReadFile(filepath.Join(c.dir, "cp", "pki", "ca.crt"))
	if err != nil {
		return api.Health{}, err
	}
	cl, err := api.NewClient(api.ClientConfig{Server: fmt.Sprintf("https://127.0.0.1:%d", port), CAPEM: ca})
	if err != nil {
		return api.Health{}, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return cl.Health(ctx)
}

// waitCoordinator waits until the control plane at port says it coordinates.
func (c *cluster) waitCoordinator(port int, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for {
		h, err := c.healthAt(port)
		if err == nil && h.Coordinator {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			c.t.Fatalf("the control plane on port %d does not coordinate after %v: %+v, %v", port, timeout, h, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// listenGate listens on addr, accepting and closing connections, until the test ends.
func listenGate(t *testing.T, addr string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("open the gate %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
}

// TestTwoControlPlanesOnPostgresBehindHAProxy (issue 19): two lifeboat server processes
// on one PostgreSQL database behind HAProxy, which clients, the agent and the
// replicator reach. A drill job and a scheduled drill wait, both held by the first
// control plane (the coordinator), when it is killed with SIGKILL: the second takes the
// coordinator lease, resumes the scheduled drill and the job, and each completes once;
// replication carries on through HAProxy.
func TestTwoControlPlanesOnPostgresBehindHAProxy(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "haproxy", "haproxy")
	pgURL := dbtest.URL(t, db.Postgres)
	dir := t.TempDir()
	p1, p2 := testutil.FreePort(t), testutil.FreePort(t)
	front := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	startFrontHAProxy(t, dir, front, p1, p2)
	c := newClusterWith(t, clusterOptions{dir: dir, cpPort: p1, front: front,
		serverExtra: []string{"--db", pgURL, "--coordinator-lease", haLease.String()}})
	ctx := context.Background()

	dev, _ := testutil.LoopDevice(t, 64<<20)
	testutil.MkfsExt4(t, dev)
	c.installAgent(dev)
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	c.snapshot()
	// Launches wait at a gate the test opens once the first control plane is dead.
	gate := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider = api.ProviderImage
	ls.PostLaunchActions = []api.PostLaunchAction{{Name: "gate", Type: "tcp-check", Address: gate, TimeoutSeconds: 600}}
	if _, err := c.admin.SetLaunchSettings(ctx, c.agentID, ls); err != nil {
		t.Fatal(err)
	}
	c.cli("source-servers", "tag", c.agentID, "app=db")
	c.waitCoordinator(p1, 30*time.Second)

	run := scheduleOneDrill(t, c, gate)
	job, err := c.admin.StartRecovery(ctx, api.StartRecoveryRequest{IsDrill: true,
		SourceServers: []api.RecoveryServer{{SourceServerID: c.agentID}}})
	if err != nil {
		t.Fatal(err)
	}
	waitPostLaunch(t, c, job.ID)

	// The second control plane joins; the first, holding both, is killed.
	server2 := c.startSecondServer(p2)
	defer server2.stop()
	if h, err := c.healthAt(p2); err != nil || h.Coordinator {
		t.Fatalf("the second control plane's health: %+v, %v; want serving, not coordinating", h, err)
	}
	c.server.kill()
	took := c.waitCoordinator(p2, 2*haLease+5*time.Second)
	t.Logf("the second control plane coordinates %v after the first was killed (lease %v)", took.Round(100*time.Millisecond), haLease)
	listenGate(t, gate)

	j := recoverytest.WaitJob(t, c.admin, job.ID, 3*time.Minute)
	if j.Servers[0].LaunchStatus != api.LaunchLaunched {
		t.Fatalf("the drill job after the kill: %+v", j.Servers[0])
	}
	r := c.waitRun(run, 3*time.Minute, func(r api.PlanRun) bool { return r.State != api.PlanRunRunning })
	if r.State != api.PlanRunSucceeded {
		t.Fatalf("the scheduled drill after the kill: %s (%s)\n%s", r.State, r.Reason, c.cli("plan", "report", run))
	}
	checkOnce(t, c, run, job.ID)
	if log, err := c.admin.JobLog(ctx, job.ID, 1000, ""); err != nil || !hasEvent(log.Items, api.EventJobResume) {
		t.Errorf("the drill job's log has no %s: it was not resumed by the survivor (%v)", api.EventJobResume, err)
	}
	if b, _ := os.ReadFile(filepath.Join(c.dir, "server2.log")); !strings.Contains(string(b), "this control plane coordinates") {
		t.Errorf("the survivor's log does not say it coordinates")
	}
	// Replication went on through HAProxy: a new PIT is recorded by the survivor.
	c.snapshot()
	if h, err := c.admin.Health(ctx); err != nil || !h.Coordinator {
		t.Errorf("health through HAProxy after the kill: %+v, %v; want the survivor, coordinating", h, err)
	}
}

// scheduleOneDrill applies plan db with a drill every 10 s, waits for the scheduled
// drill to start, then takes the schedule out (version 2) so that no other comes, and
// returns the run's id.
func scheduleOneDrill(t *testing.T, c *cluster, check string) string {
	t.Helper()
	write := func(name, extra string) string {
		p := filepath.Join(c.dir, name)
		if err := os.WriteFile(p, []byte(fmt.Sprintf(planDBYAML, check, extra)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c.cli("plan", "apply", "-f", write("db-scheduled.yaml", "schedule:\n  drill: \"@every 10s\"\n"))
	var run string
	for deadline := time.Now().Add(time.Minute); run == ""; time.Sleep(500 * time.Millisecond) {
		runs, err := c.admin.PlanRuns(context.Background(), "db", 10, "")
		if err == nil {
			for _, s := range runs.Items {
				if s.Scheduled {
					run = s.ID
				}
			}
		}
		if run == "" && time.Now().After(deadline) {
			t.Fatalf("no scheduled drill started within a minute: %+v (%v)", runs.Items, err)
		}
	}
	c.cli("plan", "apply", "-f", write("db.yaml", ""))
	c.waitRun(run, 2*time.Minute, func(r api.PlanRun) bool {
		return r.State != api.PlanRunRunning || len(r.Steps[1].JobIDs) == 1
	})
	return run
}

// waitPostLaunch waits until a job's server waits in its post-launch actions.
func waitPostLaunch(t *testing.T, c *cluster, id string) {
	t.Helper()
	for end := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		j, err := c.admin.Job(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Servers[0].Step == api.StepPostLaunch {
			return
		}
		if j.Status == api.JobCompleted || time.Now().After(end) {
			t.Fatalf("job %s never waited in its post-launch actions: %+v", id, j)
		}
	}
}

// checkOnce checks that the scheduled drill run and the drill job ran once: one
// scheduled run, one launch job of that run, one plan.run and one drill start in the
// audit log.
func checkOnce(t *testing.T, c *cluster, run, job string) {
	t.Helper()
	runs, err := c.admin.PlanRuns(context.Background(), "db", 100, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(runs.Items) != 1 || runs.Items[0].ID != run {
		t.Errorf("runs of plan db: %+v; want the scheduled drill %s alone", runs.Items, run)
	}
	jobs, err := c.admin.Jobs(context.Background(), 100, "")
	if err != nil {
		t.Fatal(err)
	}
	launches := map[string]int{}
	for _, j := range jobs.Items {
		if j.Type == api.JobLaunch {
			launches[strings.SplitN(j.CreatedBy, "/", 2)[0]]++
		}
		if j.Status != api.JobCompleted {
			t.Errorf("job %s (%s, by %s) is %s after both drills ended", j.ID, j.Type, j.CreatedBy, j.Status)
		}
	}
	if launches["plan:"+run] != 1 || len(launches) != 2 {
		t.Errorf("launch jobs by creator: %v; want one of the scheduled drill and one drill job (%s)", launches, job)
	}
	if n := c.auditCount("plan.run"); n != 1 {
		t.Errorf("plan.run in the audit log: %d, want 1", n)
	}
}

// hasEvent reports whether a job's log holds an event of a type.
func hasEvent(events []api.JobLogEvent, typ string) bool {
	for _, e := range events {
		if e.Type == typ {
			return true
		}
	}
	return false
}
