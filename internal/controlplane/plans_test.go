package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// onePlanYAML is a plan of one wave selecting one server by id (%[2]s), with more
// YAML (%[3]s) appended to its wave.
const onePlanYAML = `name: %[1]s
description: one server
waves:
  - name: web
    servers:
      - id: %[2]s
%[3]s`

func onePlan(name, server, more string) string { return fmt.Sprintf(onePlanYAML, name, server, more) }

// raw sends a request with a bearer token and returns the answer's status, headers and body.
func (e *env) raw(method, path, token, body string) (int, http.Header, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.cp.URL()+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.httpClient("").Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// apiMessage checks err is an API error of the status and returns its message.
func apiMessage(t *testing.T, err error, status int, says ...string) string {
	t.Helper()
	ae := wantAPIError(t, err, status, "")
	for _, s := range says {
		if !strings.Contains(ae.Message, s) {
			t.Errorf("the %d answer %q does not say %q", status, ae.Message, s)
		}
	}
	return ae.Message
}

// TestPlanApplyVersionsAndRefusals: a plan is stored as version 1, the same file again
// changes nothing, a changed one becomes version 2 with its diff; versions and diffs
// are listed; plans that would fail (bad YAML, selectors matching nothing, unknown
// servers and secrets) are refused with the reason, as are commands and host sockets
// in plans of accounts other than the system account.
func TestPlanApplyVersionsAndRefusals(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		op, viewer := e.userClient(api.RoleOperator), e.userClient(api.RoleViewer)
		_, reg := e.agent("m-web")
		srv := reg.SourceServer.ID

		v1 := onePlan("shop", srv, "")
		got, err := op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: v1})
		if err != nil {
			t.Fatal(err)
		}
		if !got.Changed || got.Diff != "" || got.Plan.Version != 1 || got.Plan.Servers != 1 || got.Plan.Waves != 1 ||
			got.Plan.Description != "one server" || got.Plan.Source != v1 || got.Plan.LastRun != nil {
			t.Fatalf("the first apply: %+v", got)
		}
		if got, err := op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: v1}); err != nil || got.Changed || got.Plan.Version != 1 {
			t.Fatalf("applying the same file again: %+v, %v, want version 1 unchanged", got, err)
		}
		v2 := strings.Replace(v1, "description: one server", "description: one web server", 1)
		// A dry run says what would change, and stores nothing.
		if got, err := op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: v2, DryRun: true}); err != nil || !got.Changed || got.Plan.Version != 2 ||
			!strings.Contains(got.Diff, "+description: one web server") {
			t.Fatalf("a dry run of version 2: %+v, %v", got, err)
		}
		if p, err := viewer.GetPlan(e.ctx, "shop"); err != nil || p.Version != 1 {
			t.Fatalf("after a dry run: %+v, %v, want version 1 still", p, err)
		}
		got, err = op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: v2})
		if err != nil {
			t.Fatal(err)
		}
		if !got.Changed || got.Plan.Version != 2 || !strings.Contains(got.Diff, "-description: one server") ||
			!strings.Contains(got.Diff, "+description: one web server") || !strings.Contains(got.Diff, "shop version 1") {
			t.Fatalf("version 2: %+v", got)
		}
		vs, err := viewer.PlanVersions(e.ctx, "shop")
		if err != nil || len(vs) != 2 || vs[0].Version != 2 || vs[0].Source != v2 || vs[1].Version != 1 || vs[1].Source != v1 {
			t.Fatalf("versions: %+v, %v, want 2 then 1", vs, err)
		}
		d, err := viewer.DiffPlan(e.ctx, "shop", 0, 0)
		if err != nil || d.From != 1 || d.To != 2 || !strings.Contains(d.Diff, "+description: one web server") {
			t.Fatalf("the diff of the newest two: %+v, %v", d, err)
		}
		if d, err := viewer.DiffPlan(e.ctx, "shop", 2, 1); err != nil || !strings.Contains(d.Diff, "-description: one web server") {
			t.Fatalf("the diff from 2 to 1: %+v, %v", d, err)
		}
		_, err = viewer.DiffPlan(e.ctx, "shop", 3, 0)
		apiMessage(t, err, 400, "1 to 2")
		_, err = viewer.DiffPlan(e.ctx, "nope", 0, 0)
		wantAPIError(t, err, 404, api.CodeNotFound)
		_, err = viewer.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: v2})
		wantAPIError(t, err, 403, api.CodeForbidden)

		// Refused plans: each with what is wrong, and nothing stored.
		unknown := "name: bad\nwaves:\n  - name: web\n    colour: blue\n    servers:\n      - id: " + srv + "\n"
		_, err = op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: unknown})
		apiMessage(t, err, 400, "line 4", "colour")
		_, err = op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: strings.Replace(onePlan("bad", srv, ""), "- id: "+srv, "- tags: {tier: nowhere}", 1)})
		apiMessage(t, err, 400, "tier=nowhere", "matches no source server")
		const missing = "s-00000000000000bad"
		_, err = op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("bad", missing, "")})
		apiMessage(t, err, 400, missing, "not found")
		hook := `    steps:
      - name: notify
        webhook: {url: "https://127.0.0.1:9/hook", secret: hook-key}
`
		_, err = op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("notify", srv, hook)})
		apiMessage(t, err, 400, "hook-key", "does not exist")
		if l, err := viewer.ListPlans(e.ctx); err != nil || len(l.Items) != 1 || l.Items[0].Name != "shop" {
			t.Fatalf("plans after the refusals: %+v, %v, want shop alone", l, err)
		}

		// Commands on the control plane's host: the system account's plans only.
		tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
		if err != nil {
			t.Fatal(err)
		}
		ta := e.client(tenant.AdminToken)
		theirs := recoveryServerIn(t, e, tenant.Account.ID, "m-tenant")
		script := "    steps:\n      - name: hook\n        script: {run: \"true\"}\n"
		command := "    healthChecks:\n      - name: up\n        command: {run: \"true\"}\n"
		for what, more := range map[string]string{"a script step": script, "a command check": command} {
			_, err = ta.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("cmd", theirs, more)})
			apiMessage(t, err, 403, "system account")
			if got, err := op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("cmd", srv, more)}); err != nil || !got.Changed {
				t.Errorf("%s in a plan of the system account: %+v, %v", what, got, err)
			}
		}
		// HAProxy's socket is a path on the host; its TCP address is not.
		lb := `    steps:
      - name: lb
        haproxy:
          %s
          backend: dr
          servers:
            - {name: web1, instance: %s, port: 80}
`
		_, err = ta.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("lb", theirs, fmt.Sprintf(lb, "socket: /run/haproxy/admin.sock", theirs))})
		apiMessage(t, err, 403, "/run/haproxy/admin.sock")
		if got, err := ta.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("lb", theirs, fmt.Sprintf(lb, "address: 127.0.0.1:9999", theirs))}); err != nil || got.Plan.Version != 1 {
			t.Errorf("the tenant's plan with HAProxy's TCP address: %+v, %v", got, err)
		}
		if got, err := op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("lb", srv, fmt.Sprintf(lb, "socket: /run/haproxy/admin.sock", srv))}); err != nil || got.Plan.Version != 1 {
			t.Errorf("the system account's plan with HAProxy's socket: %+v, %v", got, err)
		}
		// A server of the system account is not the tenant's to select; its plans are its own.
		_, err = ta.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("mine", srv, "")})
		apiMessage(t, err, 400, srv)
		_, err = ta.GetPlan(e.ctx, "shop")
		wantAPIError(t, err, 404, api.CodeNotFound)

		// Secrets: an admin stores one; no answer ever holds its value.
		adminTok := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
		const value = "c2VjcmV0LXZhbHVlLW9mLXRoZS1ob29r"
		status, _, body := e.raw("PUT", "/api/v1/plan-secrets/hook-key", adminTok, `{"value":"`+value+`"}`)
		if status != 200 || strings.Contains(body, value) || !strings.Contains(body, "hook-key") {
			t.Fatalf("PUT a secret: %d %s", status, body)
		}
		_, err = viewer.SetPlanSecret(e.ctx, "other", "x")
		wantAPIError(t, err, 403, api.CodeForbidden)
		_, err = op.SetPlanSecret(e.ctx, "other", "x")
		wantAPIError(t, err, 403, api.CodeForbidden)
		_, err = e.admin.SetPlanSecret(e.ctx, "Bad_Name", "x")
		wantAPIError(t, err, 400, api.CodeInvalid)
		got, err = op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("notify", srv, hook)})
		if err != nil || got.Plan.Version != 1 {
			t.Fatalf("the plan naming hook-key once it exists: %+v, %v", got, err)
		}
		for _, path := range []string{"/api/v1/plan-secrets", "/api/v1/plans/notify", "/api/v1/plans", "/api/v1/plans/notify/versions"} {
			status, _, body := e.raw("GET", path, adminTok, "")
			if status != 200 || strings.Contains(body, value) {
				t.Errorf("GET %s: %d, holding the secret's value: %v", path, status, strings.Contains(body, value))
			}
		}
		l, err := op.ListPlanSecrets(e.ctx)
		if err != nil || len(l.Items) != 1 || l.Items[0].Name != "hook-key" {
			t.Fatalf("secrets: %+v, %v", l, err)
		}
		if l, err := ta.ListPlanSecrets(e.ctx); err != nil || len(l.Items) != 0 {
			t.Errorf("the tenant's secrets: %+v, %v, want none", l, err)
		}
		err = ta.DeletePlanSecret(e.ctx, "hook-key")
		wantAPIError(t, err, 404, api.CodeNotFound)
		if err := e.admin.DeletePlanSecret(e.ctx, "hook-key"); err != nil {
			t.Fatal(err)
		}
		err = e.admin.DeletePlanSecret(e.ctx, "hook-key")
		wantAPIError(t, err, 404, api.CodeNotFound)
		if l, err := op.ListPlanSecrets(e.ctx); err != nil || len(l.Items) != 0 {
			t.Errorf("secrets after the delete: %+v, %v", l, err)
		}
		// The plan naming it now fails its next apply (and its runs).
		_, err = op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("notify", srv, hook) + "# v2\n"})
		apiMessage(t, err, 400, "hook-key")

		// Deletion takes the plan and its versions.
		if err := op.DeletePlan(e.ctx, "shop"); err != nil {
			t.Fatal(err)
		}
		_, err = viewer.GetPlan(e.ctx, "shop")
		wantAPIError(t, err, 404, api.CodeNotFound)
		_, err = viewer.PlanVersions(e.ctx, "shop")
		wantAPIError(t, err, 404, api.CodeNotFound)

		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{})
		if err != nil {
			t.Fatal(err)
		}
		actions := map[string]int{}
		for _, a := range audit.Items {
			actions[a.Action]++
		}
		// shop 1 and 2, cmd 1 and 2, lb, notify; the tenant's apply is in its own account.
		if actions["plan.apply"] != 6 || actions["plan-secret.set"] != 1 || actions["plan-secret.delete"] != 1 || actions["plan.delete"] != 1 {
			t.Errorf("audited %v", actions)
		}
	})
}

