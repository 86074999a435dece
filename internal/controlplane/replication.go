package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// replicationAction applies lifeboat replication start|stop|pause|resume|retry. The
// control plane records what is wanted and sets the state it implies at once (STOPPED,
// PAUSED); the agent reads the wish with its replication config and reports what it
// then does.
func (c *call) replicationAction() (api.ReplicationControl, error) {
	action := c.r.PathValue("action")
	if !slices.Contains(api.ReplicationActions, action) {
		return api.ReplicationControl{}, api.Invalid("replication action %q is not one of %v", action, api.ReplicationActions)
	}
	var out api.ReplicationControl
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		ctl, err := tx.ReplicationControl(s.ID)
		if err != nil {
			return err
		}
		st := s.Replication
		var upd api.ReplicationStateUpdate
		state := func(v string) { upd.DataReplicationState = &v }
		switch action {
		case api.ActionStart:
			if ctl.Desired == api.DesiredStopped || st.DataReplicationState == api.StateStopped {
				// A stopped server counts against the quota again.
				acct, err := tx.Account(s.AccountID)
				if err != nil {
					return err
				}
				n, err := tx.CountReplicating(s.AccountID)
				if err != nil {
					return err
				}
				if n >= acct.QuotaSourceServers {
					return api.Errorf(409, api.CodeQuotaExceeded,
						"account %s has reached its quota of %d replicating source servers: raise it with lifeboat accounts set-quota %s <N> (a system admin), or stop replication of another server",
						acct.Name, acct.QuotaSourceServers, acct.ID)
				}
				state(api.StateInitiating)
			}
			ctl.Desired = api.DesiredReplicating
			ctl.Generation++
			upd.ClearError = st.Error != nil
		case api.ActionStop:
			ctl.Desired = api.DesiredStopped
			state(api.StateStopped)
			upd.ClearError = st.Error != nil
		case api.ActionPause:
			if ctl.Desired == api.DesiredStopped {
				return api.Conflict("replication of %s is stopped: start it with lifeboat replication start %s", s.ID, s.ID)
			}
			ctl.Desired = api.DesiredPaused
			state(api.StatePaused)
		case api.ActionResume:
			if ctl.Desired != api.DesiredPaused {
				return api.Conflict("replication of %s is not paused (it is %s): nothing to resume", s.ID, ctl.Desired)
			}
			ctl.Desired = api.DesiredReplicating
			state(api.StateInitiating)
		case api.ActionRetry:
			if ctl.Desired != api.DesiredReplicating {
				return api.Conflict("replication of %s is %s: use lifeboat replication start or resume", s.ID, ctl.Desired)
			}
			ctl.Generation++
			upd.ClearError = st.Error != nil
		}
		if err := tx.SetReplicationControl(s.ID, ctl, now); err != nil {
			return err
		}
		if upd.DataReplicationState != nil || upd.ClearError {
			if err := tx.SetReplicationState(s.ID, st.Apply(upd, now), now); err != nil {
				return err
			}
		}
		out = ctl
		return c.record(tx, s.AccountID, "source-server.replication-"+action, "source-server", s.ID,
			map[string]any{"desired": ctl.Desired, "generation": ctl.Generation}, ctl)
	})
	if err == nil {
		c.cp.serverChanged(c.pathID())
	}
	return out, err
}

// requestSnapshot records a request for a consistency point now (lifeboat snapshots
// create); the agent takes one when it reads the request.
func (c *call) requestSnapshot() (api.SnapshotRequest, error) {
	var out api.SnapshotRequest
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		ctl, err := tx.ReplicationControl(s.ID)
		if err != nil {
			return err
		}
		if ctl.Desired != api.DesiredReplicating {
			return api.Conflict("replication of %s is %s, so no snapshot can be taken: lifeboat replication start or resume %s first", s.ID, ctl.Desired, s.ID)
		}
		if ctl.SnapshotRequest == nil {
			ctl.SnapshotRequest = &api.SnapshotRequest{ID: api.NewID("req-"), RequestedAt: now}
		}
		if err := tx.SetReplicationControl(s.ID, ctl, now); err != nil {
			return err
		}
		out = *ctl.SnapshotRequest
		return c.record(tx, s.AccountID, "source-server.snapshot-request", "source-server", s.ID,
			map[string]any{"request": out.ID}, out)
	})
	if err == nil {
		c.cp.serverChanged(c.pathID())
	}
	return out, err
}

// satisfySnapshotRequest clears a server's snapshot request once a PIT at least as
// recent is recorded.
func satisfySnapshotRequest(tx *db.Tx, serverID string, pitTime, now time.Time) error {
	ctl, err := tx.ReplicationControl(serverID)
	if err != nil || ctl.SnapshotRequest == nil || pitTime.Before(ctl.SnapshotRequest.RequestedAt) {
		return err
	}
	ctl.SnapshotRequest = nil
	return tx.SetReplicationControl(serverID, ctl, now)
}

