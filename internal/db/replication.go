package db

import (
	"database/sql"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// ReplicationControl returns what operators asked of a source server's replication.
func (t *Tx) ReplicationControl(id string) (api.ReplicationControl, error) {
	var c api.ReplicationControl
	var reqID string
	var reqAt sql.NullInt64
	err := t.queryRow(`SELECT replication_desired, replication_generation, snapshot_request_id, snapshot_requested_at
		FROM source_servers WHERE id = ?`, id).Scan(&c.Desired, &c.Generation, &reqID, &reqAt)
	if err != nil {
		return c, classify(err)
	}
	if reqID != "" && reqAt.Valid {
		c.SnapshotRequest = &api.SnapshotRequest{ID: reqID, RequestedAt: fromMS(reqAt.Int64)}
	}
	return c, nil
}

// SetReplicationControl stores what operators asked of a source server's replication.
func (t *Tx) SetReplicationControl(id string, c api.ReplicationControl, now time.Time) error {
	reqID, reqAt := "", any(nil)
	if c.SnapshotRequest != nil {
		reqID, reqAt = c.SnapshotRequest.ID, ms(c.SnapshotRequest.RequestedAt)
	}
	return t.updateSource(id, `UPDATE source_servers SET replication_desired = ?, replication_generation = ?,
		snapshot_request_id = ?, snapshot_requested_at = ?, updated_at = ? WHERE id = ?`,
		c.Desired, c.Generation, reqID, reqAt, ms(now), id)
}

// StaleAgents lists the source servers of every account whose agent was last seen
// before since (or never, and registered before since) and whose state says it should
// be replicating: the control plane marks them AGENT_NOT_SEEN.
func (t *Tx) StaleAgents(since time.Time) ([]string, error) {
	rows, err := t.query(`SELECT id FROM source_servers
		WHERE replication_desired = 'replicating'
		AND data_replication_state NOT IN ('STOPPED', 'PAUSED', 'DISCONNECTED')
		AND COALESCE(last_seen_at, created_at) < ?`, ms(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// SetSnapshotLock records the time a recovery snapshot is locked until.
func (t *Tx) SetSnapshotLock(id string, until time.Time) error {
	return t.execOne(`UPDATE recovery_snapshots SET lock_until = ? WHERE id = ?`, ms(until), id)
}
