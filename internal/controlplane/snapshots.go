package controlplane

import (
	"errors"
	"net/url"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// Snapshot records are not audited one by one: the replicator seals and expires them at
// the pace of the PIT policy, and the row itself says who made it and when. Each one is
// an event; deletions are audited (one entry per request).

func (c *call) createSnapshot(req *api.CreateRecoverySnapshotRequest) (api.RecoverySnapshot, error) {
	var out api.RecoverySnapshot
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		id := req.ID
		if id == "" {
			id = api.NewID(api.PrefixSnapshot)
		}
		replicator := ""
		if c.p.Kind == api.CallerReplicator {
			replicator = c.p.ID
		}
		snap := db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: id, SourceServerID: s.ID, Time: req.Time.UTC(),
			Level: req.Level, Volumes: req.Volumes, SizeBytes: req.SizeBytes, LockUntil: req.LockUntil,
			ReplicatorID: replicator, CreatedAt: now, ManifestDigest: req.ManifestDigest, StagingStoreID: req.StagingStoreID},
			AccountID: s.AccountID}
		if err := tx.CreateSnapshot(snap); errors.Is(err, db.ErrConflict) {
			return api.Conflict("recovery snapshot %s exists already", id)
		} else if err != nil {
			return err
		}
		if req.GroupPointID != "" {
			if err := c.cp.groups.attach(c, tx, snap, req.GroupPointID); err != nil {
				return err
			}
		}
		// The server's last consistency point follows its newest snapshot.
		st := s.Replication.Apply(api.ReplicationStateUpdate{LastConsistencyPoint: &api.ConsistencyPointInfo{
			Time: snap.Time, Level: snap.Level, SnapshotID: snap.ID}}, now)
		if err := tx.SetReplicationState(s.ID, st, now); err != nil {
			return err
		}
		if err := satisfySnapshotRequest(tx, s.ID, snap.Time, now); err != nil {
			return err
		}
		if st.ReadyForRecovery != s.Replication.ReadyForRecovery {
			if err := c.record(tx, s.AccountID, "source-server.replication-state", "source-server", s.ID,
				map[string]any{"from": s.Replication.DataReplicationState, "to": st.DataReplicationState, "readyForRecovery": st.ReadyForRecovery}, st); err != nil {
				return err
			}
		}
		out = snap.RecoverySnapshot
		c.emit(s.AccountID, "recovery-snapshot.create", "recovery-snapshot", snap.ID, out)
		return nil
	})
	return out, err
}

// snapshotFilter reads a listing's after, before and level parameters.
func snapshotFilter(q url.Values) (db.SnapshotFilter, error) {
	var f db.SnapshotFilter
	for _, p := range []struct {
		name string
		to   **time.Time
	}{{"after", &f.After}, {"before", &f.Before}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return f, api.Invalid("%s must be an RFC 3339 time such as 2025-01-02T15:04:05Z, not %q", p.name, v)
		}
		*p.to = &t
	}
	if f.After != nil && f.Before != nil && !f.After.Before(*f.Before) {
		return f, api.Invalid("after (%s) must be earlier than before (%s): after is inclusive, before exclusive",
			f.After.Format(time.RFC3339Nano), f.Before.Format(time.RFC3339Nano))
	}
	if v := q.Get("level"); v != "" {
		l, err := consistency.Parse(v)
		if err != nil {
			return f, api.Invalid("level must be filesystem, crash or none, not %q", v)
		}
		f.Level = &l
	}
	return f, nil
}

func (c *call) listSnapshots() (api.RecoverySnapshotList, error) {
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return api.RecoverySnapshotList{}, err
	}
	filter, err := snapshotFilter(q)
	if err != nil {
		return api.RecoverySnapshotList{}, err
	}
	out := api.RecoverySnapshotList{Items: []api.RecoverySnapshot{}}
	err = c.view(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		rows, next, err := tx.FindSnapshots(s.ID, filter, limit, q.Get("page_token"))
		for _, r := range rows {
			out.Items = append(out.Items, r.RecoverySnapshot)
		}
		out.NextPageToken = next
		return err
	})
	return out, err
}

func (c *call) loadSnapshot(tx *db.Tx, id string) (db.Snapshot, error) {
	s, err := tx.Snapshot(id)
	if errors.Is(err, db.ErrNotFound) || (err == nil && s.AccountID != c.p.AccountID) {
		return s, api.NotFound("recovery snapshot %s was not found", id)
	}
	return s, err
}

func (c *call) getSnapshot() (api.RecoverySnapshot, error) {
	var out api.RecoverySnapshot
	err := c.view(func(tx *db.Tx) error {
		s, err := c.loadSnapshot(tx, c.pathID())
		out = s.RecoverySnapshot
		return err
	})
	return out, err
}

// deletable says why a snapshot may not be deleted now ("" when it may).
func (c *call) lockedReason(s db.Snapshot) string {
	if s.LockUntil != nil && s.LockUntil.After(c.cp.cfg.Now()) {
		return "locked until " + s.LockUntil.Format("2006-01-02 15:04:05 MST")
	}
	return ""
}

func (c *call) deleteSnapshot() (noBody, error) {
	return noBody{}, c.update(func(tx *db.Tx) error {
		s, err := c.loadSnapshot(tx, c.pathID())
		if err != nil {
			return err
		}
		if why := c.lockedReason(s); why != "" {
			return api.Conflict("recovery snapshot %s is %s and cannot be deleted before then", s.ID, why)
		}
		if err := tx.DeleteSnapshot(s.ID); err != nil {
			return err
		}
		return c.record(tx, s.AccountID, "recovery-snapshot.delete", "recovery-snapshot", s.ID,
			map[string]any{"sourceServerId": s.SourceServerID, "time": s.Time}, nil)
	})
}

func (c *call) deleteSnapshots(req *api.DeleteRecoverySnapshotsRequest) (api.DeleteRecoverySnapshotsResponse, error) {
	out := api.DeleteRecoverySnapshotsResponse{Deleted: []string{}}
	err := c.update(func(tx *db.Tx) error {
		out = api.DeleteRecoverySnapshotsResponse{Deleted: []string{}}
		srv, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		for _, id := range req.IDs {
			s, err := tx.Snapshot(id)
			if errors.Is(err, db.ErrNotFound) || (err == nil && s.SourceServerID != srv.ID) {
				out.Refused = append(out.Refused, api.RefusedSnapshot{ID: id, Reason: "not a snapshot of " + srv.ID})
				continue
			}
			if err != nil {
				return err
			}
			if why := c.lockedReason(s); why != "" {
				out.Refused = append(out.Refused, api.RefusedSnapshot{ID: id, Reason: why})
				continue
			}
			if err := tx.DeleteSnapshot(id); err != nil {
				return err
			}
			out.Deleted = append(out.Deleted, id)
		}
		if len(out.Deleted) == 0 {
			return nil
		}
		return c.record(tx, srv.AccountID, "recovery-snapshot.delete", "source-server", srv.ID,
			map[string]any{"snapshots": out.Deleted}, nil)
	})
	return out, err
}
