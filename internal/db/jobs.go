package db

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// Job is a job row with its servers.
type Job struct {
	api.Job
	AccountID  string
	Params     JobParams
	RunnerID   string     // the control plane that claimed it ("" while unclaimed)
	LeaseUntil *time.Time // its claim holds until then
	UpdatedAt  time.Time
}

// JobParams are what a job was asked to do beyond its servers (stored as JSON).
type JobParams struct {
	CreatedBy     string     `json:"createdBy"` // the actor, as the audit log names it
	At            *time.Time `json:"at,omitempty"`
	Force         bool       `json:"force,omitempty"`
	NetworkAccess bool       `json:"networkAccess,omitempty"`
	// Failback, for a FAILBACK job: what to write where.
	Failback *FailbackParams `json:"failback,omitempty"`
	// Overrides change launch settings for this job, by source server (recovery plans).
	Overrides map[string]*api.LaunchOverrides `json:"overrides,omitempty"`
}

// FailbackParams are a FAILBACK job's: the recovery instance brought home (the job's
// server is its reversed source server), the origin's source server, the instance
// written, and when the final consistency point was asked for (its PIT is the first
// one of the reversed server taken at or after that).
type FailbackParams struct {
	RecoveryInstanceID   string    `json:"recoveryInstanceId"`
	OriginSourceServerID string    `json:"originSourceServerId"`
	Into                 string    `json:"into"` // an instance or a failback client
	Disk                 string    `json:"disk,omitempty"`
	NoStart              bool      `json:"noStart,omitempty"`
	FinalPointAsked      time.Time `json:"finalPointAsked"`
}

// JobServer is a job's row for one recovery instance.
type JobServer struct {
	JobID string
	api.JobServer
	UpdatedAt time.Time
}

const jobCols = `id, account_id, type, status, initiated_by, is_drill, params, runner_id, lease_until, created_at, updated_at, ended_at`

func scanJob(row interface{ Scan(...any) error }) (Job, error) {
	var j Job
	var drill int64
	var params string
	var lease, ended sql.NullInt64
	var created, updated int64
	err := row.Scan(&j.ID, &j.AccountID, &j.Type, &j.Status, &j.InitiatedBy, &drill, &params, &j.RunnerID, &lease,
		&created, &updated, &ended)
	if err != nil {
		return j, classify(err)
	}
	j.IsDrill = drill != 0
	j.LeaseUntil = optTime(lease)
	j.CreatedAt, j.UpdatedAt, j.EndedAt = fromMS(created), fromMS(updated), optTime(ended)
	if err := json.Unmarshal([]byte(params), &j.Params); err != nil {
		return j, fmt.Errorf("job %s: unreadable parameters: %w", j.ID, err)
	}
	j.CreatedBy = j.Params.CreatedBy
	return j, nil
}

// CreateJob inserts a job and its servers.
func (t *Tx) CreateJob(j Job) error {
	j.Params.CreatedBy = j.CreatedBy
	params, err := jsonText(j.Params)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO jobs (`+jobCols+`, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, j.AccountID, j.Type, j.Status, j.InitiatedBy, boolInt(j.IsDrill), params, j.RunnerID, nullMS(j.LeaseUntil),
		ms(j.CreatedAt), ms(j.CreatedAt), nullMS(j.EndedAt), j.CreatedBy)
	if err != nil {
		return err
	}
	for _, s := range j.Servers {
		if err := t.PutJobServer(JobServer{JobID: j.ID, JobServer: s, UpdatedAt: j.CreatedAt}); err != nil {
			return err
		}
	}
	return nil
}

// JobCreatedBy is the newest job of the account that createdBy started ("" when none):
// a plan run finds again the job a step started before a restart.
func (t *Tx) JobCreatedBy(accountID, createdBy string) (string, error) {
	var id string
	err := t.queryRow(`SELECT id FROM jobs WHERE account_id = ? AND created_by = ? ORDER BY created_at DESC, id LIMIT 1`,
		accountID, createdBy).Scan(&id)
	if err = classify(err); errors.Is(err, ErrNotFound) {
		return "", nil
	}
	return id, err
}

