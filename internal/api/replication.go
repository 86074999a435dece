package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strconv"
	"time"
)

// What an operator wants of a source server's replication (lifeboat replication …).
const (
	DesiredReplicating = "replicating"
	DesiredPaused      = "paused"
	DesiredStopped     = "stopped"
)

// Replication actions (POST /api/v1/source-servers/{id}/replication/{action}).
const (
	ActionStart  = "start"  // replicate again after stop: a new session and a rescan
	ActionStop   = "stop"   // stop replicating; the replica and PITs are kept
	ActionPause  = "pause"  // stop sending for now; tracking goes on where it can
	ActionResume = "resume" // continue after pause
	ActionRetry  = "retry"  // a new session and a rescan, clearing the error (after STALLED)
)

// ReplicationActions lists the actions in the order the CLI shows them.
var ReplicationActions = []string{ActionStart, ActionStop, ActionPause, ActionResume, ActionRetry}

// ReplicationControl is what operators asked of a server's replication; its agent reads
// it with its replication config and acts on changes.
type ReplicationControl struct {
	Desired string `json:"desired"` // replicating, paused or stopped
	// Generation grows with every start and retry: the agent starts a new session and
	// rescans its volumes when it changes.
	Generation int64 `json:"generation"`
	// SnapshotRequest, when set, asks the agent for a consistency point at or after
	// RequestedAt; it is cleared when a PIT that recent is recorded.
	SnapshotRequest *SnapshotRequest `json:"snapshotRequest,omitempty"`
	// Group is the consistency group the server belongs to, if any; GroupPoint, while
	// set, invites its agent to the group point being prepared.
	Group      *GroupMembership `json:"group,omitempty"`
	GroupPoint *GroupPointOrder `json:"groupPoint,omitempty"`
}

// SnapshotRequest asks for a PIT now (lifeboat snapshots create).
type SnapshotRequest struct {
	ID          string    `json:"id"`
	RequestedAt time.Time `json:"requestedAt"`
}

// ReplicationAction applies a replication action to a source server.
func (c *Client) ReplicationAction(ctx context.Context, id, action string) (ReplicationControl, error) {
	var out ReplicationControl
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+esc(id)+"/replication/"+esc(action), nil, nil, &out)
}

// RequestSnapshot asks a source server's agent for a consistency point now; the PIT
// appears in its recovery snapshots with a time at or after the request's.
func (c *Client) RequestSnapshot(ctx context.Context, id string) (SnapshotRequest, error) {
	var out SnapshotRequest
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+esc(id)+"/recovery-snapshots/request", nil, nil, &out)
}

// ProtectRecoverySnapshotRequest locks a PIT against deletion until a time (lifeboat
// snapshots protect). A lock can be extended, never shortened.
type ProtectRecoverySnapshotRequest struct {
	LockUntil time.Time `json:"lockUntil"`
}

// MaxLock is the longest a PIT may be locked for at once.
const MaxLock = 10 * 365 * 24 * time.Hour

// Validate checks the lock time.
func (r ProtectRecoverySnapshotRequest) Validate() error {
	if r.LockUntil.IsZero() {
		return Invalid("lockUntil, the time the PIT stays locked until, is required")
	}
	if time.Until(r.LockUntil) > MaxLock {
		return Invalid("lockUntil %s is more than 10 years away", r.LockUntil.Format(time.RFC3339))
	}
	return nil
}

// ProtectRecoverySnapshot locks a PIT until a time: neither retention, nor a user, nor
// (on S3 with Object Lock) anyone with the bucket's credentials can delete it before.
func (c *Client) ProtectRecoverySnapshot(ctx context.Context, id string, until time.Time) (RecoverySnapshot, error) {
	var out RecoverySnapshot
	return out, c.do(ctx, "PUT", "/api/v1/recovery-snapshots/"+esc(id)+"/lock", nil, ProtectRecoverySnapshotRequest{LockUntil: until}, &out)
}

// Fingerprint identifies the content of a replication config: an agent that waits for
// a change sends the fingerprint of the config it has.
func (c ReplicationConfig) Fingerprint() string {
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// MaxConfigWait is the longest a replication-config request waits for a change.
const MaxConfigWait = 25 * time.Second

// ReplicationConfigWait returns the replication config as soon as it differs from the
// one whose fingerprint is known, or after wait (at most MaxConfigWait) when nothing
// changed: the agent learns of a snapshot request or a stop at once, without polling.
func (c *Client) ReplicationConfigWait(ctx context.Context, id, known string, wait time.Duration) (ReplicationConfig, error) {
	var out ReplicationConfig
	q := url.Values{"known": {known}, "wait": {strconv.Itoa(int(min(wait, MaxConfigWait) / time.Second))}}
	return out, c.do(ctx, "GET", "/api/v1/source-servers/"+esc(id)+"/replication-config", q, nil, &out)
}

// Fingerprint identifies what a replicator acts on in its list of assigned servers: which
// servers, their agents' certificate serials, their settings and what operators asked.
// Progress reports (lag, state) change often and are left out, so a replicator waiting
// for a change (AssignedSourceServersWait) wakes for changes that matter to it only.
func (l AssignedSourceServerList) Fingerprint() string {
	type key struct {
		ID       string
		Serials  []string
		Settings ReplicationSettings
		Control  ReplicationControl
	}
	keys := make([]key, len(l.Items))
	for i, a := range l.Items {
		keys[i] = key{a.SourceServer.ID, a.CertificateSerials, a.Settings, a.Control}
	}
	b, _ := json.Marshal(keys)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// AssignedSourceServersWait returns the replicator's assigned servers as soon as they
// differ from the list whose fingerprint is known, or after wait (at most MaxConfigWait):
// a replicator learns at once that an agent's certificate was replaced or a server moved.
func (c *Client) AssignedSourceServersWait(ctx context.Context, id, known string, wait time.Duration) (AssignedSourceServerList, error) {
	var out AssignedSourceServerList
	q := url.Values{"known": {known}, "wait": {strconv.Itoa(int(min(wait, MaxConfigWait) / time.Second))}}
	return out, c.do(ctx, "GET", "/api/v1/replicators/"+esc(id)+"/source-servers", q, nil, &out)
}

// AssignedSourceServer returns one server assigned to the replicator, read now; ok is
// false when it is not assigned to it.
func (c *Client) AssignedSourceServer(ctx context.Context, id, serverID string) (a AssignedSourceServer, ok bool, err error) {
	var out AssignedSourceServerList
	q := url.Values{"source_server": {serverID}}
	if err := c.do(ctx, "GET", "/api/v1/replicators/"+esc(id)+"/source-servers", q, nil, &out); err != nil {
		return a, false, err
	}
	for _, it := range out.Items {
		if it.SourceServer.ID == serverID {
			return it, true, nil
		}
	}
	return a, false, nil
}
