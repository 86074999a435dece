package controlplane_test

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// second starts another control plane on e's database, with a copy of e's data
// directory (its CA and keys) but a runner id of its own, as a second host would run.
func (e *env) second() (*controlplane.ControlPlane, func()) {
	t := e.t
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(e.dataDir)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "runner-id")); err != nil {
		t.Fatal(err)
	}
	cfg := controlplane.Config{DataDir: dir, DBURL: e.dbURL, Listen: "127.0.0.1:0", Now: e.clock.Now,
		HeartbeatInterval: time.Hour, ReplicatorTimeout: 45 * time.Second, AgentTimeout: e.agentTimeout}
	if e.configure != nil {
		e.configure(&cfg)
	}
	cp, err := controlplane.Open(e.ctx, cfg)
	if err != nil {
		t.Fatalf("open a second control plane: %v", err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		cp.Close()
	}
	t.Cleanup(stop)
	return cp, stop
}

func waitFor(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOneOfTwoControlPlanesCoordinates: two control planes on one database both serve
// the API, one coordinates (assignment, groups, plan runs, scheduled drills), and when
// it stops the other takes over within the lease.
func TestOneOfTwoControlPlanesCoordinates(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			e := startWith(t, kind, func(c *controlplane.Config) { c.CoordinatorLease = 2 * time.Second })
			waitFor(t, "the first control plane coordinates", 5*time.Second, e.cp.Coordinating)
			cp2, stop2 := e.second()
			time.Sleep(1500 * time.Millisecond) // three renewals
			if cp2.Coordinating() || !e.cp.Coordinating() {
				t.Fatalf("coordinating: first %v, second %v; want only the first", e.cp.Coordinating(), cp2.Coordinating())
			}
			// The second serves the API as the first does: same tokens, same answers.
			token := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
			c2, err := api.NewClient(api.ClientConfig{Server: cp2.URL(), Token: token, CAPEM: cp2.CACertPEM()})
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if _, err := c2.ListSourceServers(e.ctx, api.SourceServerFilter{}); err != nil {
				t.Fatalf("the second control plane does not serve the API: %v", err)
			}
			if h, err := c2.Health(e.ctx); err != nil || h.Coordinator {
				t.Errorf("the second's health: %+v, %v; want coordinator false", h, err)
			}
			if h, err := e.admin.Health(e.ctx); err != nil || !h.Coordinator {
				t.Errorf("the first's health: %+v, %v; want coordinator true", h, err)
			}
			stopped := time.Now()
			e.stopCurrent()
			waitFor(t, "the second control plane takes over", 3*time.Second, cp2.Coordinating)
			t.Logf("the second coordinates %v after the first stopped (it gave up the lease)", time.Since(stopped).Round(time.Millisecond))
			stop2()
		})
	}
}

