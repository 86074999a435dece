package db

import (
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// UnfinishedGroupPoints returns the group points still PREPARING, FREEZING or SEALING:
// after a restart of the control plane, those its coordinator left.
func (t *Tx) UnfinishedGroupPoints() ([]GroupPoint, error) {
	rows, err := t.query(`SELECT `+groupPointCols+` FROM group_points WHERE state IN (?, ?, ?) ORDER BY created_at, id`,
		api.GroupPointPreparing, api.GroupPointFreezing, api.GroupPointSealing)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []GroupPoint
	for rows.Next() {
		p, err := scanGroupPoint(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, classify(rows.Err())
}

// DeleteOldGroupPoints removes the records of group points begun before before that
// are of no more use: failed ones, and complete ones none of whose members' PITs is
// left (retention deleted them). It returns how many it removed.
func (t *Tx) DeleteOldGroupPoints(before time.Time) (int64, error) {
	r, err := t.exec(`DELETE FROM group_points WHERE created_at < ? AND (state = ? OR (state = ? AND NOT EXISTS (
		SELECT 1 FROM recovery_snapshots WHERE recovery_snapshots.group_point_id = group_points.id)))`,
		ms(before), api.GroupPointFailed, api.GroupPointComplete)
	if err != nil {
		return 0, err
	}
	n, err := r.RowsAffected()
	return n, classify(err)
}

// CompleteGroupPoints returns a group's newest complete points taken at or before at
// (nil: any time), newest first, at most limit, with their members' PITs.
func (t *Tx) CompleteGroupPoints(groupID string, at *time.Time, limit int) ([]GroupPoint, error) {
	cond, args := "", []any{groupID, api.GroupPointComplete}
	if at != nil {
		cond, args = ` AND taken_at <= ?`, append(args, ms(*at))
	}
	rows, err := t.query(`SELECT `+groupPointCols+` FROM group_points WHERE group_id = ? AND state = ?`+cond+
		` ORDER BY taken_at DESC, id LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []GroupPoint
	for rows.Next() {
		p, err := scanGroupPoint(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(err)
	}
	rows.Close()
	ptrs := make([]*GroupPoint, len(out))
	for i := range out {
		ptrs[i] = &out[i]
	}
	return out, t.fillPointSnapshots(ptrs)
}
