package api

import (
	"context"
	"time"
)

// GroupMembership tells a member's agent that its server belongs to a consistency group:
// it takes the group's points, and its own only while the group's do not come
// (docs/architecture.md, "Consistency groups").
type GroupMembership struct {
	ID              string `json:"id"`
	IntervalSeconds int    `json:"intervalSeconds"`
}

// GroupPointOrder invites a member's agent to a group point: prepare (write back and
// send what is dirty), then report ready before Deadline.
type GroupPointOrder struct {
	ID       string    `json:"id"` // gpit-…
	Deadline time.Time `json:"deadline"`
}

// Phases an agent reports for a group point.
const (
	GroupPhaseReady  = "ready"  // prepared: the next step is the freeze
	GroupPhaseFrozen = "frozen" // frozen, the point's blocks read: waiting for the thaw
	GroupPhaseFailed = "failed" // cannot take part: every member thaws at once
)

// What the coordinator tells an agent to do next.
const (
	GroupActionFreeze = "freeze" // every member is ready: freeze now
	GroupActionThaw   = "thaw"   // every member is frozen: thaw, and seal the point at Time
	GroupActionAbort  = "abort"  // the point failed (Reason): thaw, put back, carry on
)

// GroupPointReport is an agent's report of a phase of a group point.
type GroupPointReport struct {
	Phase   string `json:"phase"`
	Message string `json:"message,omitempty"` // why, for failed
}

// GroupPointDecision answers a report once every member reached the phase, or the point
// failed: the request waits for it.
type GroupPointDecision struct {
	Action string     `json:"action"`
	Time   *time.Time `json:"time,omitempty"` // thaw: the group's instant, every member's PIT time
	Reason string     `json:"reason,omitempty"`
}

// ReportGroupPoint reports a phase of a group point and waits for what to do next.
func (c *Client) ReportGroupPoint(ctx context.Context, serverID, pointID string, r GroupPointReport) (GroupPointDecision, error) {
	var out GroupPointDecision
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+esc(serverID)+"/group-points/"+esc(pointID), nil, r, &out)
}
