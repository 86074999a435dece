package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// disconnectSourceServer stops a source server's replication for good and revokes its
// agent's certificate (DRS's Disconnect from AWS). Its PITs stay, for recovery, until the
// server is deleted; delete_data removes the unlocked ones from the record and the
// staging store now. Refused, unless force, while disconnecting would lose the way back:
// the server has a recovery instance that is not a drill, or is the reversed source
// server of a failback that has not completed.
func (c *call) disconnectSourceServer() (api.SourceServer, error) {
	q := c.r.URL.Query()
	force, deleteData := q.Get("force") == "true", q.Get("delete_data") == "true"
	now := c.cp.cfg.Now()
	var out db.SourceServer
	var pits []db.Snapshot
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		if !force {
			if err := refuseDisconnect(tx, s); err != nil {
				return err
			}
		}
		ctl, err := tx.ReplicationControl(s.ID)
		if err != nil {
			return err
		}
		ctl.Desired, ctl.SnapshotRequest = api.DesiredStopped, nil
		if err := tx.SetReplicationControl(s.ID, ctl, now); err != nil {
			return err
		}
		state := api.StateDisconnected
		if err := tx.SetReplicationState(s.ID, s.Replication.Apply(api.ReplicationStateUpdate{DataReplicationState: &state, ClearError: true}, now), now); err != nil {
			return err
		}
		if err := tx.RevokeSourceCertificate(s.ID, now); err != nil {
			return err
		}
		if deleteData {
			if pits, err = unlockedSnapshots(tx, s.ID, now); err != nil {
				return err
			}
		}
		c.wake(s.ID) // its replicator cuts the session, its agent learns it is stopped
		if out, err = tx.SourceServer(s.ID); err != nil {
			return err
		}
		return c.record(tx, s.AccountID, "source-server.disconnect", "source-server", s.ID,
			map[string]any{"force": force, "deleteData": deleteData, "snapshotsDeleted": len(pits)}, nil)
	})
	if err != nil || len(pits) == 0 {
		return out.SourceServer, err
	}
	return out.SourceServer, c.purgeSnapshots(out, pits)
}

// refuseDisconnect says why disconnecting s would lose the way back, if it would.
func refuseDisconnect(tx *db.Tx, s db.SourceServer) error {
	active, err := tx.ActiveRecoveryInstances(s.ID)
	if err != nil {
		return err
	}
	for _, ri := range active {
		if !ri.IsDrill {
			return api.Conflict("source server %s has recovery instance %s (a recovery, not a drill): disconnecting it now loses the way back — its failback rebuilds this server's replica. Fail back first (docs/failback.md), or disconnect with --force",
				s.ID, ri.ID)
		}
	}
	if s.Reversed == nil {
		return nil
	}
	ri, err := tx.RecoveryInstance(s.Reversed.RecoveryInstanceID)
	if errors.Is(err, db.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	if ri.TerminatedAt == nil && ri.FailbackState != api.FailbackCompleted {
		return api.Conflict("source server %s replicates recovery instance %s back for its failback (%s): disconnecting it stops the failback. Finish it (lifeboat failback launch %s), or disconnect with --force",
			s.ID, ri.ID, ri.FailbackState, ri.ID)
	}
	return nil
}

// unlockedSnapshots lists a server's PITs that are not locked beyond now.
func unlockedSnapshots(tx *db.Tx, serverID string, now time.Time) ([]db.Snapshot, error) {
	var out []db.Snapshot
	token := ""
	for {
		page, next, err := tx.ListSnapshots(serverID, 1000, token)
		if err != nil {
			return nil, err
		}
		for _, p := range page {
			if p.LockUntil == nil || !p.LockUntil.After(now) {
				out = append(out, p)
			}
		}
		if next == "" {
			return out, nil
		}
		token = next
	}
}

// purgeSnapshots removes PITs from the staging store, then from the record; a PIT the
// store could not delete stays recorded (and is named in the error).
func (c *call) purgeSnapshots(s db.SourceServer, pits []db.Snapshot) error {
	var storeURL string
	err := c.view(func(tx *db.Tx) error {
		a, err := tx.Account(s.AccountID)
		storeURL = a.Template.Apply(s.Overrides).StagingStoreURL
		return err
	})
	if err != nil {
		return err
	}
	ctx := context.WithoutCancel(c.ctx)
	repo, err := c.cp.rec.stores.Open(ctx, s.AccountID, storeURL)
	if err != nil {
		return api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable,
			"source server %s is disconnected, but the staging store could not be opened to delete its %d PITs: %v (disconnect again with --delete-data)", s.ID, len(pits), err)
	}
	for _, p := range pits {
		if err := repo.DeletePIT(ctx, s.ID, p.ID); err != nil {
			return fmt.Errorf("source server %s is disconnected; deleting PIT %s from the staging store failed: %w (disconnect again with --delete-data)", s.ID, p.ID, err)
		}
		if err := c.cp.db.Update(ctx, func(tx *db.Tx) error { return tx.DeleteSnapshot(p.ID) }); err != nil {
			return err
		}
	}
	c.cp.log.Info("deleted the PITs of a disconnected source server", "server", s.ID, "pits", strconv.Itoa(len(pits)))
	return nil
}
