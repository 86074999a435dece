package db

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Group is a consistency group row with its members (SourceServerIDs, by id). LastPoint
// is not read here: see ListGroupPoints.
type Group struct {
	api.ConsistencyGroup
}

// GroupPoint is a group point row, with its members' PITs (Snapshots, by source server).
type GroupPoint struct {
	api.GroupPoint
	AccountID string
}

// GroupMemberConflict says a source server is a member of another group already. It
// is an ErrConflict (errors.Is).
type GroupMemberConflict struct {
	SourceServerID string
	GroupID        string // the group it is in
	GroupName      string
}

func (e *GroupMemberConflict) Error() string {
	return fmt.Sprintf("source server %s is in consistency group %s (%s)", e.SourceServerID, e.GroupName, e.GroupID)
}

// Unwrap makes a GroupMemberConflict an ErrConflict.
func (e *GroupMemberConflict) Unwrap() error { return ErrConflict }

const groupCols = `id, account_id, name, interval_seconds, created_at, updated_at`

func scanGroup(row interface{ Scan(...any) error }) (Group, error) {
	var g Group
	var created, updated int64
	if err := row.Scan(&g.ID, &g.AccountID, &g.Name, &g.IntervalSeconds, &created, &updated); err != nil {
		return g, classify(err)
	}
	g.CreatedAt, g.UpdatedAt = fromMS(created), fromMS(updated)
	g.SourceServerIDs = []string{}
	return g, nil
}

// CreateGroup inserts a group and its members. ErrConflict when the account has a group
// of that name; a *GroupMemberConflict when a member is in another group; ErrReferenced
// when a member does not exist.
func (t *Tx) CreateGroup(g Group) error {
	// Members are checked before anything is written: PostgreSQL ends a transaction in
	// which a statement failed, so the caller could not word the refusal.
	for _, id := range g.SourceServerIDs {
		if err := t.checkNotInOtherGroup(g.ID, id); err != nil {
			return err
		}
	}
	_, err := t.exec(`INSERT INTO consistency_groups (`+groupCols+`) VALUES (?, ?, ?, ?, ?, ?)`,
		g.ID, g.AccountID, g.Name, g.IntervalSeconds, ms(g.CreatedAt), ms(g.UpdatedAt))
	if err != nil {
		return err
	}
	for _, id := range g.SourceServerIDs {
		if _, err := t.exec(`INSERT INTO consistency_group_members (group_id, source_server_id) VALUES (?, ?)`, g.ID, id); err != nil {
			return err
		}
	}
	return nil
}

// checkNotInOtherGroup returns a *GroupMemberConflict when server is in a group other
// than groupID.
func (t *Tx) checkNotInOtherGroup(groupID, server string) error {
	var id, name string
	err := t.queryRow(`SELECT g.id, g.name FROM consistency_group_members m JOIN consistency_groups g ON g.id = m.group_id
		WHERE m.source_server_id = ?`, server).Scan(&id, &name)
	switch err = classify(err); {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return err
	case id != groupID:
		return &GroupMemberConflict{SourceServerID: server, GroupID: id, GroupName: name}
	}
	return nil
}

// Group returns an account's group by id or name, with its members.
func (t *Tx) Group(accountID, idOrName string) (Group, error) {
	g, err := scanGroup(t.queryRow(`SELECT `+groupCols+` FROM consistency_groups WHERE account_id = ? AND (id = ? OR name = ?)`,
		accountID, idOrName, idOrName))
	if err != nil {
		return g, err
	}
	return g, t.fillMembers([]*Group{&g})
}

