package controlplane

import (
	"errors"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// Consistency groups: source servers of one account whose PITs are taken at one common
// instant (group points). This file is their data and membership; a change of
// membership wakes the agents of the servers it touches, which read their group in
// their replication config.

// loadGroup reads a consistency group of the caller's account by id or name (404
// otherwise).
func (c *call) loadGroup(tx *db.Tx, idOrName string) (db.Group, error) {
	g, err := tx.Group(c.p.AccountID, idOrName)
	if errors.Is(err, db.ErrNotFound) {
		return g, api.NotFound("consistency group %s was not found: see lifeboat groups list", idOrName)
	}
	return g, err
}

// withLastPoint adds a group's newest complete group point.
func withLastPoint(tx *db.Tx, g db.Group) (api.ConsistencyGroup, error) {
	out := g.ConsistencyGroup
	ps, _, err := tx.ListGroupPoints(g.ID, 1, "", true)
	if err != nil {
		return out, err
	}
	if len(ps) > 0 {
		out.LastPoint = &ps[0].GroupPoint
	}
	return out, nil
}

// checkJoining checks that source servers may join a group: each a source server of
// the caller's account (404 otherwise, whatever another account holds), and not the
// reversed replication of a failback.
func (c *call) checkJoining(tx *db.Tx, ids []string) error {
	for _, id := range ids {
		s, err := c.loadServer(tx, id)
		if err != nil {
			return err
		}
		if s.Reversed != nil {
			return api.Invalid("source server %s is the reversed replication of recovery instance %s (a failback): it cannot join a consistency group",
				id, s.Reversed.RecoveryInstanceID)
		}
	}
	return nil
}

// memberError words a refused membership for the operator.
func memberError(err error) error {
	var mc *db.GroupMemberConflict
	if errors.As(err, &mc) {
		return api.Conflict("source server %s is in consistency group %s already (a server is in one group at most): remove it there first (lifeboat groups remove %s --servers %s)",
			mc.SourceServerID, mc.GroupName, mc.GroupName, mc.SourceServerID)
	}
	return err
}

func (c *call) createGroup(req *api.CreateConsistencyGroupRequest) (api.ConsistencyGroup, error) {
	now := c.cp.cfg.Now()
	interval := req.IntervalSeconds
	if interval == 0 {
		interval = api.DefaultGroupIntervalSeconds
	}
	g := db.Group{ConsistencyGroup: api.ConsistencyGroup{ID: api.NewID(api.PrefixGroup), AccountID: c.p.AccountID, Name: req.Name,
		IntervalSeconds: interval, SourceServerIDs: slices.Sorted(slices.Values(req.SourceServerIDs)), CreatedAt: now, UpdatedAt: now}}
	err := c.update(func(tx *db.Tx) error {
		if err := c.checkJoining(tx, g.SourceServerIDs); err != nil {
			return err
		}
		err := tx.CreateGroup(g)
		var mc *db.GroupMemberConflict
		switch {
		case errors.As(err, &mc):
			return memberError(err)
		case errors.Is(err, db.ErrConflict):
			return api.Conflict("a consistency group named %s exists already: choose another name", g.Name)
		case err != nil:
			return err
		}
		for _, id := range g.SourceServerIDs {
			c.wake(id)
		}
		return c.record(tx, g.AccountID, "consistency-group.create", "consistency-group", g.ID,
			map[string]any{"name": g.Name, "sourceServerIds": g.SourceServerIDs, "intervalSeconds": g.IntervalSeconds}, g.ConsistencyGroup)
	})
	c.cp.groupsChanged()
	return g.ConsistencyGroup, err
}

func (c *call) listGroups() (api.ConsistencyGroupList, error) {
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return api.ConsistencyGroupList{}, err
	}
	out := api.ConsistencyGroupList{Items: []api.ConsistencyGroup{}}
	err = c.view(func(tx *db.Tx) error {
		rows, next, err := tx.ListGroups(c.p.AccountID, limit, q.Get("page_token"))
		if err != nil {
			return err
		}
		for _, g := range rows {
			item, err := withLastPoint(tx, g)
			if err != nil {
				return err
			}
			out.Items = append(out.Items, item)
		}
		out.NextPageToken = next
		return nil
	})
	return out, err
}

