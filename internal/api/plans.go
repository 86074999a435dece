package api

import (
	"context"
	"net/url"
	"strconv"
	"time"
)

// Recovery plans (docs/plans.md): a YAML file that names servers in waves, the health
// checks that gate each wave and the steps (DNS, load balancer, webhooks, scripts) run
// once it is healthy. The control plane keeps every version applied, runs drills,
// failovers and failbacks of a plan, and keeps a report of every run.

// PrefixPlanRun starts the id of a plan run.
const PrefixPlanRun = "prun-"

// Plan run modes.
const (
	PlanDrill    = "drill"
	PlanFailover = "failover"
	PlanFailback = "failback"
)

// Plan run and step states.
const (
	PlanRunRunning   = "RUNNING"
	PlanRunSucceeded = "SUCCEEDED"
	PlanRunFailed    = "FAILED"

	PlanStepPending = "PENDING"
	PlanStepRunning = "RUNNING"
	PlanStepDone    = "DONE"
	PlanStepFailed  = "FAILED"
	PlanStepSkipped = "SKIPPED"
)

// Plan step kinds, in the order a run goes through them.
const (
	PlanStepResolve   = "resolve"   // the servers, and the PIT (or recovery instance) of each
	PlanStepLaunch    = "launch"    // a wave's drill or recovery job
	PlanStepReverse   = "reverse"   // failback: a wave's instances replicate back until ready
	PlanStepFailback  = "failback"  // failback: a wave's failback jobs
	PlanStepCheck     = "check"     // a wave's health checks
	PlanStepAction    = "step"      // one of a wave's steps (DNS, HAProxy, webhook, script)
	PlanStepTerminate = "terminate" // a drill's instances, after its checks
	PlanStepComplete  = "complete"  // failback: failback complete of every instance
)

// Plan limits.
const (
	MaxPlanFileBytes     = 1 << 20
	DefaultPlanRunsKept  = 100 // reports kept per plan; older ones are removed
	MaxPlanSecretBytes   = 16 << 10
	MaxPlanSecretsPerAcc = 1000
)

// Plan is a stored recovery plan: its newest version.
type Plan struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Version     int    `json:"version"`
	// Source is the plan file as applied (YAML).
	Source string `json:"source"`
	// Servers is how many source servers the plan's selectors matched when applied.
	Servers int `json:"servers"`
	Waves   int `json:"waves"`
	// Schedule is the cron schedule of its drills, if any; NextDrillAt when the next runs.
	Schedule    string          `json:"schedule,omitempty"`
	NextDrillAt *time.Time      `json:"nextDrillAt,omitempty"`
	LastRun     *PlanRunSummary `json:"lastRun,omitempty"`
	CreatedBy   string          `json:"createdBy"`
	CreatedAt   time.Time       `json:"createdAt"`
	UpdatedAt   time.Time       `json:"updatedAt"`
}

// PlanList lists an account's plans by name.
type PlanList struct {
	Items []Plan `json:"items"`
}

// ApplyPlanRequest stores a plan file: a new plan, or a new version of one.
type ApplyPlanRequest struct {
	Source string `json:"source"`
	// DryRun checks the plan (and the servers it selects) without storing it, and
	// answers the difference with the stored version.
	DryRun bool `json:"dryRun,omitempty"`
}

// Validate bounds an apply request; the plan itself is checked by the server.
func (r ApplyPlanRequest) Validate() error {
	if r.Source == "" {
		return Invalid("source must hold the plan file (YAML)")
	}
	if len(r.Source) > MaxPlanFileBytes {
		return Invalid("the plan file is %d bytes, over the limit of %d", len(r.Source), MaxPlanFileBytes)
	}
	return nil
}

// ApplyPlanResponse is the plan stored (or, on a dry run, as it would be) and the
// difference with the version before (a unified diff; empty when none).
type ApplyPlanResponse struct {
	Plan    Plan   `json:"plan"`
	Changed bool   `json:"changed"`
	Diff    string `json:"diff,omitempty"`
}

// PlanVersion is one version of a plan, as applied.
type PlanVersion struct {
	Version   int       `json:"version"`
	Source    string    `json:"source"`
	CreatedBy string    `json:"createdBy"`
	CreatedAt time.Time `json:"createdAt"`
}

// PlanDiff is the difference between two versions of a plan.
type PlanDiff struct {
	From int    `json:"from"`
	To   int    `json:"to"`
	Diff string `json:"diff"`
}

// StartPlanRunRequest starts a drill, failover or failback of a plan.
type StartPlanRunRequest struct {
	Mode string `json:"mode"`
	// At is the one point in time every server is launched at: each server's newest
	// consistent PIT at or before it, and a group's newest complete group point at or
	// before it. Absent: the run's start.
	At *time.Time `json:"at,omitempty"`
	// DryRun checks every precondition and says what the run would do; it changes
	// nothing and stores nothing.
	DryRun bool `json:"dryRun,omitempty"`
}

