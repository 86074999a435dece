package api

import (
	"context"
	"time"
)

// Consistency groups: source servers whose PITs are taken at one common instant, a group
// point, so that servers that depend on each other (an application and its database)
// recover to the same moment. A source server is in at most one group, of its own
// account; a reversed source server (failback) is in none.

// Group limits.
const (
	MaxGroupMembers             = 64   // source servers in a group
	DefaultGroupIntervalSeconds = 1    // group point interval when none is given
	MaxGroupIntervalSeconds     = 3600 // longest group point interval
)

// Group point states, in the order a point goes through them; COMPLETE and FAILED end it.
const (
	GroupPointPreparing = "PREPARING" // the members are asked to get ready
	GroupPointFreezing  = "FREEZING"  // the members freeze at the group instant
	GroupPointSealing   = "SEALING"   // the members' replicators seal their PITs
	GroupPointComplete  = "COMPLETE"  // every member has a PIT of the group instant
	GroupPointFailed    = "FAILED"    // see its reason; the members' PITs of it, if any, stand alone
)

// ConsistencyGroup is a consistency group.
type ConsistencyGroup struct {
	ID              string   `json:"id"`
	AccountID       string   `json:"accountId"`
	Name            string   `json:"name"`
	IntervalSeconds int      `json:"intervalSeconds"` // how often a group point is taken
	SourceServerIDs []string `json:"sourceServerIds"`
	// LastPoint is the newest complete group point, if any.
	LastPoint *GroupPoint `json:"lastPoint,omitempty"`
	CreatedAt time.Time   `json:"createdAt"`
	UpdatedAt time.Time   `json:"updatedAt"`
}

// ConsistencyGroupList is a page of an account's consistency groups, by name.
type ConsistencyGroupList struct {
	Items         []ConsistencyGroup `json:"items"`
	NextPageToken string             `json:"nextPageToken,omitempty"`
}

// CreateConsistencyGroupRequest creates a consistency group of 1 to MaxGroupMembers
// source servers (a group of one is allowed: it may grow later).
type CreateConsistencyGroupRequest struct {
	Name            string   `json:"name"`
	SourceServerIDs []string `json:"sourceServerIds"`
	// IntervalSeconds is the group point interval, 1 to 3600; 0 means the default, 1.
	IntervalSeconds int `json:"intervalSeconds,omitempty"`
}

// Validate checks a group's creation; the servers themselves are checked by the server.
func (r CreateConsistencyGroupRequest) Validate() error {
	if !ValidName(r.Name) || ValidID(PrefixGroup, r.Name) {
		return Invalid("name %q must be 1-63 lowercase letters, digits or '-', and not look like a group id (%s…)", r.Name, PrefixGroup)
	}
	if r.IntervalSeconds < 0 || r.IntervalSeconds > MaxGroupIntervalSeconds {
		return Invalid("intervalSeconds must be 1 to %d (0 for the default, %d), not %d",
			MaxGroupIntervalSeconds, DefaultGroupIntervalSeconds, r.IntervalSeconds)
	}
	return validateGroupServers(r.SourceServerIDs)
}

// ConsistencyGroupMembersRequest names source servers to add to a group or remove from it.
type ConsistencyGroupMembersRequest struct {
	SourceServerIDs []string `json:"sourceServerIds"`
}

// Validate checks a membership change.
func (r ConsistencyGroupMembersRequest) Validate() error {
	return validateGroupServers(r.SourceServerIDs)
}

func validateGroupServers(ids []string) error {
	if len(ids) == 0 || len(ids) > MaxGroupMembers {
		return Invalid("sourceServerIds must name 1 to %d source servers, not %d", MaxGroupMembers, len(ids))
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if !ValidID(PrefixSourceServer, id) {
			return Invalid("sourceServerIds: %q is not a source server id (see lifeboat source-servers list)", id)
		}
		if seen[id] {
			return Invalid("sourceServerIds names %s twice", id)
		}
		seen[id] = true
	}
	return nil
}