func (c *call) getGroup() (api.ConsistencyGroup, error) {
	var out api.ConsistencyGroup
	err := c.view(func(tx *db.Tx) error {
		g, err := c.loadGroup(tx, c.pathID())
		if err != nil {
			return err
		}
		out, err = withLastPoint(tx, g)
		return err
	})
	return out, err
}

func (c *call) deleteGroup() (noBody, error) {
	err := c.update(func(tx *db.Tx) error {
		g, err := c.loadGroup(tx, c.pathID())
		if err != nil {
			return err
		}
		if err := tx.DeleteGroup(g.ID); err != nil {
			return err
		}
		for _, id := range g.SourceServerIDs {
			c.wake(id)
		}
		return c.record(tx, g.AccountID, "consistency-group.delete", "consistency-group", g.ID,
			map[string]any{"name": g.Name, "sourceServerIds": g.SourceServerIDs}, nil)
	})
	c.cp.groupsChanged()
	return noBody{}, err
}

func (c *call) addGroupMembers(req *api.ConsistencyGroupMembersRequest) (api.ConsistencyGroup, error) {
	return c.changeGroupMembers("consistency-group.add-members", req.SourceServerIDs, c.addMembers)
}

func (c *call) removeGroupMembers(req *api.ConsistencyGroupMembersRequest) (api.ConsistencyGroup, error) {
	return c.changeGroupMembers("consistency-group.remove-members", req.SourceServerIDs, c.removeMembers)
}

// changeGroupMembers applies a membership change (change), audits it, and wakes the
// agents of the servers it names.
func (c *call) changeGroupMembers(action string, ids []string, change func(*db.Tx, db.Group, []string, time.Time) error) (api.ConsistencyGroup, error) {
	now := c.cp.cfg.Now()
	var out api.ConsistencyGroup
	err := c.update(func(tx *db.Tx) error {
		g, err := c.loadGroup(tx, c.pathID())
		if err != nil {
			return err
		}
		if err := change(tx, g, ids, now); err != nil {
			return err
		}
		if g, err = tx.Group(g.AccountID, g.ID); err != nil {
			return err
		}
		if out, err = withLastPoint(tx, g); err != nil {
			return err
		}
		for _, id := range ids {
			c.wake(id)
		}
		return c.record(tx, g.AccountID, action, "consistency-group", g.ID,
			map[string]any{"name": g.Name, "sourceServerIds": ids}, out)
	})
	c.cp.groupsChanged()
	return out, err
}

func (c *call) addMembers(tx *db.Tx, g db.Group, ids []string, now time.Time) error {
	if err := c.checkJoining(tx, ids); err != nil {
		return err
	}
	n := len(g.SourceServerIDs)
	for _, id := range ids {
		if !slices.Contains(g.SourceServerIDs, id) {
			n++
		}
	}
	if n > api.MaxGroupMembers {
		return api.Conflict("consistency group %s would have %d members: at most %d are allowed", g.Name, n, api.MaxGroupMembers)
	}
	return memberError(tx.AddGroupMembers(g.ID, ids, now))
}

func (c *call) removeMembers(tx *db.Tx, g db.Group, ids []string, now time.Time) error {
	for _, id := range ids {
		if !slices.Contains(g.SourceServerIDs, id) {
			return api.Invalid("source server %s is not a member of consistency group %s: see lifeboat groups describe %s", id, g.Name, g.Name)
		}
	}
	if len(ids) == len(g.SourceServerIDs) {
		return api.Conflict("consistency group %s keeps at least one member: delete the group instead (lifeboat groups delete %s)", g.Name, g.Name)
	}
	return tx.RemoveGroupMembers(g.ID, ids, now)
}

func (c *call) listGroupPoints() (api.GroupPointList, error) {
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return api.GroupPointList{}, err
	}
	complete := false
	switch v := q.Get("complete"); v {
	case "", "false":
	case "true":
		complete = true
	default:
		return api.GroupPointList{}, api.Invalid("complete must be true or false, not %q", v)
	}
	out := api.GroupPointList{Items: []api.GroupPoint{}}
	err = c.view(func(tx *db.Tx) error {
		g, err := c.loadGroup(tx, c.pathID())
		if err != nil {
			return err
		}
		rows, next, err := tx.ListGroupPoints(g.ID, limit, q.Get("page_token"), complete)
		for _, p := range rows {
			out.Items = append(out.Items, p.GroupPoint)
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}