// PutJobServer inserts or replaces a job's row for one recovery instance.
func (t *Tx) PutJobServer(s JobServer) error {
	progress := ""
	if s.Progress != nil {
		b, err := json.Marshal(s.Progress)
		if err != nil {
			return err
		}
		progress = string(b)
	}
	var rpo any
	if s.RPOSeconds != nil {
		rpo = int64(math.Round(*s.RPOSeconds * 1000))
	}
	// The PIT's time and RPO are set when the job is planned; an update without them
	// keeps them.
	_, err := t.exec(`INSERT INTO job_servers (job_id, source_server_id, recovery_instance_id, snapshot_id, launch_status,
		step, progress, error, updated_at, snapshot_time, rpo_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (job_id, recovery_instance_id) DO UPDATE SET snapshot_id = excluded.snapshot_id,
		launch_status = excluded.launch_status, step = excluded.step, progress = excluded.progress,
		error = excluded.error, updated_at = excluded.updated_at,
		snapshot_time = COALESCE(excluded.snapshot_time, job_servers.snapshot_time),
		rpo_ms = COALESCE(excluded.rpo_ms, job_servers.rpo_ms)`,
		s.JobID, s.SourceServerID, s.RecoveryInstanceID, s.SnapshotID, s.LaunchStatus, s.Step, progress, s.Error, ms(s.UpdatedAt),
		nullMS(s.SnapshotTime), rpo)
	return err
}

// Job returns a job with its servers and their measured RTO.
func (t *Tx) Job(id string) (Job, error) {
	j, err := scanJob(t.queryRow(`SELECT `+jobCols+` FROM jobs WHERE id = ?`, id))
	if err != nil {
		return j, err
	}
	jobs := []Job{j}
	if err := t.fillJobServers(jobs); err != nil {
		return j, err
	}
	return jobs[0], nil
}

// fillJobServers reads the servers of jobs and their RTO from the jobs' logs.
func (t *Tx) fillJobServers(jobs []Job) error {
	if len(jobs) == 0 {
		return nil
	}
	idx := map[string]int{}
	args := make([]any, len(jobs))
	for i := range jobs {
		idx[jobs[i].ID] = i
		args[i] = jobs[i].ID
		jobs[i].Servers = []api.JobServer{}
	}
	in := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(jobs)), ", ") + ")"
	rows, err := t.query(`SELECT job_id, source_server_id, recovery_instance_id, snapshot_id, launch_status, step, progress,
		error, snapshot_time, rpo_ms FROM job_servers WHERE job_id IN `+in+` ORDER BY job_id, source_server_id, recovery_instance_id`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var jobID, progress string
		var s api.JobServer
		var pitTime, rpo sql.NullInt64
		if err := rows.Scan(&jobID, &s.SourceServerID, &s.RecoveryInstanceID, &s.SnapshotID, &s.LaunchStatus, &s.Step,
			&progress, &s.Error, &pitTime, &rpo); err != nil {
			return classify(err)
		}
		s.SnapshotTime = optTime(pitTime)
		if rpo.Valid {
			v := float64(rpo.Int64) / 1000
			s.RPOSeconds = &v
		}
		if progress != "" {
			s.Progress = &api.JobProgress{}
			if err := json.Unmarshal([]byte(progress), s.Progress); err != nil {
				return fmt.Errorf("job %s: unreadable progress: %w", jobID, err)
			}
		}
		i := idx[jobID]
		jobs[i].Servers = append(jobs[i].Servers, s)
	}
	if err := rows.Err(); err != nil {
		return classify(err)
	}
	rows.Close()
	return t.fillRTO(jobs, in, args)
}