// Validate checks a run request.
func (r StartPlanRunRequest) Validate() error {
	switch r.Mode {
	case PlanDrill, PlanFailover, PlanFailback:
	default:
		return Invalid("mode must be drill, failover or failback, not %q", r.Mode)
	}
	if r.At != nil && r.Mode == PlanFailback {
		return Invalid("a failback takes no --at: it writes each recovery instance's newest data home")
	}
	return nil
}

// PlanRun is a run of a plan and its report: every step with its timing, every server
// with its PIT (RPO) and RTO, every health check's result.
type PlanRun struct {
	ID          string     `json:"id"`
	Plan        string     `json:"plan"`
	PlanVersion int        `json:"planVersion"`
	Mode        string     `json:"mode"`
	DryRun      bool       `json:"dryRun,omitempty"`
	Scheduled   bool       `json:"scheduled,omitempty"`
	At          *time.Time `json:"at,omitempty"`
	State       string     `json:"state"`
	// Reason says why a run failed: the step, and what went wrong.
	Reason    string             `json:"reason,omitempty"`
	CreatedBy string             `json:"createdBy"`
	StartedAt time.Time          `json:"startedAt"`
	EndedAt   *time.Time         `json:"endedAt,omitempty"`
	Servers   []PlanRunServer    `json:"servers"`
	Steps     []PlanRunStep      `json:"steps"`
	Checks    []PlanPrecondition `json:"preconditions,omitempty"` // dry runs
	// RTOSeconds is from the run's start until the last health check passed (or the
	// last launch ended, when the plan has no checks); set once the run succeeded.
	RTOSeconds *float64 `json:"rtoSeconds,omitempty"`
	// MaxRPOSeconds is the oldest PIT's RPO among the servers launched.
	MaxRPOSeconds *float64 `json:"maxRpoSeconds,omitempty"`
}

// PlanRunSummary is a run without its servers and steps (lists).
type PlanRunSummary struct {
	ID            string     `json:"id"`
	Plan          string     `json:"plan"`
	Mode          string     `json:"mode"`
	Scheduled     bool       `json:"scheduled,omitempty"`
	State         string     `json:"state"`
	Reason        string     `json:"reason,omitempty"`
	StartedAt     time.Time  `json:"startedAt"`
	EndedAt       *time.Time `json:"endedAt,omitempty"`
	RTOSeconds    *float64   `json:"rtoSeconds,omitempty"`
	MaxRPOSeconds *float64   `json:"maxRpoSeconds,omitempty"`
}

// Summary is the run without its servers and steps.
func (r PlanRun) Summary() PlanRunSummary {
	return PlanRunSummary{ID: r.ID, Plan: r.Plan, Mode: r.Mode, Scheduled: r.Scheduled, State: r.State, Reason: r.Reason,
		StartedAt: r.StartedAt, EndedAt: r.EndedAt, RTOSeconds: r.RTOSeconds, MaxRPOSeconds: r.MaxRPOSeconds}
}

// PlanRunList is a page of a plan's runs, newest first.
type PlanRunList struct {
	Items         []PlanRunSummary `json:"items"`
	NextPageToken string           `json:"nextPageToken,omitempty"`
}

