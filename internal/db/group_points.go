package db

import (
	"database/sql"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

const groupPointCols = `id, group_id, account_id, taken_at, state, reason, members, created_at, updated_at`

func scanGroupPoint(row interface{ Scan(...any) error }) (GroupPoint, error) {
	var p GroupPoint
	var taken, created, updated int64
	err := row.Scan(&p.ID, &p.GroupID, &p.AccountID, &taken, &p.State, &p.Reason, &p.Members, &created, &updated)
	if err != nil {
		return p, classify(err)
	}
	if taken != 0 {
		p.Time = optTime(sql.NullInt64{Int64: taken, Valid: true})
	}
	p.CreatedAt, p.UpdatedAt = fromMS(created), fromMS(updated)
	p.Snapshots = []api.GroupPointSnapshot{}
	return p, nil
}

// takenMS stores a group instant: 0 for none.
func takenMS(t *time.Time) int64 {
	if t == nil || t.IsZero() {
		return 0
	}
	return ms(*t)
}

// CreateGroupPoint inserts a group point (its Snapshots are not stored here: see
// SetSnapshotGroupPoint). ErrReferenced when its group does not exist.
func (t *Tx) CreateGroupPoint(p GroupPoint) error {
	_, err := t.exec(`INSERT INTO group_points (`+groupPointCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		p.ID, p.GroupID, p.AccountID, takenMS(p.Time), p.State, p.Reason, p.Members, ms(p.CreatedAt), ms(p.UpdatedAt))
	return err
}

// UpdateGroupPoint records a group point's state, the reason of a failure, and its group
// instant (a zero takenAt leaves the recorded one as it is).
func (t *Tx) UpdateGroupPoint(id, state, reason string, takenAt time.Time, now time.Time) error {
	if takenAt.IsZero() {
		return t.execOne(`UPDATE group_points SET state = ?, reason = ?, updated_at = ? WHERE id = ?`, state, reason, ms(now), id)
	}
	return t.execOne(`UPDATE group_points SET state = ?, reason = ?, taken_at = ?, updated_at = ? WHERE id = ?`,
		state, reason, ms(takenAt), ms(now), id)
}

// GroupPoint returns a group point with its members' PITs.
func (t *Tx) GroupPoint(id string) (GroupPoint, error) {
	p, err := scanGroupPoint(t.queryRow(`SELECT `+groupPointCols+` FROM group_points WHERE id = ?`, id))
	if err != nil {
		return p, err
	}
	return p, t.fillPointSnapshots([]*GroupPoint{&p})
}

// ListGroupPoints returns a page of a group's points, newest first, with their members'
// PITs; onlyComplete lists only COMPLETE ones.
func (t *Tx) ListGroupPoints(groupID string, limit int, pageToken string, onlyComplete bool) ([]GroupPoint, string, error) {
	args := []any{groupID}
	cond := ""
	if onlyComplete {
		cond += ` AND state = ?`
		args = append(args, api.GroupPointComplete)
	}
	if pageToken != "" {
		at, id, err := decodeTimeCursor(pageToken, api.PrefixGroupPoint)
		if err != nil {
			return nil, "", err
		}
		cond += ` AND (created_at < ? OR (created_at = ? AND id > ?))`
		args = append(args, at, at, id)
	}
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	args = append(args, limit+1)
	out, err := t.groupPoints(`SELECT `+groupPointCols+` FROM group_points WHERE group_id = ?`+cond+
		` ORDER BY created_at DESC, id LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = encodeTimeCursor(ms(last.CreatedAt), last.ID)
	}
	out, err = t.withSnapshots(out)
	return out, next, err
}

// fillPointSnapshots reads the members' PITs of group points, by source server.
func (t *Tx) fillPointSnapshots(ps []*GroupPoint) error {
	if len(ps) == 0 {
		return nil
	}
	byID := map[string]*GroupPoint{}
	args := make([]any, 0, len(ps))
	for _, p := range ps {
		byID[p.ID] = p
		args = append(args, p.ID)
	}
	rows, err := t.query(`SELECT group_point_id, source_server_id, id FROM recovery_snapshots WHERE group_point_id IN (`+
		placeholders(len(args))+`) ORDER BY group_point_id, source_server_id, id`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var pid string
		var s api.GroupPointSnapshot
		if err := rows.Scan(&pid, &s.SourceServerID, &s.SnapshotID); err != nil {
			return classify(err)
		}
		byID[pid].Snapshots = append(byID[pid].Snapshots, s)
	}
	return classify(rows.Err())
}

// SetSnapshotGroupPoint links a member's PIT to the group point it was taken for.
func (t *Tx) SetSnapshotGroupPoint(snapshotID, groupPointID string) error {
	return t.execOne(`UPDATE recovery_snapshots SET group_point_id = ? WHERE id = ?`, groupPointID, snapshotID)
}
