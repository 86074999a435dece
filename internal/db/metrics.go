package db

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// What the control plane's Prometheus metrics read at each scrape (internal/controlplane,
// metrics.go). Each family is one query over all the servers (or replicators, jobs,
// runs) of an account, or of every account when accountID is "": never a query per
// server, so a scrape costs the same few round trips with 10 or 10,000 servers.

// MetricsServer is a source server as its metrics see it.
type MetricsServer struct {
	ID, Account, Hostname string
	Replicator            string // the assigned replicator's name ("" for none)
	Replication           api.ReplicationState
	CertificateExpiresAt  time.Time
	// NewestPIT is the time of the newest recovery snapshot of any level,
	// NewestRecoverablePIT of the newest filesystem- or crash-consistent one (nil: none).
	NewestPIT, NewestRecoverablePIT *time.Time
}

// MetricsServers lists the source servers of an account ("": of every account) with
// their state and their newest PITs. The PITs come from the recovery snapshots table:
// each server's newest one is one step down an index (recovery_snapshots_server, and
// recovery_snapshots_level per level), whatever the number of PITs kept.
func (t *Tx) MetricsServers(accountID string) ([]MetricsServer, error) {
	rows, err := t.query(`SELECT s.id, a.name, s.hostname, COALESCE(r.name, ''), s.replication, s.cert_not_after,
		(SELECT p.taken_at FROM recovery_snapshots p WHERE p.source_server_id = s.id ORDER BY p.taken_at DESC LIMIT 1),
		(SELECT p.taken_at FROM recovery_snapshots p WHERE p.source_server_id = s.id AND p.level = 'filesystem' ORDER BY p.taken_at DESC LIMIT 1),
		(SELECT p.taken_at FROM recovery_snapshots p WHERE p.source_server_id = s.id AND p.level = 'crash' ORDER BY p.taken_at DESC LIMIT 1)
		FROM source_servers s JOIN accounts a ON a.id = s.account_id LEFT JOIN replicators r ON r.id = s.replicator_id
		WHERE (? = '' OR s.account_id = ?) ORDER BY s.id`, accountID, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []MetricsServer
	for rows.Next() {
		var s MetricsServer
		var replication string
		var notAfter int64
		var newest, fs, crash sql.NullInt64
		if err := rows.Scan(&s.ID, &s.Account, &s.Hostname, &s.Replicator, &replication, &notAfter, &newest, &fs, &crash); err != nil {
			return nil, classify(err)
		}
		if err := json.Unmarshal([]byte(replication), &s.Replication); err != nil {
			return nil, fmt.Errorf("source server %s: unreadable replication state: %w", s.ID, err)
		}
		s.CertificateExpiresAt = fromMS(notAfter)
		s.NewestPIT = optTime(newest)
		if fs.Int64 < crash.Int64 {
			fs = crash
		}
		s.NewestRecoverablePIT = optTime(fs)
		out = append(out, s)
	}
	return out, classify(rows.Err())
}

// MetricsReplicator is a replicator as its metrics see it.
type MetricsReplicator struct {
	Replicator
	Account string // the account's name
}

// MetricsReplicators lists the replicators of an account ("": of every account), with
// their last heartbeat's metrics; State is live for those that beat since liveSince.
func (t *Tx) MetricsReplicators(accountID string, liveSince time.Time) ([]MetricsReplicator, error) {
	rows, err := t.query(`SELECT `+replicatorCols+`, a.name FROM replicators r JOIN accounts a ON a.id = r.account_id
		WHERE (? = '' OR r.account_id = ?) ORDER BY r.id`, accountID, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []MetricsReplicator
	for rows.Next() {
		var m MetricsReplicator
		var err error
		if m.Replicator, err = scanReplicator(extraCols{rows, []any{&m.Account}}, liveSince); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, classify(rows.Err())
}

// extraCols scans a row into a scanner's columns followed by more.
type extraCols struct {
	row  interface{ Scan(...any) error }
	more []any
}

func (e extraCols) Scan(dest ...any) error { return e.row.Scan(append(dest, e.more...)...) }

// JobCount is how many jobs of a type are in a status.
type JobCount struct {
	Account, Type, Status string
	Drill                 bool
	Count                 int64
}

// JobCounts counts the jobs of an account ("": of every account) by type, status and
// drill.
func (t *Tx) JobCounts(accountID string) ([]JobCount, error) {
	rows, err := t.query(`SELECT a.name, j.type, j.status, j.is_drill, COUNT(*) FROM jobs j JOIN accounts a ON a.id = j.account_id
		WHERE (? = '' OR j.account_id = ?) GROUP BY a.name, j.type, j.status, j.is_drill ORDER BY a.name, j.type, j.status, j.is_drill`,
		accountID, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []JobCount
	for rows.Next() {
		var c JobCount
		var drill int64
		if err := rows.Scan(&c.Account, &c.Type, &c.Status, &drill, &c.Count); err != nil {
			return nil, classify(err)
		}
		c.Drill = drill != 0
		out = append(out, c)
	}
	return out, classify(rows.Err())
}

// JobDuration is how long a finished job took, from its creation to its end.
type JobDuration struct {
	Account, Type string
	Drill         bool
	Seconds       float64
}

// FinishedJobDurations lists the durations of the completed jobs of an account ("": of
// every account).
func (t *Tx) FinishedJobDurations(accountID string) ([]JobDuration, error) {
	rows, err := t.query(`SELECT a.name, j.type, j.is_drill, j.ended_at - j.created_at FROM jobs j JOIN accounts a ON a.id = j.account_id
		WHERE (? = '' OR j.account_id = ?) AND j.status = ? AND j.ended_at IS NOT NULL`, accountID, accountID, api.JobCompleted)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []JobDuration
	for rows.Next() {
		var d JobDuration
		var drill, took int64
		if err := rows.Scan(&d.Account, &d.Type, &drill, &took); err != nil {
			return nil, classify(err)
		}
		d.Drill, d.Seconds = drill != 0, float64(max(took, 0))/1000
		out = append(out, d)
	}
	return out, classify(rows.Err())
}

// LaunchRTO is the RTO of one server launched by a completed drill or recovery, measured
// as the job API measures it (fillRTO): from JOB_START to LAUNCH_END, or to the end of
// the last post-launch action when one ended after it.
type LaunchRTO struct {
	Account string
	Drill   bool
	Seconds float64
}

// LaunchRTOs lists the RTO of every server launched by the completed LAUNCH jobs of an
// account ("": of every account), in one query over those jobs' logs.
func (t *Tx) LaunchRTOs(accountID string) ([]LaunchRTO, error) {
	rows, err := t.query(`SELECT a.name, j.id, j.is_drill, e.source_server_id, e.type, MAX(e.at)
		FROM jobs j JOIN accounts a ON a.id = j.account_id JOIN job_events e ON e.job_id = j.id
		WHERE (? = '' OR j.account_id = ?) AND j.type = ? AND j.status = ? AND e.type IN (?, ?, ?)
		GROUP BY a.name, j.id, j.is_drill, e.source_server_id, e.type`,
		accountID, accountID, api.JobLaunch, api.JobCompleted, api.EventJobStart, api.EventLaunchEnd, api.EventPostLaunchEnd)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	type job struct {
		account string
		drill   bool
		start   int64
		ends    map[string]int64 // by server: the newest end
		done    map[string]bool  // servers whose launch ended
	}
	jobs := map[string]*job{}
	var order []string
	for rows.Next() {
		var account, id, server, typ string
		var drill, at int64
		if err := rows.Scan(&account, &id, &drill, &server, &typ, &at); err != nil {
			return nil, classify(err)
		}
		j := jobs[id]
		if j == nil {
			j = &job{account: account, drill: drill != 0, start: -1, ends: map[string]int64{}, done: map[string]bool{}}
			jobs[id] = j
			order = append(order, id)
		}
		switch {
		case typ == api.EventJobStart && server == "":
			j.start = at
		case typ == api.EventLaunchEnd:
			j.done[server] = true
			j.ends[server] = max(j.ends[server], at)
		case typ == api.EventPostLaunchEnd:
			j.ends[server] = max(j.ends[server], at)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, classify(err)
	}
	var out []LaunchRTO
	for _, id := range order {
		j := jobs[id]
		if j.start < 0 {
			continue
		}
		for server := range j.done {
			out = append(out, LaunchRTO{Account: j.account, Drill: j.drill, Seconds: float64(j.ends[server]-j.start) / 1000})
		}
	}
	return out, nil
}

// LaunchCount is how many servers of drills (or recoveries) ended in a launch status.
type LaunchCount struct {
	Account, Status string
	Drill           bool
	Count           int64
}

// LaunchCounts counts the servers of the LAUNCH jobs of an account ("": of every
// account) by drill and launch status.
func (t *Tx) LaunchCounts(accountID string) ([]LaunchCount, error) {
	rows, err := t.query(`SELECT a.name, j.is_drill, s.launch_status, COUNT(*)
		FROM jobs j JOIN accounts a ON a.id = j.account_id JOIN job_servers s ON s.job_id = j.id
		WHERE (? = '' OR j.account_id = ?) AND j.type = ?
		GROUP BY a.name, j.is_drill, s.launch_status ORDER BY a.name, j.is_drill, s.launch_status`, accountID, accountID, api.JobLaunch)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []LaunchCount
	for rows.Next() {
		var c LaunchCount
		var drill int64
		if err := rows.Scan(&c.Account, &drill, &c.Status, &c.Count); err != nil {
			return nil, classify(err)
		}
		c.Drill = drill != 0
		out = append(out, c)
	}
	return out, classify(rows.Err())
}

// PlanDrills is what the drills of one recovery plan came to, among the runs kept.
type PlanDrills struct {
	Account, Plan string
	// LastSucceeded says whether the newest ended drill run succeeded; LastEnded is when
	// it ended.
	LastSucceeded bool
	LastEnded     *time.Time
	Failed        int64 // ended drill runs that failed
}

// PlanDrillResults sums up the ended drill runs of the plans of an account ("": of
// every account), plan by plan. Only the runs kept (TrimPlanRuns) are counted.
func (t *Tx) PlanDrillResults(accountID string) ([]PlanDrills, error) {
	rows, err := t.query(`SELECT a.name, r.plan_name, r.state, r.updated_at FROM plan_runs r JOIN accounts a ON a.id = r.account_id
		WHERE (? = '' OR r.account_id = ?) AND r.mode = ? AND r.state <> ?
		ORDER BY a.name, r.plan_name, r.started_at, r.id`, accountID, accountID, api.PlanDrill, api.PlanRunRunning)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PlanDrills
	for rows.Next() {
		var account, plan, state string
		var ended int64
		if err := rows.Scan(&account, &plan, &state, &ended); err != nil {
			return nil, classify(err)
		}
		if n := len(out); n == 0 || out[n-1].Account != account || out[n-1].Plan != plan {
			out = append(out, PlanDrills{Account: account, Plan: plan})
		}
		p := &out[len(out)-1]
		at := fromMS(ended)
		p.LastSucceeded, p.LastEnded = state == api.PlanRunSucceeded, &at
		if state == api.PlanRunFailed {
			p.Failed++
		}
	}
	return out, classify(rows.Err())
}
