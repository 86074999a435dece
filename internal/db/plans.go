package db

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Plan is a stored recovery plan: its newest version's row. Source is that version's
// file.
type Plan struct {
	AccountID   string
	Name        string
	Version     int
	Source      string
	Schedule    string
	NextDrillAt time.Time // zero: no drill scheduled
	Servers     int
	CreatedBy   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

const planCols = `p.account_id, p.name, p.version, v.source, p.schedule, p.next_drill_at, p.servers, p.created_by, p.created_at, p.updated_at`

const planFrom = ` FROM plans p JOIN plan_versions v ON v.account_id = p.account_id AND v.name = p.name AND v.version = p.version`

func scanPlan(row interface{ Scan(...any) error }) (Plan, error) {
	var p Plan
	var next, created, updated int64
	if err := row.Scan(&p.AccountID, &p.Name, &p.Version, &p.Source, &p.Schedule, &next, &p.Servers, &p.CreatedBy, &created, &updated); err != nil {
		return p, classify(err)
	}
	if next > 0 {
		p.NextDrillAt = fromMS(next)
	}
	p.CreatedAt, p.UpdatedAt = fromMS(created), fromMS(updated)
	return p, nil
}

// PutPlan stores a new version of a plan (version 1 creates it): the version's file,
// and the plan's row pointing at it.
func (t *Tx) PutPlan(p Plan) error {
	var err error
	if p.Version == 1 {
		_, err = t.exec(`INSERT INTO plans (account_id, name, version, schedule, next_drill_at, servers, created_by, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, p.AccountID, p.Name, 0, p.Schedule, msOrZero(p.NextDrillAt), p.Servers, p.CreatedBy,
			ms(p.CreatedAt), ms(p.UpdatedAt))
		if err != nil {
			return err
		}
	}
	if _, err = t.exec(`INSERT INTO plan_versions (account_id, name, version, source, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
		p.AccountID, p.Name, p.Version, p.Source, p.CreatedBy, ms(p.UpdatedAt)); err != nil {
		return err
	}
	return t.execOne(`UPDATE plans SET version = ?, schedule = ?, next_drill_at = ?, servers = ?, updated_at = ? WHERE account_id = ? AND name = ?`,
		p.Version, p.Schedule, msOrZero(p.NextDrillAt), p.Servers, ms(p.UpdatedAt), p.AccountID, p.Name)
}

func msOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return ms(t)
}

// Plan returns an account's plan. ErrNotFound when it has none of that name.
func (t *Tx) Plan(accountID, name string) (Plan, error) {
	return scanPlan(t.queryRow(`SELECT `+planCols+planFrom+` WHERE p.account_id = ? AND p.name = ?`, accountID, name))
}

// Plans lists an account's plans by name.
func (t *Tx) Plans(accountID string) ([]Plan, error) {
	return t.scanPlans(`SELECT `+planCols+planFrom+` WHERE p.account_id = ? ORDER BY p.name`, accountID)
}

// PlansDue lists the plans of every account whose scheduled drill is due at now.
func (t *Tx) PlansDue(now time.Time) ([]Plan, error) {
	return t.scanPlans(`SELECT `+planCols+planFrom+` WHERE p.next_drill_at > 0 AND p.next_drill_at <= ? ORDER BY p.next_drill_at`, ms(now))
}

func (t *Tx) scanPlans(q string, args ...any) ([]Plan, error) {
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Plan{}
	for rows.Next() {
		p, err := scanPlan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, classify(rows.Err())
}

// SetNextDrill records when a plan's next scheduled drill is due (zero: none).
func (t *Tx) SetNextDrill(accountID, name string, next time.Time) error {
	return t.execOne(`UPDATE plans SET next_drill_at = ? WHERE account_id = ? AND name = ?`, msOrZero(next), accountID, name)
}

// AdvanceNextDrill moves a plan's next scheduled drill from from to next, only if it is
// still from: of two control planes starting the same due drill, the second finds it
// moved (ErrNotFound) and starts nothing.
func (t *Tx) AdvanceNextDrill(accountID, name string, from, next time.Time) error {
	return t.execOne(`UPDATE plans SET next_drill_at = ? WHERE account_id = ? AND name = ? AND next_drill_at = ?`,
		msOrZero(next), accountID, name, msOrZero(from))
}

// PlanVersions lists a plan's versions, newest first.
func (t *Tx) PlanVersions(accountID, name string) ([]api.PlanVersion, error) {
	rows, err := t.query(`SELECT version, source, created_by, created_at FROM plan_versions WHERE account_id = ? AND name = ? ORDER BY version DESC`,
		accountID, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.PlanVersion{}
	for rows.Next() {
		var v api.PlanVersion
		var created int64
		if err := rows.Scan(&v.Version, &v.Source, &v.CreatedBy, &created); err != nil {
			return nil, classify(err)
		}
		v.CreatedAt = fromMS(created)
		out = append(out, v)
	}
	return out, classify(rows.Err())
}

// DeletePlan deletes a plan, its versions and its runs.
func (t *Tx) DeletePlan(accountID, name string) error {
	for _, q := range []string{`DELETE FROM plan_runs WHERE account_id = ? AND plan_name = ?`,
		`DELETE FROM plan_versions WHERE account_id = ? AND name = ?`} {
		if _, err := t.exec(q, accountID, name); err != nil {
			return err
		}
	}
	return t.execOne(`DELETE FROM plans WHERE account_id = ? AND name = ?`, accountID, name)
}

// PlanRun is a run's row: the run (its report) and its account.
type PlanRun struct {
	AccountID string
	api.PlanRun
}

// CreatePlanRun inserts a run. ErrConflict when a run of the plan is running.
func (t *Tx) CreatePlanRun(r PlanRun, now time.Time) error {
	data, err := json.Marshal(r.PlanRun)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO plan_runs (id, account_id, plan_name, mode, state, started_at, updated_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.AccountID, r.Plan, r.Mode, r.State, ms(r.StartedAt), ms(now), string(data))
	return err
}

// UpdatePlanRun stores a run as it stands.
func (t *Tx) UpdatePlanRun(r PlanRun, now time.Time) error {
	data, err := json.Marshal(r.PlanRun)
	if err != nil {
		return err
	}
	return t.execOne(`UPDATE plan_runs SET state = ?, updated_at = ?, data = ? WHERE id = ? AND account_id = ?`,
		r.State, ms(now), string(data), r.ID, r.AccountID)
}

const planRunCols = `account_id, data`

func scanPlanRun(row interface{ Scan(...any) error }) (PlanRun, error) {
	var r PlanRun
	var data string
	if err := row.Scan(&r.AccountID, &data); err != nil {
		return r, classify(err)
	}
	if err := json.Unmarshal([]byte(data), &r.PlanRun); err != nil {
		return r, fmt.Errorf("plan run in the database is unreadable: %w", err)
	}
	return r, nil
}

// PlanRunByID returns a run of the account.
func (t *Tx) PlanRunByID(accountID, id string) (PlanRun, error) {
	return scanPlanRun(t.queryRow(`SELECT `+planRunCols+` FROM plan_runs WHERE id = ? AND account_id = ?`, id, accountID))
}

// PlanRuns lists a plan's runs, newest first, a page at a time.
func (t *Tx) PlanRuns(accountID, plan string, limit int, pageToken string) ([]PlanRun, string, error) {
	args := []any{accountID, plan}
	cond := ""
	if pageToken != "" {
		at, id, err := decodeTimeCursor(pageToken, api.PrefixPlanRun)
		if err != nil {
			return nil, "", err
		}
		cond = ` AND (started_at < ? OR (started_at = ? AND id > ?))`
		args = append(args, at, at, id)
	}
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	args = append(args, limit+1)
	out, err := t.scanPlanRuns(`SELECT `+planRunCols+` FROM plan_runs WHERE account_id = ? AND plan_name = ?`+cond+
		` ORDER BY started_at DESC, id LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = encodeTimeCursor(ms(last.StartedAt), last.ID)
	}
	return out, next, nil
}

// RunningPlanRuns lists the runs of every account that are running (a restarted control
// plane resumes them).
func (t *Tx) RunningPlanRuns() ([]PlanRun, error) {
	return t.scanPlanRuns(`SELECT `+planRunCols+` FROM plan_runs WHERE state = ? ORDER BY started_at`, api.PlanRunRunning)
}

// LastPlanRun is the plan's newest run of a mode ("": any) in a state (nil: none).
func (t *Tx) LastPlanRun(accountID, plan, mode, state string) (*PlanRun, error) {
	r, err := scanPlanRun(t.queryRow(`SELECT `+planRunCols+` FROM plan_runs WHERE account_id = ? AND plan_name = ? AND (mode = ? OR ? = '') AND state = ?
		ORDER BY started_at DESC, id LIMIT 1`, accountID, plan, mode, mode, state))
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// TrimPlanRuns removes a plan's ended runs past the newest keep.
func (t *Tx) TrimPlanRuns(accountID, plan string, keep int) error {
	_, err := t.exec(`DELETE FROM plan_runs WHERE account_id = ? AND plan_name = ? AND state <> ? AND id NOT IN (
		SELECT id FROM plan_runs WHERE account_id = ? AND plan_name = ? ORDER BY started_at DESC, id LIMIT ?)`,
		accountID, plan, api.PlanRunRunning, accountID, plan, keep)
	return err
}

func (t *Tx) scanPlanRuns(q string, args ...any) ([]PlanRun, error) {
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []PlanRun{}
	for rows.Next() {
		r, err := scanPlanRun(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, classify(rows.Err())
}

// PutPlanSecret stores or replaces a sealed plan secret.
func (t *Tx) PutPlanSecret(accountID, name string, sealed []byte, now time.Time) error {
	if _, err := t.exec(`DELETE FROM plan_secrets WHERE account_id = ? AND name = ?`, accountID, name); err != nil {
		return err
	}
	_, err := t.exec(`INSERT INTO plan_secrets (account_id, name, sealed, updated_at) VALUES (?, ?, ?, ?)`,
		accountID, name, encodeOptional(sealed), ms(now))
	return err
}

// PlanSecret returns a sealed plan secret. ErrNotFound when there is none.
func (t *Tx) PlanSecret(accountID, name string) ([]byte, error) {
	var text string
	if err := t.queryRow(`SELECT sealed FROM plan_secrets WHERE account_id = ? AND name = ?`, accountID, name).Scan(&text); err != nil {
		return nil, classify(err)
	}
	b, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("plan secret %s is unreadable in the database: %w", name, err)
	}
	return b, nil
}

// PlanSecrets lists an account's plan secrets (names and times).
func (t *Tx) PlanSecrets(accountID string) ([]api.PlanSecret, error) {
	rows, err := t.query(`SELECT name, updated_at FROM plan_secrets WHERE account_id = ? ORDER BY name`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.PlanSecret{}
	for rows.Next() {
		var s api.PlanSecret
		var updated int64
		if err := rows.Scan(&s.Name, &updated); err != nil {
			return nil, classify(err)
		}
		s.UpdatedAt = fromMS(updated)
		out = append(out, s)
	}
	return out, classify(rows.Err())
}

// DeletePlanSecret removes a plan secret. ErrNotFound when there is none.
func (t *Tx) DeletePlanSecret(accountID, name string) error {
	return t.execOne(`DELETE FROM plan_secrets WHERE account_id = ? AND name = ?`, accountID, name)
}