// GroupPoint is one attempt to take a PIT of every member of a group at one instant.
type GroupPoint struct {
	ID      string `json:"id"`
	GroupID string `json:"groupId"`
	// Time is the group instant: when the members froze (absent until they did).
	Time    *time.Time `json:"time,omitempty"`
	State   string     `json:"state"`
	Reason  string     `json:"reason,omitempty"` // why it failed
	Members int        `json:"members"`          // members when it began
	// Snapshots are the members' PITs of it, by source server.
	Snapshots []GroupPointSnapshot `json:"snapshots"`
	CreatedAt time.Time            `json:"createdAt"`
	UpdatedAt time.Time            `json:"updatedAt"`
}

// GroupPointSnapshot is a member's PIT of a group point.
type GroupPointSnapshot struct {
	SourceServerID string `json:"sourceServerId"`
	SnapshotID     string `json:"snapshotId"`
}

// GroupPointList is a page of a group's points, newest first.
type GroupPointList struct {
	Items         []GroupPoint `json:"items"`
	NextPageToken string       `json:"nextPageToken,omitempty"`
}

// CreateConsistencyGroup creates a consistency group.
func (c *Client) CreateConsistencyGroup(ctx context.Context, req CreateConsistencyGroupRequest) (ConsistencyGroup, error) {
	var out ConsistencyGroup
	return out, c.do(ctx, "POST", "/api/v1/consistency-groups", nil, req, &out)
}

// ListConsistencyGroups returns a page of the account's consistency groups, by name.
func (c *Client) ListConsistencyGroups(ctx context.Context, limit int, pageToken string) (ConsistencyGroupList, error) {
	var out ConsistencyGroupList
	return out, c.do(ctx, "GET", "/api/v1/consistency-groups", pageQuery(limit, pageToken), nil, &out)
}

// AllConsistencyGroups pages through every consistency group of the account.
func (c *Client) AllConsistencyGroups(ctx context.Context) ([]ConsistencyGroup, error) {
	return AllPages(ctx, func(ctx context.Context, token string) ([]ConsistencyGroup, string, error) {
		page, err := c.ListConsistencyGroups(ctx, 0, token)
		return page.Items, page.NextPageToken, err
	})
}

// GetConsistencyGroup describes a consistency group, by id or name.
func (c *Client) GetConsistencyGroup(ctx context.Context, idOrName string) (ConsistencyGroup, error) {
	var out ConsistencyGroup
	return out, c.do(ctx, "GET", "/api/v1/consistency-groups/"+esc(idOrName), nil, nil, &out)
}

// DeleteConsistencyGroup deletes a consistency group and its group points; its members'
// PITs stay.
func (c *Client) DeleteConsistencyGroup(ctx context.Context, idOrName string) error {
	return c.do(ctx, "DELETE", "/api/v1/consistency-groups/"+esc(idOrName), nil, nil, nil)
}

// AddGroupMembers adds source servers to a consistency group.
func (c *Client) AddGroupMembers(ctx context.Context, group string, serverIDs []string) (ConsistencyGroup, error) {
	var out ConsistencyGroup
	return out, c.do(ctx, "POST", "/api/v1/consistency-groups/"+esc(group)+"/members", nil,
		ConsistencyGroupMembersRequest{SourceServerIDs: serverIDs}, &out)
}

// RemoveGroupMembers removes source servers from a consistency group.
func (c *Client) RemoveGroupMembers(ctx context.Context, group string, serverIDs []string) (ConsistencyGroup, error) {
	var out ConsistencyGroup
	return out, c.do(ctx, "POST", "/api/v1/consistency-groups/"+esc(group)+"/members/remove", nil,
		ConsistencyGroupMembersRequest{SourceServerIDs: serverIDs}, &out)
}

// ListGroupPoints returns a page of a group's points, newest first; onlyComplete leaves
// out those that did not complete (yet).
func (c *Client) ListGroupPoints(ctx context.Context, group string, limit int, pageToken string, onlyComplete bool) (GroupPointList, error) {
	q := pageQuery(limit, pageToken)
	if onlyComplete {
		q.Set("complete", "true")
	}
	var out GroupPointList
	return out, c.do(ctx, "GET", "/api/v1/consistency-groups/"+esc(group)+"/points", q, nil, &out)
}
