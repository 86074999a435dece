package db

import (
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// UnfinishedGroupPoints returns the group points still PREPARING, FREEZING or SEALING:
// after a restart of the control plane, those its coordinator left.
func (t *Tx) UnfinishedGroupPoints() ([]GroupPoint, error) {
	return t.groupPoints(`SELECT `+groupPointCols+` FROM group_points WHERE state IN (?, ?, ?) ORDER BY created_at, id`,
		api.GroupPointPreparing, api.GroupPointFreezing, api.GroupPointSealing)
}

// groupPoints runs a query of group points and reads them all (without their PITs).
func (t *Tx) groupPoints(q string, args ...any) ([]GroupPoint, error) {
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []GroupPoint{}
	for rows.Next() {
		p, err := scanGroupPoint(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, classify(rows.Err())
}

// withSnapshots fills the members' PITs of group points.
func (t *Tx) withSnapshots(ps []GroupPoint) ([]GroupPoint, error) {
	ptrs := make([]*GroupPoint, len(ps))
	for i := range ps {
		ptrs[i] = &ps[i]
	}
	return ps, t.fillPointSnapshots(ptrs)
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
	out, err := t.groupPoints(`SELECT `+groupPointCols+` FROM group_points WHERE group_id = ? AND state = ?`+cond+
		` ORDER BY taken_at DESC, id LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	return t.withSnapshots(out)
}