// ListGroups returns a page of an account's groups, by name, with their members.
func (t *Tx) ListGroups(accountID string, limit int, pageToken string) ([]Group, string, error) {
	args := []any{accountID}
	cond := ""
	if pageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || !api.ValidName(string(b)) {
			return nil, "", ErrBadPageToken
		}
		cond = ` AND name > ?`
		args = append(args, string(b))
	}
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	args = append(args, limit+1)
	out, err := t.groups(`SELECT `+groupCols+` FROM consistency_groups WHERE account_id = ?`+cond+` ORDER BY name LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = base64.RawURLEncoding.EncodeToString([]byte(out[limit-1].Name))
	}
	return out, next, nil
}

// AllGroups returns the groups of every account, with their members.
func (t *Tx) AllGroups() ([]Group, error) {
	return t.groups(`SELECT ` + groupCols + ` FROM consistency_groups ORDER BY account_id, name`)
}

// groups runs a query of groups and reads their members.
func (t *Tx) groups(q string, args ...any) ([]Group, error) {
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Group{}
	for rows.Next() {
		g, err := scanGroup(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(err)
	}
	rows.Close() // before the next query: a transaction's connection runs one at a time
	ptrs := make([]*Group, len(out))
	for i := range out {
		ptrs[i] = &out[i]
	}
	return out, t.fillMembers(ptrs)
}

// fillMembers reads the members of groups, by source server id.
func (t *Tx) fillMembers(gs []*Group) error {
	if len(gs) == 0 {
		return nil
	}
	byID := map[string]*Group{}
	args := make([]any, 0, len(gs))
	for _, g := range gs {
		byID[g.ID] = g
		args = append(args, g.ID)
	}
	rows, err := t.query(`SELECT group_id, source_server_id FROM consistency_group_members WHERE group_id IN (`+
		placeholders(len(args))+`) ORDER BY group_id, source_server_id`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var gid, sid string
		if err := rows.Scan(&gid, &sid); err != nil {
			return classify(err)
		}
		byID[gid].SourceServerIDs = append(byID[gid].SourceServerIDs, sid)
	}
	return classify(rows.Err())
}

// placeholders returns n comma-separated question marks.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// DeleteGroup deletes a group, its membership and its group points. Its members' PITs
// stay, no longer linked to a group point.
func (t *Tx) DeleteGroup(id string) error {
	if _, err := t.exec(`UPDATE recovery_snapshots SET group_point_id = '' WHERE group_point_id IN
		(SELECT id FROM group_points WHERE group_id = ?)`, id); err != nil {
		return err
	}
	return t.execOne(`DELETE FROM consistency_groups WHERE id = ?`, id)
}

// AddGroupMembers adds source servers to a group (those in it already are left as they
// are). A *GroupMemberConflict when one is in another group; ErrReferenced when one
// does not exist; ErrNotFound when the group does not.
func (t *Tx) AddGroupMembers(groupID string, serverIDs []string, now time.Time) error {
	for _, id := range serverIDs {
		if err := t.checkNotInOtherGroup(groupID, id); err != nil {
			return err
		}
	}
	if err := t.execOne(`UPDATE consistency_groups SET updated_at = ? WHERE id = ?`, ms(now), groupID); err != nil {
		return err
	}
	for _, id := range serverIDs {
		_, err := t.exec(`INSERT INTO consistency_group_members (group_id, source_server_id) VALUES (?, ?)
			ON CONFLICT (group_id, source_server_id) DO NOTHING`, groupID, id)
		if err != nil {
			return err
		}
	}
	return nil
}

// RemoveGroupMembers removes source servers from a group; ErrNotFound when one is not
// a member (nothing is removed then) or the group does not exist.
func (t *Tx) RemoveGroupMembers(groupID string, serverIDs []string, now time.Time) error {
	for _, id := range serverIDs {
		var n int
		err := t.queryRow(`SELECT COUNT(*) FROM consistency_group_members WHERE group_id = ? AND source_server_id = ?`,
			groupID, id).Scan(&n)
		if err != nil {
			return classify(err)
		}
		if n == 0 {
			return fmt.Errorf("source server %s is not a member of group %s: %w", id, groupID, ErrNotFound)
		}
	}
	if err := t.execOne(`UPDATE consistency_groups SET updated_at = ? WHERE id = ?`, ms(now), groupID); err != nil {
		return err
	}
	for _, id := range serverIDs {
		if err := t.execOne(`DELETE FROM consistency_group_members WHERE group_id = ? AND source_server_id = ?`, groupID, id); err != nil {
			return err
		}
	}
	return nil
}

// GroupOf returns the id of the group a source server is in ("" when none).
func (t *Tx) GroupOf(serverID string) (string, error) {
	var id string
	err := classify(t.queryRow(`SELECT group_id FROM consistency_group_members WHERE source_server_id = ?`, serverID).Scan(&id))
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	return id, err
}
