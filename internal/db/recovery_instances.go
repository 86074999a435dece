package db

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// RecoveryInstance is a recovery instance row.
type RecoveryInstance struct {
	api.RecoveryInstance
	AccountID string
	RunnerID  string // the control plane host that launched it (its VM runs there)
}

const recoveryInstanceCols = `id, account_id, source_server_id, job_id, snapshot_id, snapshot_time, site_id, provider,
	provider_handle, launch_settings, is_drill, state, termination_protection, address, port_forwards, runner_id,
	instance_id, created_at, updated_at, terminated_at, failback_state, reversed_source_server_id`

func scanRecoveryInstance(row interface{ Scan(...any) error }) (RecoveryInstance, error) {
	var r RecoveryInstance
	var handle, settings, forwards, instanceID string
	var drill, protect, snapTime, created, updated int64
	var terminated sql.NullInt64
	err := row.Scan(&r.ID, &r.AccountID, &r.SourceServerID, &r.JobID, &r.SnapshotID, &snapTime, &r.SiteID, &r.Provider,
		&handle, &settings, &drill, &r.State, &protect, &r.Address, &forwards, &r.RunnerID, &instanceID,
		&created, &updated, &terminated, &r.FailbackState, &r.ReversedSourceServerID)
	if err != nil {
		return r, classify(err)
	}
	r.IsDrill, r.TerminationProtection = drill != 0, protect != 0
	r.SnapshotTime, r.CreatedAt, r.UpdatedAt, r.TerminatedAt = fromMS(snapTime), fromMS(created), fromMS(updated), optTime(terminated)
	r.PITAgeSeconds = float64(created-snapTime) / 1000
	for _, f := range []struct {
		doc string
		v   any
	}{{handle, &r.ProviderHandle}, {settings, &r.LaunchSettings}, {forwards, &r.PortForwards}} {
		if err := json.Unmarshal([]byte(f.doc), f.v); err != nil {
			return r, fmt.Errorf("recovery instance %s: unreadable column: %w", r.ID, err)
		}
	}
	if r.ProviderHandle.InstanceID == "" {
		r.ProviderHandle.InstanceID = instanceID
	}
	if len(r.LaunchSettings.Tags) > 0 || r.LaunchSettings.CopyTags {
		r.Tags = maps.Clone(r.LaunchSettings.Tags)
		if r.Tags == nil {
			r.Tags = map[string]string{}
		}
		if r.LaunchSettings.CopyTags {
			r.Tags["lifeboat:source-server"] = r.SourceServerID
		}
	}
	return r, nil
}

