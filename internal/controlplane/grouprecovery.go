package controlplane

import (
	"slices"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// groupPointSearch is how many of a group's newest complete points a recovery looks at
// for one all of whose members' PITs are still kept.
const groupPointSearch = 50

// expandGroup turns a drill or recovery of a consistency group into one of its members,
// each at its PIT of one complete group point: the one named, or the newest at or before
// the request's time, or the newest. A point some of whose PITs retention deleted is
// not whole and is passed over. It returns the group (nil: the request names servers).
func (c *call) expandGroup(req *api.StartRecoveryRequest) (*db.Group, error) {
	if req.ConsistencyGroup == "" {
		return nil, nil
	}
	var grp db.Group
	err := c.view(func(tx *db.Tx) error {
		var err error
		if grp, err = c.loadGroup(tx, req.ConsistencyGroup); err != nil {
			return err
		}
		p, err := c.wholePoint(tx, grp, req)
		if err != nil {
			return err
		}
		req.GroupPointID, req.At, req.SourceServers = p.ID, nil, nil
		for _, s := range p.Snapshots {
			req.SourceServers = append(req.SourceServers, api.RecoveryServer{SourceServerID: s.SourceServerID, RecoverySnapshotID: s.SnapshotID})
		}
		return nil
	})
	return &grp, err
}

// wholePoint finds the group point a group recovery launches.
func (c *call) wholePoint(tx *db.Tx, grp db.Group, req *api.StartRecoveryRequest) (db.GroupPoint, error) {
	whole := func(p db.GroupPoint) bool { return p.State == api.GroupPointComplete && len(p.Snapshots) == p.Members }
	if req.GroupPointID != "" {
		p, err := tx.GroupPoint(req.GroupPointID)
		if err != nil || p.GroupID != grp.ID {
			return p, api.NotFound("group point %s of group %s was not found: see lifeboat groups points %s", req.GroupPointID, grp.Name, grp.Name)
		}
		if !whole(p) {
			return p, api.Conflict("group point %s is %s with %d of its %d members' PITs: it cannot be launched as a whole; pick another (lifeboat groups points %s)",
				p.ID, p.State, len(p.Snapshots), p.Members, grp.Name)
		}
		return p, nil
	}
	ps, err := tx.CompleteGroupPoints(grp.ID, req.At, groupPointSearch)
	if err != nil {
		return db.GroupPoint{}, err
	}
	if i := slices.IndexFunc(ps, whole); i >= 0 {
		return ps[i], nil
	}
	when := ""
	if req.At != nil {
		when = " at or before " + req.At.UTC().Format("2006-01-02 15:04:05Z")
	}
	return db.GroupPoint{}, api.Conflict("consistency group %s has no complete point%s whose members' PITs are all kept: see lifeboat groups points %s",
		grp.Name, when, grp.Name)
}