// waitRun polls a run until ok says it is as wanted, or fails the test at the deadline.
func waitRun(t *testing.T, c *api.Client, id string, deadline time.Duration, ok func(api.PlanRun) bool) api.PlanRun {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		r, err := c.PlanRun(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(r) {
			return r
		}
		if time.Now().After(end) {
			t.Fatalf("run %s is not as wanted after %s: %+v", id, deadline, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func runEnded(r api.PlanRun) bool { return r.State != api.PlanRunRunning }

// runStep returns the run's step of a kind.
func runStep(t *testing.T, r api.PlanRun, kind string) api.PlanRunStep {
	t.Helper()
	for _, s := range r.Steps {
		if s.Kind == kind {
			return s
		}
	}
	t.Fatalf("run %s has no %s step: %+v", r.ID, kind, r.Steps)
	return api.PlanRunStep{}
}

// TestPlanRunsDrillConflictAndResume: a dry run checks and stores nothing; a drill of
// one wave launches its server at its PIT (the image provider), terminates it and keeps
// its report, which only its account reads; a second run of a plan while one runs is
// refused; a run waiting on a health check when the control plane stops is resumed at
// that check by the next start, and succeeds.
func TestPlanRunsDrillConflictAndResume(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			e := &env{t: t, kind: kind, clock: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}, dataDir: t.TempDir(),
				ctx: context.Background(), agentTimeout: 10000 * time.Hour}
			dbURL := dbtest.URL(t, kind)
			e.open(dbURL)
			opTok, viewerTok := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleOperator}),
				e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
			op, viewer := e.client(opTok), e.client(viewerTok)
			repo := recoverytest.Store(t, e.cp)
			srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
			imageSettings(t, e, srv.ID)
			if _, err := op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("drill", srv.ID, "") + "drill:\n  terminate: true\n"}); err != nil {
				t.Fatal(err)
			}

			// A dry run without a PIT: it says so, and stores nothing.
			dry, err := op.StartPlanRun(e.ctx, "drill", api.StartPlanRunRequest{Mode: api.PlanDrill, DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if !dry.DryRun || dry.State != api.PlanRunFailed || len(dry.Checks) == 0 || dry.Checks[0].OK || !strings.Contains(dry.Reason, srv.ID) {
				t.Fatalf("a dry run without a PIT: %+v", dry)
			}
			pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute),
				recoverytest.Volume{Name: "vda", Image: image(t, 1<<20, 9)})
			dry, err = op.StartPlanRun(e.ctx, "drill", api.StartPlanRunRequest{Mode: api.PlanDrill, DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if dry.State != api.PlanRunSucceeded || dry.Reason != "" || len(dry.Servers) != 1 || dry.Servers[0].SnapshotID != pit.ID {
				t.Fatalf("a dry run with a PIT: %+v", dry)
			}
			for _, c := range dry.Checks {
				if !c.OK {
					t.Errorf("a precondition of the dry run does not hold: %+v", c)
				}
			}
			if l, err := viewer.PlanRuns(e.ctx, "drill", 0, ""); err != nil || len(l.Items) != 0 {
				t.Fatalf("runs after dry runs: %+v, %v, want none", l, err)
			}
			_, err = viewer.StartPlanRun(e.ctx, "drill", api.StartPlanRunRequest{Mode: api.PlanDrill})
			wantAPIError(t, err, 403, api.CodeForbidden)

			// The drill: resolve, launch, no checks, terminate.
			run, err := op.StartPlanRun(e.ctx, "drill", api.StartPlanRunRequest{Mode: api.PlanDrill})
			if err != nil {
				t.Fatal(err)
			}
			if !api.ValidID(api.PrefixPlanRun, run.ID) || run.State != api.PlanRunRunning || run.PlanVersion != 1 {
				t.Fatalf("the drill as started: %+v", run)
			}
			run = waitRun(t, viewer, run.ID, 90*time.Second, runEnded)
			if run.State != api.PlanRunSucceeded || run.EndedAt == nil || len(run.Servers) != 1 {
				t.Fatalf("the drill ended as %+v", run)
			}
			s := run.Servers[0]
			if s.SourceServerID != srv.ID || s.SnapshotID != pit.ID || s.RecoveryInstID == "" || s.JobID == "" || s.LaunchedAt == nil {
				t.Fatalf("the drill's server: %+v", s)
			}
			for kind, want := range map[string]string{api.PlanStepResolve: api.PlanStepDone, api.PlanStepLaunch: api.PlanStepDone,
				api.PlanStepCheck: api.PlanStepSkipped, api.PlanStepTerminate: api.PlanStepDone} {
				if st := runStep(t, run, kind); st.State != want {
					t.Errorf("the drill's %s step is %s (%s), want %s", kind, st.State, st.Message, want)
				}
			}
			job, err := op.Job(e.ctx, s.JobID)
			if err != nil || !job.IsDrill || job.CreatedBy != fmt.Sprintf("plan:%s/1", run.ID) {
				t.Errorf("the drill's job: %+v, %v, want a drill created by the run's launch step", job, err)
			}
			if ri, err := op.RecoveryInstance(e.ctx, s.RecoveryInstID); err != nil || !ri.IsDrill || ri.State != api.InstanceTerminated {
				t.Errorf("the drill's instance after the run: %+v, %v, want a terminated drill", ri, err)
			}
			if l, err := viewer.PlanRuns(e.ctx, "drill", 0, ""); err != nil || len(l.Items) != 1 || l.Items[0].ID != run.ID || l.Items[0].State != api.PlanRunSucceeded {
				t.Errorf("runs of the plan: %+v, %v", l, err)
			}
			if p, err := viewer.GetPlan(e.ctx, "drill"); err != nil || p.LastRun == nil || p.LastRun.ID != run.ID {
				t.Errorf("the plan's last run: %+v, %v", p.LastRun, err)
			}
			status, header, body := e.raw("GET", "/api/v1/plan-runs/"+run.ID+"/report.html", viewerTok, "")
			if status != 200 || !strings.HasPrefix(header.Get("Content-Type"), "text/html") || !strings.Contains(body, run.ID) {
				t.Errorf("the HTML report: %d %s, %d bytes holding the run id: %v", status, header.Get("Content-Type"), len(body), strings.Contains(body, run.ID))
			}
			tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.client(tenant.AdminToken).PlanRun(e.ctx, run.ID)
			wantAPIError(t, err, 404, api.CodeNotFound)
			if status, _, _ := e.raw("GET", "/api/v1/plan-runs/"+run.ID+"/report.html", tenant.AdminToken, ""); status != 404 {
				t.Errorf("the tenant reads the HTML report: %d, want 404", status)
			}

			// A run waiting on a port nothing listens on: a second run is refused.
			port := testutil.FreePort(t)
			check := fmt.Sprintf(`    healthChecks:
      - name: port
        tcp: {address: "127.0.0.1:%d"}
        interval: 200ms
        timeout: 1s
        retries: 10000
`, port)
			if _, err := op.ApplyPlan(e.ctx, api.ApplyPlanRequest{Source: onePlan("wait", srv.ID, check)}); err != nil {
				t.Fatal(err)
			}
			first, err := op.StartPlanRun(e.ctx, "wait", api.StartPlanRunRequest{Mode: api.PlanDrill})
			if err != nil {
				t.Fatal(err)
			}
			waiting := waitRun(t, viewer, first.ID, 90*time.Second, func(r api.PlanRun) bool {
				return runEnded(r) || runStep(t, r, api.PlanStepCheck).State == api.PlanStepRunning
			})
			if waiting.State != api.PlanRunRunning {
				t.Fatalf("the run ended before its check: %+v", waiting)
			}
			launchJobs := runStep(t, waiting, api.PlanStepLaunch).JobIDs
			_, err = op.StartPlanRun(e.ctx, "wait", api.StartPlanRunRequest{Mode: api.PlanDrill})
			apiMessage(t, err, 409, "two runs of a plan at once are refused", first.ID)
			err = op.DeletePlan(e.ctx, "wait")
			apiMessage(t, err, 409, first.ID)
			// Other plans run meanwhile.
			if r, err := op.StartPlanRun(e.ctx, "drill", api.StartPlanRunRequest{Mode: api.PlanDrill, DryRun: true}); err != nil || r.State != api.PlanRunSucceeded {
				t.Errorf("a dry run of another plan while wait runs: %+v, %v", r, err)
			}

			// The control plane stops: the run stays RUNNING, at its check.
			account := e.cp.SystemAccountID()
			e.stopCurrent()
			e.cp = nil
			d, err := db.Open(e.ctx, dbURL)
			if err != nil {
				t.Fatal(err)
			}
			var saved db.PlanRun
			err = d.View(e.ctx, func(tx *db.Tx) (err error) { saved, err = tx.PlanRunByID(account, first.ID); return err })
			d.Close()
			if err != nil {
				t.Fatal(err)
			}
			if saved.State != api.PlanRunRunning || runStep(t, saved.PlanRun, api.PlanStepCheck).State != api.PlanStepRunning {
				t.Fatalf("the run once the control plane stopped: %+v", saved.PlanRun)
			}

			// Something listens now; the next start resumes the run at its check.
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatalf("listen on the checked port: %v", err)
			}
			t.Cleanup(func() { l.Close() })
			e.open(dbURL)
			viewer = e.client(viewerTok)
			done := waitRun(t, viewer, first.ID, 60*time.Second, runEnded)
			if done.State != api.PlanRunSucceeded {
				t.Fatalf("the resumed run ended as %+v", done)
			}
			st := runStep(t, done, api.PlanStepCheck)
			if st.State != api.PlanStepDone || len(st.Checks) != 1 || !st.Checks[0].Passed || !st.StartedAt.Equal(*runStep(t, waiting, api.PlanStepCheck).StartedAt) {
				t.Errorf("the resumed check: %+v, want passed, started before the restart", st)
			}
			if got := runStep(t, done, api.PlanStepLaunch).JobIDs; !slices.Equal(got, launchJobs) {
				t.Errorf("the launch step's jobs after the restart: %v, want %v (no second launch)", got, launchJobs)
			}
			if done.Servers[0].HealthyAt == nil || done.RTOSeconds == nil {
				t.Errorf("the resumed run's server: %+v, RTO %v", done.Servers[0], done.RTOSeconds)
			}
			if _, err := e.client(opTok).StartPlanRun(e.ctx, "wait", api.StartPlanRunRequest{Mode: api.PlanDrill, DryRun: true}); err != nil {
				t.Errorf("a dry run of wait once its run ended: %v", err)
			}
		})
	}
}