// fillRTO measures each launched server's RTO from its job's log: from JOB_START to
// LAUNCH_END, or to the end of the last post-launch action when any ended after it.
func (t *Tx) fillRTO(jobs []Job, in string, args []any) error {
	rows, err := t.query(`SELECT job_id, source_server_id, type, MAX(at) FROM job_events WHERE job_id IN `+in+
		` AND type IN ('`+api.EventJobStart+`', '`+api.EventLaunchEnd+`', '`+api.EventPostLaunchEnd+`')
		GROUP BY job_id, source_server_id, type`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	type key struct{ job, server string }
	start := map[string]int64{}
	end := map[key]int64{}
	launched := map[key]bool{}
	for rows.Next() {
		var job, server, typ string
		var at int64
		if err := rows.Scan(&job, &server, &typ, &at); err != nil {
			return classify(err)
		}
		switch typ {
		case api.EventJobStart:
			if server == "" { // the job's own start, when it was asked for
				start[job] = at
			}
		case api.EventLaunchEnd:
			launched[key{job, server}] = true
			end[key{job, server}] = max(end[key{job, server}], at)
		default:
			end[key{job, server}] = max(end[key{job, server}], at)
		}
	}
	if err := rows.Err(); err != nil {
		return classify(err)
	}
	for i := range jobs {
		s0, ok := start[jobs[i].ID]
		if !ok {
			continue
		}
		for k := range jobs[i].Servers {
			sv := &jobs[i].Servers[k]
			kk := key{jobs[i].ID, sv.SourceServerID}
			if !launched[kk] {
				continue
			}
			rto := float64(end[kk]-s0) / 1000
			sv.RTOSeconds = &rto
		}
	}
	return nil
}

// ListJobs returns a page of an account's jobs, newest first.
func (t *Tx) ListJobs(accountID string, limit int, pageToken string) ([]Job, string, error) {
	args := []any{accountID}
	cond := ""
	if pageToken != "" {
		at, id, err := decodeTimeCursor(pageToken, api.PrefixJob)
		if err != nil {
			return nil, "", err
		}
		cond = ` AND (created_at < ? OR (created_at = ? AND id > ?))`
		args = append(args, at, at, id)
	}
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	args = append(args, limit+1)
	rows, err := t.query(`SELECT `+jobCols+` FROM jobs WHERE account_id = ?`+cond+` ORDER BY created_at DESC, id LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	out := []Job{}
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			rows.Close()
			return nil, "", err
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return nil, "", classify(err)
	}
	rows.Close()
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = encodeTimeCursor(ms(last.CreatedAt), last.ID)
	}
	return out, next, t.fillJobServers(out)
}

// ActiveJobCounts counts an account's jobs that have not completed, and the servers in them.
func (t *Tx) ActiveJobCounts(accountID string) (jobs, servers int, err error) {
	err = t.queryRow(`SELECT COUNT(*) FROM jobs WHERE account_id = ? AND status <> ?`, accountID, api.JobCompleted).Scan(&jobs)
	if err != nil {
		return 0, 0, classify(err)
	}
	err = t.queryRow(`SELECT COUNT(*) FROM job_servers s JOIN jobs j ON j.id = s.job_id
		WHERE j.account_id = ? AND j.status <> ?`, accountID, api.JobCompleted).Scan(&servers)
	return jobs, servers, classify(err)
}

// PendingRecoveries lists the recovery (not drill) launch jobs of a source server that
// have not ended for it: a second recovery is refused while one runs.
func (t *Tx) PendingRecoveries(sourceServerID string) ([]string, error) {
	rows, err := t.query(`SELECT j.id FROM job_servers s JOIN jobs j ON j.id = s.job_id
		WHERE s.source_server_id = ? AND j.type = ? AND j.is_drill = 0 AND s.launch_status IN (?, ?) ORDER BY j.id`,
		sourceServerID, api.JobLaunch, api.LaunchPending, api.LaunchInProgress)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, classify(err)
		}
		out = append(out, id)
	}
	return out, classify(rows.Err())
}

// ClaimJobs gives runner the jobs that have not completed and that nobody else holds:
// unclaimed ones, its own, and those whose claim lapsed. Their lease runs until until.
func (t *Tx) ClaimJobs(runner string, now, until time.Time) ([]string, error) {
	rows, err := t.query(`UPDATE jobs SET runner_id = ?, lease_until = ?
		WHERE status <> ? AND (runner_id = '' OR runner_id = ? OR lease_until IS NULL OR lease_until < ?) RETURNING id`,
		runner, ms(until), api.JobCompleted, runner, ms(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, classify(err)
		}
		out = append(out, id)
	}
	return out, classify(rows.Err())
}

// SetJobStatus changes a job's status; ended is set when it completes.
func (t *Tx) SetJobStatus(id, status string, now time.Time, ended *time.Time) error {
	return t.execOne(`UPDATE jobs SET status = ?, updated_at = ?, ended_at = ? WHERE id = ?`, status, ms(now), nullMS(ended), id)
}

// AddJobEvent appends an entry to a job's log. e.ID must sort after the job's earlier
// entries (the caller's clock makes it).
func (t *Tx) AddJobEvent(jobID string, e api.JobLogEvent) error {
	detail := "{}"
	if len(e.Detail) > 0 {
		b, err := json.Marshal(e.Detail)
		if err != nil {
			return err
		}
		detail = string(b)
	}
	_, err := t.exec(`INSERT INTO job_events (id, job_id, source_server_id, type, at, message, detail) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		e.ID, jobID, e.SourceServerID, e.Type, ms(e.Time), e.Message, detail)
	return err
}

// JobLog returns a page of a job's log in order, after the entry id given as page
// token. The next token is the last id returned, even on the last page, so a follower
// asks again with it.
func (t *Tx) JobLog(jobID string, limit int, after string) ([]api.JobLogEvent, string, error) {
	if limit <= 0 {
		limit = 1000
	}
	if len(after) > 64 {
		return nil, "", ErrBadPageToken
	}
	rows, err := t.query(`SELECT id, source_server_id, type, at, message, detail FROM job_events
		WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?`, jobID, after, limit)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	out := []api.JobLogEvent{}
	for rows.Next() {
		var e api.JobLogEvent
		var at int64
		var detail string
		if err := rows.Scan(&e.ID, &e.SourceServerID, &e.Type, &at, &e.Message, &detail); err != nil {
			return nil, "", classify(err)
		}
		e.Time = fromMS(at)
		if detail != "{}" {
			if err := json.Unmarshal([]byte(detail), &e.Detail); err != nil {
				return nil, "", fmt.Errorf("job %s log entry %s: unreadable detail: %w", jobID, e.ID, err)
			}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify(err)
	}
	next := after
	if len(out) > 0 {
		next = out[len(out)-1].ID
	}
	return out, next, nil
}

// ConsistentSnapshots returns a source server's consistent PITs (filesystem or crash),
// taken at or before before when it is given, newest first.
func (t *Tx) ConsistentSnapshots(sourceServerID string, before *time.Time, limit int) ([]Snapshot, error) {
	q := `SELECT ` + snapshotCols + ` FROM recovery_snapshots WHERE source_server_id = ? AND level IN (?, ?)`
	args := []any{sourceServerID, consistency.Filesystem, consistency.Crash}
	if before != nil {
		q += ` AND taken_at <= ?`
		args = append(args, ms(*before))
	}
	q += ` ORDER BY taken_at DESC, id LIMIT ?`
	args = append(args, limit)
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		s, err := scanSnapshot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, classify(rows.Err())
}

// BusyRecoveryInstance returns the job that is working on a recovery instance (its row
// PENDING or IN_PROGRESS), or "".
func (t *Tx) BusyRecoveryInstance(recoveryInstanceID string) (string, error) {
	var id string
	// A reversed replication's job only watches: it holds nothing back.
	err := t.queryRow(`SELECT s.job_id FROM job_servers s JOIN jobs j ON j.id = s.job_id
		WHERE s.recovery_instance_id = ? AND s.launch_status IN (?, ?) AND j.type <> ? ORDER BY s.job_id LIMIT 1`,
		recoveryInstanceID, api.LaunchPending, api.LaunchInProgress, api.JobReverseReplication).Scan(&id)
	if err == sql.ErrNoRows {
		return "", nil
	}
	return id, classify(err)
}
