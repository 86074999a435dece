package controlplane

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// Recovery plans (docs/plans.md): the API over stored plans, their versions, their
// secrets and their runs. Runs execute in planrun.go.

// parsePlan parses a plan file for the caller's account, refusing what the account may
// not do: commands (system account only), load balancer sockets outside its host paths,
// secrets it does not have.
func (c *call) parsePlan(tx *db.Tx, source string) (*plan.Plan, error) {
	p, err := plan.Parse([]byte(source))
	if err != nil {
		return nil, api.Invalid("the plan file is not valid: %v", err)
	}
	if p.RunsCommands() && !c.p.System {
		return nil, api.Forbidden("plan %s runs scripts or command checks on the control plane's host: only the system account's plans may", p.Name)
	}
	for _, w := range p.Waves {
		for _, s := range w.Steps {
			if s.HAProxy != nil && s.HAProxy.Socket != "" {
				if err := c.hostPaths().Check(s.HAProxy.Socket); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, name := range p.Secrets() {
		if _, err := tx.PlanSecret(c.p.AccountID, name); errors.Is(err, db.ErrNotFound) {
			return nil, api.Invalid("plan %s names secret %s, which does not exist: store it first with lifeboat plan secrets set %s --from-file FILE",
				p.Name, name, name)
		} else if err != nil {
			return nil, err
		}
	}
	return p, nil
}

// applyPlan stores a plan file as the plan's next version (unless it is the newest
// already), once its selectors all match source servers.
func (c *call) applyPlan(req *api.ApplyPlanRequest) (api.ApplyPlanResponse, error) {
	var out api.ApplyPlanResponse
	var p *plan.Plan
	if err := c.view(func(tx *db.Tx) (err error) { p, err = c.parsePlan(tx, req.Source); return err }); err != nil {
		return out, err
	}
	servers, err := c.planServers(p)
	if err != nil {
		return out, err
	}
	now := c.cp.cfg.Now()
	err = c.update(func(tx *db.Tx) error {
		row := db.Plan{AccountID: c.p.AccountID, Name: p.Name, Version: 1, Source: req.Source, Servers: servers,
			CreatedBy: c.createdBy(), CreatedAt: now, UpdatedAt: now}
		old, err := tx.Plan(c.p.AccountID, p.Name)
		switch {
		case err == nil:
			row.Version, row.CreatedAt = old.Version+1, old.CreatedAt
			out.Diff = plan.Diff(fmt.Sprintf("%s version %d", p.Name, old.Version), fmt.Sprintf("%s version %d", p.Name, row.Version),
				[]byte(old.Source), []byte(req.Source))
		case !errors.Is(err, db.ErrNotFound):
			return err
		}
		if err == nil && old.Source == req.Source {
			out.Plan, err = c.apiPlan(tx, old)
			return err
		}
		out.Changed = true
		if p.Schedule != nil {
			next, err := p.Schedule.Next(now)
			if err != nil {
				return api.Invalid("the plan's schedule: %v", err)
			}
			row.Schedule, row.NextDrillAt = p.Schedule.Drill, next
		}
		if req.DryRun {
			out.Plan, err = c.apiPlan(tx, row)
			return err
		}
		if err := tx.PutPlan(row); err != nil {
			return err
		}
		if err := c.record(tx, c.p.AccountID, "plan.apply", "plan", p.Name, map[string]any{"version": row.Version, "servers": servers}, nil); err != nil {
			return err
		}
		out.Plan, err = c.apiPlan(tx, row)
		return err
	})
	return out, err
}

// planServers counts the servers a plan selects, refusing selectors that match none
// and servers selected by two waves (the run would fail at its first step).
func (c *call) planServers(p *plan.Plan) (int, error) {
	env := c.cp.planEnv(c.p.AccountID, p.Name)
	r := plan.Runner{Env: env, Plan: p, Run: &api.PlanRun{}}
	n, err := r.SelectAll(c.ctx)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status != http.StatusNotFound {
			return 0, err
		}
		return 0, api.Invalid("plan %s: %v", p.Name, err)
	}
	return n, nil
}

// apiPlan is a stored plan as the API shows it, with its newest run.
func (c *call) apiPlan(tx *db.Tx, row db.Plan) (api.Plan, error) {
	out := api.Plan{Name: row.Name, Version: row.Version, Source: row.Source, Servers: row.Servers, Schedule: row.Schedule,
		CreatedBy: row.CreatedBy, CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt}
	if p, err := plan.Parse([]byte(row.Source)); err == nil {
		out.Description, out.Waves = p.Description, len(p.Waves)
	}
	if !row.NextDrillAt.IsZero() {
		t := row.NextDrillAt
		out.NextDrillAt = &t
	}
	runs, _, err := tx.PlanRuns(c.p.AccountID, row.Name, 1, "")
	if err != nil {
		return out, err
	}
	if len(runs) > 0 {
		s := runs[0].Summary()
		out.LastRun = &s
	}
	return out, nil
}

// loadPlan reads a plan of the caller's account (404 otherwise).
func (c *call) loadPlan(tx *db.Tx, name string) (db.Plan, error) {
	p, err := tx.Plan(c.p.AccountID, name)
	if errors.Is(err, db.ErrNotFound) {
		return p, api.NotFound("plan %s was not found: see lifeboat plan list", name)
	}
	return p, err
}

func (c *call) listPlans() (api.PlanList, error) {
	out := api.PlanList{Items: []api.Plan{}}
	err := c.view(func(tx *db.Tx) error {
		rows, err := tx.Plans(c.p.AccountID)
		if err != nil {
			return err
		}
		for _, row := range rows {
			p, err := c.apiPlan(tx, row)
			if err != nil {
				return err
			}
			out.Items = append(out.Items, p)
		}
		return nil
	})
	return out, err
}

func (c *call) getPlan() (out api.Plan, err error) {
	err = c.view(func(tx *db.Tx) error {
		row, err := c.loadPlan(tx, c.pathID())
		if err == nil {
			out, err = c.apiPlan(tx, row)
		}
		return err
	})
	return out, err
}

// planVersionList is the versions of a plan, newest first.
type planVersionList struct {
	Items []api.PlanVersion `json:"items"`
}

func (c *call) planVersions() (out planVersionList, err error) {
	err = c.view(func(tx *db.Tx) error {
		if _, err := c.loadPlan(tx, c.pathID()); err != nil {
			return err
		}
		out.Items, err = tx.PlanVersions(c.p.AccountID, c.pathID())
		return err
	})
	return out, err
}

// diffPlan compares two versions of a plan: ?from=&to= (default: the newest and the one
// before it).
func (c *call) diffPlan() (api.PlanDiff, error) {
	var out api.PlanDiff
	err := c.view(func(tx *db.Tx) error {
		row, err := c.loadPlan(tx, c.pathID())
		if err != nil {
			return err
		}
		q := c.r.URL.Query()
		out.To, out.From = row.Version, row.Version-1
		for name, dst := range map[string]*int{"to": &out.To, "from": &out.From} {
			if v := q.Get(name); v != "" {
				if *dst, err = strconv.Atoi(v); err != nil || *dst < 1 || *dst > row.Version {
					return api.Invalid("%s must be a version of plan %s, 1 to %d", name, row.Name, row.Version)
				}
			}
		}
		if out.From < 1 {
			return nil // one version: nothing to compare
		}
		versions, err := tx.PlanVersions(c.p.AccountID, row.Name)
		if err != nil {
			return err
		}
		src := map[int]string{}
		for _, v := range versions {
			src[v.Version] = v.Source
		}
		out.Diff = plan.Diff(fmt.Sprintf("%s version %d", row.Name, out.From), fmt.Sprintf("%s version %d", row.Name, out.To),
			[]byte(src[out.From]), []byte(src[out.To]))
		return nil
	})
	return out, err
}

// deletePlan deletes a plan with its versions and reports, unless it runs.
func (c *call) deletePlan() (noBody, error) {
	return noBody{}, c.update(func(tx *db.Tx) error {
		row, err := c.loadPlan(tx, c.pathID())
		if err != nil {
			return err
		}
		if r, err := tx.LastPlanRun(c.p.AccountID, row.Name, "", api.PlanRunRunning); err != nil {
			return err
		} else if r != nil {
			return api.Conflict("plan %s has run %s running: wait for it to end", row.Name, r.ID)
		}
		if err := tx.DeletePlan(c.p.AccountID, row.Name); err != nil {
			return err
		}
		return c.record(tx, c.p.AccountID, "plan.delete", "plan", row.Name, nil, nil)
	})
}

// listPlanRuns lists a plan's runs, newest first.
func (c *call) listPlanRuns() (api.PlanRunList, error) {
	out := api.PlanRunList{Items: []api.PlanRunSummary{}}
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return out, err
	}
	err = c.view(func(tx *db.Tx) error {
		if _, err := c.loadPlan(tx, c.pathID()); err != nil {
			return err
		}
		runs, next, err := tx.PlanRuns(c.p.AccountID, c.pathID(), limit, q.Get("page_token"))
		for _, r := range runs {
			out.Items = append(out.Items, r.Summary())
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

// loadPlanRun reads a run of the caller's account (404 otherwise).
func (c *call) loadPlanRun() (api.PlanRun, error) {
	var r db.PlanRun
	err := c.view(func(tx *db.Tx) (err error) { r, err = tx.PlanRunByID(c.p.AccountID, c.pathID()); return err })
	if errors.Is(err, db.ErrNotFound) {
		return r.PlanRun, api.NotFound("plan run %s was not found: see lifeboat plan reports PLAN", c.pathID())
	}
	return r.PlanRun, err
}

func (c *call) getPlanRun() (api.PlanRun, error) { return c.loadPlanRun() }

// planRunHTML serves a run's report as a page.
func (c *call) planRunHTML(w http.ResponseWriter) error {
	r, err := c.loadPlanRun()
	if err != nil {
		return err
	}
	page, err := plan.HTML(&r)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	_, err = w.Write(page)
	return err
}

// setPlanSecret stores a plan secret, sealed by the master key.
func (c *call) setPlanSecret(req *api.SetPlanSecretRequest) (api.PlanSecret, error) {
	name := c.pathID()
	if !api.ValidName(name) {
		return api.PlanSecret{}, api.Invalid("secret name %q must be 1-63 lowercase letters, digits or '-'", name)
	}
	now := c.cp.cfg.Now()
	sealed := c.cp.keys.master.Wrap([]byte(req.Value), planSecretAAD(c.p.AccountID, name))
	err := c.update(func(tx *db.Tx) error {
		list, err := tx.PlanSecrets(c.p.AccountID)
		if err != nil {
			return err
		}
		if len(list) >= api.MaxPlanSecretsPerAcc && !slices.ContainsFunc(list, func(s api.PlanSecret) bool { return s.Name == name }) {
			return api.Conflict("the account has %d plan secrets, the most it may", len(list))
		}
		if err := tx.PutPlanSecret(c.p.AccountID, name, sealed, now); err != nil {
			return err
		}
		return c.record(tx, c.p.AccountID, "plan-secret.set", "plan-secret", name, nil, nil)
	})
	return api.PlanSecret{Name: name, UpdatedAt: now}, err
}

// planSecretAAD binds a sealed plan secret to its account and name.
func planSecretAAD(account, name string) string {
	return "lifeboat plan secret\x00" + account + "\x00" + name
}

func (c *call) listPlanSecrets() (out api.PlanSecretList, err error) {
	err = c.view(func(tx *db.Tx) error { out.Items, err = tx.PlanSecrets(c.p.AccountID); return err })
	return out, err
}

func (c *call) deletePlanSecret() (noBody, error) {
	return noBody{}, c.update(func(tx *db.Tx) error {
		if err := tx.DeletePlanSecret(c.p.AccountID, c.pathID()); errors.Is(err, db.ErrNotFound) {
			return api.NotFound("plan secret %s was not found: see lifeboat plan secrets list", c.pathID())
		} else if err != nil {
			return err
		}
		return c.record(tx, c.p.AccountID, "plan-secret.delete", "plan-secret", c.pathID(), nil, nil)
	})
}

// planRoutes are the routes of recovery plans (plans.go, planrun.go). A plan is named
// by its name.
func planRoutes() []*route {
	return []*route{
		{method: "POST", path: "/api/v1/plans", summary: "Apply a plan file: a new plan, or a new version of one (dryRun: check it and show the difference)",
			access: operator, endpoint: withBody((*call).applyPlan)},
		{method: "GET", path: "/api/v1/plans", summary: "List recovery plans, by name", access: viewer, endpoint: noBodyEndpoint((*call).listPlans)},
		{method: "GET", path: "/api/v1/plans/{id}", summary: "Describe a recovery plan: its newest version and last run", access: viewer,
			endpoint: noBodyEndpoint((*call).getPlan)},
		{method: "DELETE", path: "/api/v1/plans/{id}", summary: "Delete a recovery plan, its versions and its reports", access: operator,
			status: 204, endpoint: noBodyEndpoint((*call).deletePlan)},
		{method: "GET", path: "/api/v1/plans/{id}/versions", summary: "List a plan's versions, newest first", access: viewer,
			endpoint: noBodyEndpoint((*call).planVersions)},
		{method: "GET", path: "/api/v1/plans/{id}/diff", summary: "Compare two versions of a plan (unified diff)", access: viewer,
			query:    []queryParam{{"from", "integer", "older version (default: the one before to)"}, {"to", "integer", "newer version (default: the newest)"}},
			endpoint: noBodyEndpoint((*call).diffPlan)},
		{method: "POST", path: "/api/v1/plans/{id}/runs", summary: "Start a drill, failover or failback of a plan, or a dry run of one",
			access: operator, status: 201, endpoint: withBody((*call).startPlanRun)},
		{method: "GET", path: "/api/v1/plans/{id}/runs", summary: "List a plan's runs (its reports), newest first", access: viewer, query: pagingQry,
			endpoint: noBodyEndpoint((*call).listPlanRuns)},
		{method: "GET", path: "/api/v1/plan-runs/{id}", summary: "A plan run and its report", access: viewer, endpoint: noBodyEndpoint((*call).getPlanRun)},
		{method: "GET", path: "/api/v1/plan-runs/{id}/report.html", summary: "A plan run's report as an HTML page", access: viewer,
			endpoint: endpoint{raw: true, contentType: "text/html", serve: func(c *call, w http.ResponseWriter) (any, error) { return nil, c.planRunHTML(w) }}},
		{method: "PUT", path: "/api/v1/plan-secrets/{id}", summary: "Store a plan secret (a TSIG key, a webhook key, a CA); it is never answered back",
			access: admin, endpoint: withBody((*call).setPlanSecret)},
		{method: "GET", path: "/api/v1/plan-secrets", summary: "List plan secrets (names only)", access: operator, endpoint: noBodyEndpoint((*call).listPlanSecrets)},
		{method: "DELETE", path: "/api/v1/plan-secrets/{id}", summary: "Delete a plan secret", access: admin, status: 204,
			endpoint: noBodyEndpoint((*call).deletePlanSecret)},
	}
}