// agentWatchLoop marks servers whose agent has not called for AgentTimeout as
// DISCONNECTED with AGENT_NOT_SEEN (DRS's wording), until their agent reports again.
func (cp *ControlPlane) agentWatchLoop(ctx context.Context) {
	t := time.NewTicker(max(cp.cfg.AgentTimeout/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := cp.cfg.Now()
		c := &call{cp: cp, ctx: ctx, p: principal{Kind: "system", ID: "agent-watch", Role: api.RoleAdmin}}
		err := c.update(func(tx *db.Tx) error {
			ids, err := tx.StaleAgents(now.Add(-cp.cfg.AgentTimeout))
			if err != nil {
				return err
			}
			for _, id := range ids {
				s, err := tx.SourceServer(id)
				if err != nil {
					return err
				}
				state := api.StateDisconnected
				st := s.Replication.Apply(api.ReplicationStateUpdate{DataReplicationState: &state, Error: &api.ReplicationError{
					Code: api.ErrAgentNotSeen,
					Message: "the replication agent has not contacted the control plane for " + cp.cfg.AgentTimeout.String() +
						": check that the server is up and that lifeboat agent runs on it (systemctl status lifeboat-agent)"}}, now)
				if err := tx.SetReplicationState(id, st, now); err != nil {
					return err
				}
				if err := c.record(tx, s.AccountID, "source-server.replication-state", "source-server", id,
					map[string]any{"from": s.Replication.DataReplicationState, "to": st.DataReplicationState, "error": api.ErrAgentNotSeen}, st); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			cp.log.Warn("checking for agents not seen failed", "err", err)
		}
	}
}

// protectSnapshot locks a PIT: first in the staging store (which enforces it, and on S3
// with Object Lock has the bucket enforce it), then in the record.
func (c *call) protectSnapshot(req *api.ProtectRecoverySnapshotRequest) (api.RecoverySnapshot, error) {
	snap, storeURL, err := c.snapshotStore(c.pathID())
	if err != nil {
		return api.RecoverySnapshot{}, err
	}
	until := req.LockUntil.UTC().Truncate(time.Millisecond)
	if snap.LockUntil != nil && !until.After(*snap.LockUntil) {
		return snap.RecoverySnapshot, nil // already locked at least that long
	}
	repo, err := c.cp.rec.stores.Open(c.ctx, snap.AccountID, storeURL)
	if err != nil {
		return api.RecoverySnapshot{}, api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable,
			"the control plane cannot open the staging store to lock PIT %s: %v", snap.ID, err)
	}
	if _, err := repo.ProtectPIT(c.ctx, snap.SourceServerID, snap.ID, until); err != nil {
		return api.RecoverySnapshot{}, fmt.Errorf("lock PIT %s in the staging store: %w", snap.ID, err)
	}
	err = c.update(func(tx *db.Tx) error {
		if err := tx.SetSnapshotLock(snap.ID, until); err != nil {
			return err
		}
		snap.LockUntil = &until
		return c.record(tx, snap.AccountID, "recovery-snapshot.protect", "recovery-snapshot", snap.ID,
			map[string]any{"lockUntil": until, "sourceServerId": snap.SourceServerID}, snap.RecoverySnapshot)
	})
	return snap.RecoverySnapshot, err
}

// watchServer returns a channel closed at the next change of what a server's agent
// reads in its replication config (serverChanged).
func (cp *ControlPlane) watchServer(id string) <-chan struct{} {
	cp.watchMu.Lock()
	defer cp.watchMu.Unlock()
	if cp.watchers == nil {
		cp.watchers = map[string]chan struct{}{}
	}
	ch, ok := cp.watchers[id]
	if !ok {
		ch = make(chan struct{})
		cp.watchers[id] = ch
	}
	return ch
}

// watchReplicators returns a channel closed at the next change of any server's
// replication config or assignment: what replicators wait on for their assigned list.
func (cp *ControlPlane) watchReplicators() <-chan struct{} {
	cp.watchMu.Lock()
	defer cp.watchMu.Unlock()
	if cp.repWatch == nil {
		cp.repWatch = make(chan struct{})
	}
	return cp.repWatch
}

// serverChanged wakes the agents waiting on a server's replication config ("" wakes
// all: an account's template changed), and the replicators waiting on their lists, in
// this process and in the other control planes sharing the database (wakes.go).
func (cp *ControlPlane) serverChanged(id string) {
	cp.wakeLocal(id)
	cp.announce(id)
}

// wakeLocal is serverChanged within this process.
func (cp *ControlPlane) wakeLocal(id string) {
	cp.watchMu.Lock()
	defer cp.watchMu.Unlock()
	for k, ch := range cp.watchers {
		if id == "" || k == id {
			close(ch)
			delete(cp.watchers, k)
		}
	}
	if cp.repWatch != nil {
		close(cp.repWatch)
		cp.repWatch = nil
	}
}
