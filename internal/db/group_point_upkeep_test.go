package db_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// The coordinator's upkeep: the points a restart left unfinished, the complete points at
// or before a time, and the removal of records of no more use (failed ones, and complete
// ones whose PITs retention deleted) while a complete point with its PITs stays.
func TestGroupPointUpkeep(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		fixture(t, d)
		g := group("app", srvID(0))
		states := []string{api.GroupPointComplete, api.GroupPointComplete, api.GroupPointFailed, api.GroupPointSealing}
		var ids []string
		update(t, d, func(tx *db.Tx) error {
			if err := tx.CreateGroup(g); err != nil {
				return err
			}
			for i, st := range states {
				at := t0.Add(time.Duration(i) * time.Second)
				p := db.GroupPoint{GroupPoint: api.GroupPoint{ID: fmt.Sprintf("gpit-%017d", i), GroupID: g.ID, Time: &at,
					State: st, Members: 1, CreatedAt: at, UpdatedAt: at}, AccountID: acct}
				if err := tx.CreateGroupPoint(p); err != nil {
					return err
				}
				ids = append(ids, p.ID)
			}
			snap := db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: "pit-00000000000000007", SourceServerID: srvID(0),
				Time: t0, Level: consistency.Filesystem, Volumes: []api.SnapshotVolume{}, CreatedAt: t0}, AccountID: acct}
			if err := tx.CreateSnapshot(snap); err != nil {
				return err
			}
			return tx.SetSnapshotGroupPoint(snap.ID, ids[0]) // ids[1] is complete, but its PIT is gone
		})
		err := d.Update(context.Background(), func(tx *db.Tx) error {
			un, err := tx.UnfinishedGroupPoints()
			if err != nil || len(un) != 1 || un[0].ID != ids[3] {
				t.Errorf("unfinished points %+v (%v), want only %s", un, err, ids[3])
			}
			before := t0.Add(1500 * time.Millisecond)
			ps, err := tx.CompleteGroupPoints(g.ID, &before, 10)
			if err != nil || len(ps) != 2 || ps[0].ID != ids[1] || len(ps[1].Snapshots) != 1 {
				t.Errorf("complete points at or before %s: %+v (%v), want %s then %s with its PIT", before, ps, err, ids[1], ids[0])
			}
			n, err := tx.DeleteOldGroupPoints(t0.Add(time.Hour))
			if err != nil || n != 2 {
				t.Errorf("removed %d old points (%v), want the failed one and the complete one without PITs", n, err)
			}
			ps, err = tx.CompleteGroupPoints(g.ID, nil, 10)
			if err != nil || len(ps) != 1 || ps[0].ID != ids[0] {
				t.Errorf("complete points after the removal: %+v (%v), want only %s", ps, err, ids[0])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
