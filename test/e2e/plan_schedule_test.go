package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// planDBYAML is a one-wave plan of the server tagged app=db, launched by the image
// provider; its health check waits for a TCP port the test opens when it wants the
// check to pass. %[2]s is an extra top-level section (a schedule).
const planDBYAML = `name: db
waves:
  - name: db
    servers:
      - tags: {app: db}
    healthChecks:
      - name: port
        tcp: {address: "%[1]s"}
        interval: 1s
        retries: 600
%[2]s`

// cliFails runs a command that must fail and returns what it said on stderr.
func (c *cluster) cliFails(args ...string) string {
	c.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), c.env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil {
		c.t.Fatalf("lifeboat %s succeeded; it must fail", strings.Join(args, " "))
	}
	return stderr.String()
}

// waitRun waits until a plan run is past state from.
func (c *cluster) waitRun(id string, timeout time.Duration, done func(api.PlanRun) bool) api.PlanRun {
	c.t.Helper()
	var r api.PlanRun
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if r, err = c.admin.PlanRun(context.Background(), id); err == nil && done(r) {
			return r
		}
	}
	c.t.Fatalf("plan run %s: %s, step %v (%v)", id, r.State, r.Steps, err)
	return r
}

// TestPlanRunResumesAfterRestartAndScheduledDrills: a plan file with an unknown field is
// refused with its line, one whose selector matches nothing is refused; a drill whose
// control plane is killed while it waits on its health check resumes at that step after
// the restart, without launching again, and succeeds once the check passes; a second
// run of the plan meanwhile is refused; a scheduled drill runs on its schedule, keeps its
// report and terminates its instances.
func TestPlanRunResumesAfterRestartAndScheduledDrills(t *testing.T) {
	dev, _ := testutil.LoopDevice(t, 64<<20)
	testutil.MkfsExt4(t, dev)
	c := newCluster(t)
	c.installAgent(dev)
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	c.snapshot()
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider = api.ProviderImage
	if _, err := c.admin.SetLaunchSettings(context.Background(), c.agentID, ls); err != nil {
		t.Fatal(err)
	}
	// The check's port: reserved now, listened on when the test lets the check pass.
	checkAddr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	write := func(name, extra string) string {
		p := filepath.Join(c.dir, name)
		if err := os.WriteFile(p, []byte(fmt.Sprintf(planDBYAML, checkAddr, extra)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	bad := filepath.Join(c.dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: db\nwaves:\n  - name: db\n    servers: [{id: "+c.agentID+"}]\n    helthChecks: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if msg := c.cliFails("plan", "apply", "-f", bad); !strings.Contains(msg, "line 5") || !strings.Contains(msg, "helthChecks") {
		t.Fatalf("a plan with an unknown field was refused with %q, want its line and name", msg)
	}
	if msg := c.cliFails("plan", "apply", "-f", write("db.yaml", "")); !strings.Contains(msg, "app=db matches no source server") {
		t.Fatalf("a plan whose selector matches nothing was refused with %q", msg)
	}
	c.cli("source-servers", "tag", c.agentID, "app=db")
	c.cli("plan", "apply", "-f", write("db.yaml", ""))

	// A drill, and a restart of the control plane while it waits on its check.
	id := strings.TrimSpace(c.cli("plan", "drill", "db"))
	c.waitRun(id, 2*time.Minute, func(r api.PlanRun) bool { return r.Steps[2].State == api.PlanStepRunning })
	if msg := c.cliFails("plan", "failover", "db"); !strings.Contains(msg, "two runs of a plan at once are refused") {
		t.Fatalf("a second run of the plan was refused with %q", msg)
	}
	c.restartServer()
	l, err := net.Listen("tcp", checkAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := c.waitRun(id, 2*time.Minute, func(r api.PlanRun) bool { return r.State != api.PlanRunRunning })
	if r.State != api.PlanRunSucceeded || len(r.Steps[1].JobIDs) != 1 {
		t.Fatalf("the resumed drill: %s (%s), launch jobs %v\n%s", r.State, r.Reason, r.Steps[1].JobIDs, c.cli("plan", "report", id))
	}
	jobs, err := c.admin.Jobs(context.Background(), 100, "")
	if err != nil {
		t.Fatal(err)
	}
	launches := 0
	for _, j := range jobs.Items {
		if strings.HasPrefix(j.CreatedBy, "plan:"+id) && j.Type == api.JobLaunch {
			launches++
		}
	}
	if launches != 1 {
		t.Fatalf("the drill resumed after the restart started %d launch jobs, want 1", launches)
	}

	// A scheduled drill: it runs by itself, terminates what it launched, keeps its report.
	out := c.cli("plan", "apply", "-f", write("db-scheduled.yaml", "schedule:\n  drill: \"@every 10s\"\n"))
	if !strings.Contains(out, "+schedule:") {
		t.Fatalf("plan apply of version 2 shows no difference with version 1:\n%s", out)
	}
	var sched api.PlanRunSummary
	for deadline := time.Now().Add(3 * time.Minute); sched.ID == ""; time.Sleep(time.Second) {
		runs, err := c.admin.PlanRuns(context.Background(), "db", 10, "")
		if err == nil {
			for _, s := range runs.Items {
				if s.Scheduled && s.State != api.PlanRunRunning {
					sched = s
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scheduled drill ended within 3 minutes: %+v (%v)", runs.Items, err)
		}
	}
	report := c.cli("plan", "report", sched.ID)
	if sched.State != api.PlanRunSucceeded || !strings.Contains(report, "terminate") || !strings.Contains(report, "scheduled") {
		t.Fatalf("scheduled drill %s: %s\n%s", sched.ID, sched.State, report)
	}
	all, err := c.admin.RecoveryInstances(context.Background(), api.RecoveryInstanceFilter{})
	if err != nil || len(all.Items) != 1 { // the first drill's, which did not say terminate
		t.Fatalf("after the scheduled drill: %d recovery instances running (%v), want only the unscheduled drill's", len(all.Items), err)
	}
	if reports := c.cli("plan", "reports", "db"); !strings.Contains(reports, "drill (scheduled)") {
		t.Fatalf("plan reports db:\n%s", reports)
	}
}