// TestACrashedCoordinatorsLeaseLapses: a coordinator that died without giving up its
// lease holds it until it lapses, then another control plane takes it, within a
// quarter of the lease.
func TestACrashedCoordinatorsLeaseLapses(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			const ttl = 2 * time.Second
			e := startWith(t, kind, func(c *controlplane.Config) { c.CoordinatorLease = ttl })
			waitFor(t, "the first control plane coordinates", 5*time.Second, e.cp.Coordinating)
			e.stopCurrent()
			// What a crashed coordinator leaves: its lease, not given up.
			d, err := db.Open(e.ctx, e.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			now := e.clock.Now()
			if err := d.Update(e.ctx, func(tx *db.Tx) error {
				ok, err := tx.TakeLease("coordinator", "crashed-host", now, now.Add(ttl))
				if err == nil && !ok {
					err = errors.New("the crashed host did not get the lease")
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			cp2, _ := e.second()
			time.Sleep(ttl) // four renewals at least: the lease holds (the clock stands still)
			if cp2.Coordinating() {
				t.Fatal("the second control plane coordinates while the crashed one's lease holds")
			}
			e.clock.Advance(ttl + time.Millisecond)
			lapsed := time.Now()
			waitFor(t, "the second control plane takes over", ttl, cp2.Coordinating)
			t.Logf("the second coordinates %v after the crashed one's lease lapsed (lease %v)", time.Since(lapsed).Round(time.Millisecond), ttl)
			var l db.Lease
			if err := d.View(e.ctx, func(tx *db.Tx) (err error) { l, err = tx.LeaseHolder("coordinator"); return err }); err != nil || l.Holder == "crashed-host" {
				t.Errorf("the lease after the takeover: %+v, %v", l, err)
			}
		})
	}
}

// TestPlanRunsAndScheduledDrillsRunOnceOnTwoControlPlanes: a plan run started through
// the control plane that does not coordinate is run, once, by the one that does; a
// scheduled drill starts once; when the coordinator stops during it, the other resumes
// it at its step and it completes, once.
func TestPlanRunsAndScheduledDrillsRunOnceOnTwoControlPlanes(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			e := startWith(t, kind, func(c *controlplane.Config) { c.CoordinatorLease = 2 * time.Second })
			repo := recoverytest.Store(t, e.cp)
			srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
			imageSettings(t, e, srv.ID)
			recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute),
				recoverytest.Volume{Name: "vda", Image: image(t, 1<<20, 9)})
			waitFor(t, "the first control plane coordinates", 5*time.Second, e.cp.Coordinating)
			opTok := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleOperator})
			adminTok := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
			cp2, _ := e.second()
			op2, err := api.NewClient(api.ClientConfig{Server: cp2.URL(), Token: opTok, CAPEM: cp2.CACertPEM()})
			if err != nil {
				t.Fatal(err)
			}
			defer op2.Close()

			// A run started through the second runs in the first, once.
			if _, err := op2.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("drill", srv.ID, "") + "drill:\n  terminate: true\n"}); err != nil {
				t.Fatal(err)
			}
			run, err := op2.StartPlanRun(e.ctx, "drill", api.StartPlanRunRequest{Mode: api.PlanDrill})
			if err != nil {
				t.Fatal(err)
			}
			if run = waitRun(t, op2, run.ID, 60*time.Second, runEnded); run.State != api.PlanRunSucceeded {
				t.Fatalf("the run started on the second control plane ended as %+v", run)
			}
			wantRuns(t, op2, "drill", 1)

			// A scheduled drill waiting at its check on a port nothing listens on yet.
			port := testutil.FreePort(t)
			check := fmt.Sprintf("    healthChecks:\n      - name: port\n        tcp: {address: \"127.0.0.1:%d\"}\n        interval: 200ms\n        timeout: 1s\n        retries: 10000\n", port)
			if _, err := op2.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("nightly", srv.ID, check) + "schedule:\n  drill: \"@every 1m\"\n"}); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(time.Minute + time.Second)
			scheduled := waitScheduled(t, op2, "nightly")
			waitRun(t, op2, scheduled.ID, 60*time.Second, func(r api.PlanRun) bool {
				return runEnded(r) || runStep(t, r, api.PlanStepCheck).State == api.PlanStepRunning
			})

			// The coordinator stops mid-drill: the second takes over and resumes it.
			e.stopCurrent()
			waitFor(t, "the second control plane takes over", 3*time.Second, cp2.Coordinating)
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatalf("listen on the checked port: %v", err)
			}
			defer l.Close()
			waitRun(t, op2, scheduled.ID, 60*time.Second, func(r api.PlanRun) bool {
				return runEnded(r) || runStep(t, r, api.PlanStepTerminate).State == api.PlanStepRunning
			})
			// The drill's instance was launched by the first: its termination waits for
			// the first's claim on the job to lapse.
			e.clock.Advance(31 * time.Second)
			done := waitRun(t, op2, scheduled.ID, 60*time.Second, runEnded)
			if done.State != api.PlanRunSucceeded {
				t.Fatalf("the scheduled drill ended as %+v", done)
			}
			wantRuns(t, op2, "nightly", 1)
			admin2, err := api.NewClient(api.ClientConfig{Server: cp2.URL(), Token: adminTok, CAPEM: cp2.CACertPEM()})
			if err != nil {
				t.Fatal(err)
			}
			defer admin2.Close()
			audit, err := admin2.Audit(e.ctx, api.AuditFilter{Action: "plan.run", Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			if n := len(audit.Items); n != 2 {
				t.Errorf("plan.run audit entries: %d, want 2 (the run started by hand and the scheduled drill): %+v", n, audit.Items)
			}
		})
	}
}

// wantRuns checks a plan has n runs.
func wantRuns(t *testing.T, c *api.Client, plan string, n int) {
	t.Helper()
	l, err := c.PlanRuns(context.Background(), plan, 0, "")
	if err != nil || len(l.Items) != n {
		t.Fatalf("runs of plan %s: %+v, %v; want %d", plan, l.Items, err, n)
	}
}

