package db

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Instance is an instance row: an existing machine Lifeboat may launch into.
type Instance struct {
	api.Instance
	AccountID string
	RunnerID  string // the control plane host its VM last ran on
}

const instanceCols = `id, account_id, site_id, name, provider, disks, tags, boot_mode, state, runner_id,
	recovery_instance_id, created_at, updated_at`

func scanInstance(row interface{ Scan(...any) error }) (Instance, error) {
	var in Instance
	var disks, tags string
	var created, updated int64
	err := row.Scan(&in.ID, &in.AccountID, &in.SiteID, &in.Name, &in.Provider, &disks, &tags, &in.BootMode, &in.State,
		&in.RunnerID, &in.RecoveryInstanceID, &created, &updated)
	if err != nil {
		return in, classify(err)
	}
	in.CreatedAt, in.UpdatedAt = fromMS(created), fromMS(updated)
	if err := json.Unmarshal([]byte(disks), &in.Disks); err != nil {
		return in, fmt.Errorf("instance %s: unreadable disks: %w", in.ID, err)
	}
	if err := json.Unmarshal([]byte(tags), &in.Tags); err != nil {
		return in, fmt.Errorf("instance %s: unreadable tags: %w", in.ID, err)
	}
	if in.Tags == nil {
		in.Tags = map[string]string{}
	}
	if in.Disks == nil {
		in.Disks = []api.InstanceDisk{}
	}
	return in, nil
}

// CreateInstance inserts an instance. ErrConflict when its name is taken; ErrReferenced
// when its site does not exist.
func (t *Tx) CreateInstance(in Instance) error {
	disks, err := jsonText(in.Disks)
	if err != nil {
		return err
	}
	if in.Tags == nil {
		in.Tags = map[string]string{}
	}
	tags, err := jsonText(in.Tags)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO instances (`+instanceCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		in.ID, in.AccountID, in.SiteID, in.Name, in.Provider, disks, tags, in.BootMode, in.State, in.RunnerID,
		in.RecoveryInstanceID, ms(in.CreatedAt), ms(in.UpdatedAt))
	return err
}

// Instance returns an instance by id.
func (t *Tx) Instance(id string) (Instance, error) {
	return scanInstance(t.queryRow(`SELECT `+instanceCols+` FROM instances WHERE id = ?`, id))
}

// LockInstance returns an instance, locked for the rest of the transaction (PostgreSQL).
func (t *Tx) LockInstance(id string) (Instance, error) {
	return scanInstance(t.queryRow(`SELECT `+instanceCols+` FROM instances WHERE id = ?`+t.forUpdate(), id))
}

// Instances lists an account's instances by name.
func (t *Tx) Instances(accountID string) ([]Instance, error) {
	rows, err := t.query(`SELECT `+instanceCols+` FROM instances WHERE account_id = ? ORDER BY name, id`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Instance{}
	for rows.Next() {
		in, err := scanInstance(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, classify(rows.Err())
}

// SetInstanceTags replaces an instance's tags.
func (t *Tx) SetInstanceTags(id string, tags map[string]string, now time.Time) error {
	doc, err := jsonText(tags)
	if err != nil {
		return err
	}
	return t.execOne(`UPDATE instances SET tags = ?, updated_at = ? WHERE id = ?`, doc, ms(now), id)
}

// SetInstanceState records an instance's state, the host its VM runs on and the
// recovery instance launched into it ("" for none).
func (t *Tx) SetInstanceState(id, state, runnerID, recoveryInstanceID string, now time.Time) error {
	return t.execOne(`UPDATE instances SET state = ?, runner_id = ?, recovery_instance_id = ?, updated_at = ? WHERE id = ?`,
		state, runnerID, recoveryInstanceID, ms(now), id)
}

// DeleteInstance removes an instance's row.
func (t *Tx) DeleteInstance(id string) error {
	return t.execOne(`DELETE FROM instances WHERE id = ?`, id)
}

// ClaimInstance reserves an instance for a recovery instance's launch into it: it
// succeeds when no other recovery instance holds it, and reports whether it did.
func (t *Tx) ClaimInstance(id, recoveryInstanceID string, now time.Time) (bool, error) {
	r, err := t.exec(`UPDATE instances SET recovery_instance_id = ?, updated_at = ? WHERE id = ?
		AND (recovery_instance_id = '' OR recovery_instance_id = ?)`, recoveryInstanceID, ms(now), id, recoveryInstanceID)
	if err != nil {
		return false, err
	}
	n, err := r.RowsAffected()
	return n == 1, err
}

// ReleaseInstance ends a recovery instance's hold on an instance (if it holds it).
func (t *Tx) ReleaseInstance(id, recoveryInstanceID string, now time.Time) error {
	_, err := t.exec(`UPDATE instances SET recovery_instance_id = '', updated_at = ? WHERE id = ? AND recovery_instance_id = ?`,
		ms(now), id, recoveryInstanceID)
	return err
}