// PutRecoveryInstance inserts or replaces a recovery instance.
func (t *Tx) PutRecoveryInstance(r RecoveryInstance) error {
	handle, err := jsonText(r.ProviderHandle)
	if err != nil {
		return err
	}
	settings, err := jsonText(r.LaunchSettings)
	if err != nil {
		return err
	}
	if r.PortForwards == nil {
		r.PortForwards = []api.PortForward{}
	}
	forwards, err := jsonText(r.PortForwards)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO recovery_instances (`+recoveryInstanceCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET provider_handle = excluded.provider_handle, launch_settings = excluded.launch_settings,
		state = excluded.state, termination_protection = excluded.termination_protection, address = excluded.address,
		port_forwards = excluded.port_forwards, runner_id = excluded.runner_id, instance_id = excluded.instance_id,
		updated_at = excluded.updated_at, terminated_at = excluded.terminated_at`,
		r.ID, r.AccountID, r.SourceServerID, r.JobID, r.SnapshotID, ms(r.SnapshotTime), r.SiteID, r.Provider,
		handle, settings, boolInt(r.IsDrill), r.State, boolInt(r.TerminationProtection), r.Address, forwards, r.RunnerID,
		r.ProviderHandle.InstanceID, ms(r.CreatedAt), ms(r.UpdatedAt), nullMS(r.TerminatedAt),
		orDefault(r.FailbackState, api.FailbackNotStarted), r.ReversedSourceServerID)
	return err
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// StartReversal records that a recovery instance replicates back to its origin as
// the source server reversed, which must exist already.
func (t *Tx) StartReversal(id, reversed string, now time.Time) error {
	return t.execOne(`UPDATE recovery_instances SET reversed_source_server_id = ?, failback_state = ?, updated_at = ?
		WHERE id = ? AND reversed_source_server_id = ''`, reversed, api.FailbackInProgress, ms(now), id)
}

// SetFailbackState records where a recovery instance stands in the way home.
func (t *Tx) SetFailbackState(id, state string, now time.Time) error {
	return t.execOne(`UPDATE recovery_instances SET failback_state = ?, updated_at = ? WHERE id = ?`, state, ms(now), id)
}

// RecoveryInstance returns a recovery instance by id.
func (t *Tx) RecoveryInstance(id string) (RecoveryInstance, error) {
	return scanRecoveryInstance(t.queryRow(`SELECT `+recoveryInstanceCols+` FROM recovery_instances WHERE id = ?`, id))
}

// SetRecoveryInstanceState changes a recovery instance's state; ended records that it
// ended (terminated, or failed and cleaned up): it no longer counts as active.
func (t *Tx) SetRecoveryInstanceState(id, state string, ended bool, now time.Time) error {
	var end *time.Time
	if ended {
		end = &now
	}
	return t.execOne(`UPDATE recovery_instances SET state = ?, updated_at = ?,
		terminated_at = COALESCE(terminated_at, ?) WHERE id = ?`, state, ms(now), nullMS(end), id)
}

// SetTerminationProtection turns a recovery instance's termination protection on or off.
func (t *Tx) SetTerminationProtection(id string, on bool, now time.Time) error {
	return t.execOne(`UPDATE recovery_instances SET termination_protection = ?, updated_at = ? WHERE id = ?`,
		boolInt(on), ms(now), id)
}

// ListRecoveryInstances returns a page of an account's recovery instances, newest first.
func (t *Tx) ListRecoveryInstances(accountID string, f api.RecoveryInstanceFilter) ([]RecoveryInstance, string, error) {
	q := `SELECT ` + recoveryInstanceCols + ` FROM recovery_instances WHERE account_id = ?`
	args := []any{accountID}
	if f.SourceServerID != "" {
		q += ` AND source_server_id = ?`
		args = append(args, f.SourceServerID)
	}
	if f.Drill != nil {
		q += ` AND is_drill = ?`
		args = append(args, boolInt(*f.Drill))
	}
	if !f.All {
		q += ` AND terminated_at IS NULL`
	}
	if f.PageToken != "" {
		at, id, err := decodeTimeCursor(f.PageToken, api.PrefixRecoveryInstance)
		if err != nil {
			return nil, "", err
		}
		q += ` AND (created_at < ? OR (created_at = ? AND id > ?))`
		args = append(args, at, at, id)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	q += ` ORDER BY created_at DESC, id LIMIT ?`
	args = append(args, limit+1)
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	out := []RecoveryInstance{}
	for rows.Next() {
		r, err := scanRecoveryInstance(rows)
		if err != nil {
			return nil, "", err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify(err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = encodeTimeCursor(ms(last.CreatedAt), last.ID)
	}
	return out, next, nil
}

// RunnerRecoveryInstances returns the recovery instances a control plane host launched
// that are not terminated, oldest first.
func (t *Tx) RunnerRecoveryInstances(runnerID string) ([]RecoveryInstance, error) {
	return t.recoveryInstances(`SELECT `+recoveryInstanceCols+` FROM recovery_instances
		WHERE runner_id = ? AND terminated_at IS NULL ORDER BY created_at, id`, runnerID)
}

// ActiveRecoveryInstances returns a source server's recovery instances that are not
// terminated, oldest first.
func (t *Tx) ActiveRecoveryInstances(sourceServerID string) ([]RecoveryInstance, error) {
	return t.recoveryInstances(`SELECT `+recoveryInstanceCols+` FROM recovery_instances
		WHERE source_server_id = ? AND terminated_at IS NULL ORDER BY created_at, id`, sourceServerID)
}

// recoveryInstances runs a query of recovery instance rows.
func (t *Tx) recoveryInstances(q string, args ...any) ([]RecoveryInstance, error) {
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []RecoveryInstance
	for rows.Next() {
		r, err := scanRecoveryInstance(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, classify(rows.Err())
}