// waitScheduled waits for the scheduled drill of a plan to start and returns it.
func waitScheduled(t *testing.T, c *api.Client, plan string) api.PlanRunSummary {
	t.Helper()
	var run api.PlanRunSummary
	waitFor(t, "the scheduled drill of "+plan+" starts", 15*time.Second, func() bool {
		l, err := c.PlanRuns(context.Background(), plan, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Items {
			if r.Scheduled {
				run = r
				return true
			}
		}
		return false
	})
	return run
}

// TestAChangeThroughOneControlPlaneWakesAgentsWaitingOnTheOther: an agent long-polling
// the second control plane for its config learns at once of a change made through the
// first (PostgreSQL's notifications), not at the end of its poll.
func TestAChangeThroughOneControlPlaneWakesAgentsWaitingOnTheOther(t *testing.T) {
	e := startWith(t, db.Postgres, nil)
	_, reg := e.agent("m1")
	id := reg.SourceServer.ID
	cp2, _ := e.second()
	_, keyPEM := csr(t)
	cert, err := tls.X509KeyPair([]byte(reg.Certificate), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	agent2, err := api.NewClient(api.ClientConfig{Server: cp2.URL(), CAPEM: cp2.CACertPEM(), Certificate: &cert})
	if err != nil {
		t.Fatal(err)
	}
	defer agent2.Close()
	cfg, err := agent2.ReplicationConfigWait(e.ctx, id, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		cfg  api.ReplicationConfig
		err  error
		took time.Duration
	}
	got := make(chan answer, 1)
	time.Sleep(500 * time.Millisecond) // the second listens
	go func() {
		start := time.Now()
		c, err := agent2.ReplicationConfigWait(e.ctx, id, cfg.Fingerprint(), 20*time.Second)
		got <- answer{c, err, time.Since(start)}
	}()
	time.Sleep(500 * time.Millisecond) // the poll waits
	if _, err := e.admin.ReplicationAction(e.ctx, id, api.ActionPause); err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a.err != nil || a.cfg.Fingerprint() == cfg.Fingerprint() {
		t.Fatalf("the long poll on the second control plane: %+v, %v; want the paused config", a.cfg, a.err)
	}
	if a.took > 5*time.Second {
		t.Errorf("the agent waiting on the second control plane learned of the pause after %v, want at once", a.took)
	}
	t.Logf("the agent on the second control plane learned of a pause made through the first after %v", a.took.Round(time.Millisecond))
}

// TestACoordinatorWhoseDatabaseHangsStops: a coordinator whose lease renewals hang (the
// leases table locked by another transaction) stops coordinating within three
// quarters of the lease, before another could take it, and coordinates again once the
// database answers.
func TestACoordinatorWhoseDatabaseHangsStops(t *testing.T) {
	const ttl = 2 * time.Second
	e := startWith(t, db.Postgres, func(c *controlplane.Config) { c.CoordinatorLease = ttl })
	waitFor(t, "the control plane coordinates", 5*time.Second, e.cp.Coordinating)
	sdb, err := sql.Open("pgx", e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	tx, err := sdb.BeginTx(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(e.ctx, "LOCK TABLE leases IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	locked := time.Now()
	waitFor(t, "the coordinator stops", ttl, func() bool { return !e.cp.Coordinating() })
	took := time.Since(locked)
	t.Logf("the coordinator stopped %v after its database stopped answering (lease %v)", took.Round(time.Millisecond), ttl)
	if took > ttl*3/4+200*time.Millisecond {
		t.Errorf("the coordinator stopped %v after its database hung; want within three quarters of the lease (%v)", took, ttl*3/4)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the control plane coordinates again", 2*ttl, e.cp.Coordinating)
}

// TestGroupPointReportsThroughEitherControlPlane: members of a consistency group whose
// agents reach different control planes meet at the group point's barriers (reports
// reaching the one that does not coordinate are relayed to the one that does): every
// member freezes, then thaws at one instant.
func TestGroupPointReportsThroughEitherControlPlane(t *testing.T) {
	e := startWith(t, db.Postgres, nil)
	waitFor(t, "the first control plane coordinates", 5*time.Second, e.cp.Coordinating)
	ms, _ := replicatingGroup(t, e, 3)
	cp2, _ := e.second()
	time.Sleep(500 * time.Millisecond) // the second listens
	// The first member's agent reaches the second control plane.
	_, keyPEM := csr(t)
	cert, err := tls.X509KeyPair([]byte(ms[0].cert), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	agent2, err := api.NewClient(api.ClientConfig{Server: cp2.URL(), CAPEM: cp2.CACertPEM(), Certificate: &cert})
	if err != nil {
		t.Fatal(err)
	}
	defer agent2.Close()
	ms[0].agent = agent2
	gp := invitation(t, e, ms[0])
	for _, d := range reportAll(t, e, ms, gp.ID, api.GroupPhaseReady) {
		if d.Action != api.GroupActionFreeze {
			t.Fatalf("ready answered %+v, want freeze", d)
		}
	}
	var at time.Time
	for _, d := range reportAll(t, e, ms, gp.ID, api.GroupPhaseFrozen) {
		if d.Action != api.GroupActionThaw || d.Time == nil || !at.IsZero() && !d.Time.Equal(at) {
			t.Fatalf("frozen answered %+v, want thaw at one instant for all", d)
		}
		at = *d.Time
	}
}