// PlanRunServer is one server of a run.
type PlanRunServer struct {
	SourceServerID string `json:"sourceServerId"`
	Hostname       string `json:"hostname,omitempty"`
	Wave           string `json:"wave"`
	// The PIT launched: its id, time, age at the run's start, and RPO (the writes a
	// launch from it loses). Failback: the instance's final point, once written.
	SnapshotID     string     `json:"recoverySnapshotId,omitempty"`
	SnapshotTime   *time.Time `json:"recoverySnapshotTime,omitempty"`
	PITAgeSeconds  *float64   `json:"pitAgeSeconds,omitempty"`
	RPOSeconds     *float64   `json:"rpoSeconds,omitempty"`
	GroupPointID   string     `json:"groupPointId,omitempty"`
	JobID          string     `json:"jobId,omitempty"`
	RecoveryInstID string     `json:"recoveryInstanceId,omitempty"`
	// FailbackInto is where a failback writes the server (an instance, or new).
	FailbackInto string        `json:"failbackInto,omitempty"`
	Address      string        `json:"address,omitempty"`
	PortForwards []PortForward `json:"portForwards,omitempty"`
	LaunchedAt   *time.Time    `json:"launchedAt,omitempty"`
	HealthyAt    *time.Time    `json:"healthyAt,omitempty"`
	// RTOSeconds is from the run's start until the server passed its checks (or was
	// launched, without checks).
	RTOSeconds *float64 `json:"rtoSeconds,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// PlanRunStep is one step of a run.
type PlanRunStep struct {
	Kind      string     `json:"kind"`
	Wave      string     `json:"wave,omitempty"`
	Name      string     `json:"name,omitempty"`
	State     string     `json:"state"`
	StartedAt *time.Time `json:"startedAt,omitempty"`
	EndedAt   *time.Time `json:"endedAt,omitempty"`
	// Message says what the step did, would do (dry runs), or why it failed.
	Message string            `json:"message,omitempty"`
	JobIDs  []string          `json:"jobIds,omitempty"`
	Checks  []PlanCheckResult `json:"checks,omitempty"`
	// Saved is what the step found before it changed it (DNS records, HAProxy servers):
	// a failback puts it back.
	Saved map[string]string `json:"saved,omitempty"`
}

// PlanCheckResult is one health check of one server.
type PlanCheckResult struct {
	Check          string    `json:"check"`
	SourceServerID string    `json:"sourceServerId"`
	Passed         bool      `json:"passed"`
	Attempts       int       `json:"attempts"`
	StartedAt      time.Time `json:"startedAt"`
	EndedAt        time.Time `json:"endedAt"`
	Message        string    `json:"message,omitempty"`
}

// PlanPrecondition is one precondition a dry run checked.
type PlanPrecondition struct {
	What    string `json:"what"`
	OK      bool   `json:"ok"`
	Message string `json:"message"`
}

// SetPlanSecretRequest stores a plan secret (a TSIG key, a webhook's signing key, a CA).
type SetPlanSecretRequest struct {
	Value string `json:"value"`
}

// Validate bounds a secret.
func (r SetPlanSecretRequest) Validate() error {
	if r.Value == "" || len(r.Value) > MaxPlanSecretBytes {
		return Invalid("a plan secret is 1 to %d bytes, not %d", MaxPlanSecretBytes, len(r.Value))
	}
	return nil
}

// PlanSecret names a stored secret; its value is never answered.
type PlanSecret struct {
	Name      string    `json:"name"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// PlanSecretList lists an account's plan secrets by name.
type PlanSecretList struct {
	Items []PlanSecret `json:"items"`
}

// ApplyPlan stores a plan file (or, with dryRun, checks it).
func (c *Client) ApplyPlan(ctx context.Context, req ApplyPlanRequest) (ApplyPlanResponse, error) {
	var out ApplyPlanResponse
	return out, c.do(ctx, "POST", "/api/v1/plans", nil, req, &out)
}

// ListPlans lists the account's plans.
func (c *Client) ListPlans(ctx context.Context) (PlanList, error) {
	var out PlanList
	return out, c.do(ctx, "GET", "/api/v1/plans", nil, nil, &out)
}

// GetPlan describes a plan (version 0: the newest).
func (c *Client) GetPlan(ctx context.Context, name string) (Plan, error) {
	var out Plan
	return out, c.do(ctx, "GET", "/api/v1/plans/"+esc(name), nil, nil, &out)
}

// PlanVersions lists a plan's versions, newest first.
func (c *Client) PlanVersions(ctx context.Context, name string) ([]PlanVersion, error) {
	var out struct {
		Items []PlanVersion `json:"items"`
	}
	return out.Items, c.do(ctx, "GET", "/api/v1/plans/"+esc(name)+"/versions", nil, nil, &out)
}

// DiffPlan compares two versions of a plan (0: the newest; from 0: the one before to).
func (c *Client) DiffPlan(ctx context.Context, name string, from, to int) (PlanDiff, error) {
	q := url.Values{}
	if from > 0 {
		q.Set("from", strconv.Itoa(from))
	}
	if to > 0 {
		q.Set("to", strconv.Itoa(to))
	}
	var out PlanDiff
	return out, c.do(ctx, "GET", "/api/v1/plans/"+esc(name)+"/diff", q, nil, &out)
}

// DeletePlan deletes a plan, its versions and its reports.
func (c *Client) DeletePlan(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/api/v1/plans/"+esc(name), nil, nil, nil)
}

// StartPlanRun starts a drill, failover or failback of a plan (or a dry run of one).
func (c *Client) StartPlanRun(ctx context.Context, name string, req StartPlanRunRequest) (PlanRun, error) {
	var out PlanRun
	return out, c.do(ctx, "POST", "/api/v1/plans/"+esc(name)+"/runs", nil, req, &out)
}

// PlanRuns lists a plan's runs, newest first.
func (c *Client) PlanRuns(ctx context.Context, name string, limit int, pageToken string) (PlanRunList, error) {
	var out PlanRunList
	return out, c.do(ctx, "GET", "/api/v1/plans/"+esc(name)+"/runs", pageQuery(limit, pageToken), nil, &out)
}

// PlanRun returns a run and its report.
func (c *Client) PlanRun(ctx context.Context, id string) (PlanRun, error) {
	var out PlanRun
	return out, c.do(ctx, "GET", "/api/v1/plan-runs/"+esc(id), nil, nil, &out)
}

// SetPlanSecret stores (or replaces) a plan secret.
func (c *Client) SetPlanSecret(ctx context.Context, name, value string) (PlanSecret, error) {
	var out PlanSecret
	return out, c.do(ctx, "PUT", "/api/v1/plan-secrets/"+esc(name), nil, SetPlanSecretRequest{Value: value}, &out)
}

// ListPlanSecrets lists the account's plan secrets (names only).
func (c *Client) ListPlanSecrets(ctx context.Context) (PlanSecretList, error) {
	var out PlanSecretList
	return out, c.do(ctx, "GET", "/api/v1/plan-secrets", nil, nil, &out)
}

// DeletePlanSecret removes a plan secret.
func (c *Client) DeletePlanSecret(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/api/v1/plan-secrets/"+esc(name), nil, nil, nil)
}
