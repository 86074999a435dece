package db_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

func srvID(i int) string { return fmt.Sprintf("s-%017d", i) }

func group(name string, members ...string) db.Group {
	return db.Group{ConsistencyGroup: api.ConsistencyGroup{ID: api.NewID(api.PrefixGroup), AccountID: acct, Name: name,
		IntervalSeconds: 1, SourceServerIDs: members, CreatedAt: t0, UpdatedAt: t0}}
}

// update runs fn in a transaction that must commit.
func update(t *testing.T, d *db.DB, fn func(tx *db.Tx) error) {
	t.Helper()
	if err := d.Update(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

// TestGroupsAndMembership: groups by id or name, a server in one group at most, paging
// by name, members added and removed, and deletion that leaves the servers alone.
func TestGroupsAndMembership(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		fixture(t, d)
		ctx := context.Background()
		web, dbs := group("web", srvID(0), srvID(1)), group("db", srvID(2))
		update(t, d, func(tx *db.Tx) error {
			if err := tx.CreateGroup(web); err != nil {
				return err
			}
			return tx.CreateGroup(dbs)
		})
		// A server in another group, at creation and when added.
		err := d.Update(ctx, func(tx *db.Tx) error { return tx.CreateGroup(group("app", srvID(3), srvID(1))) })
		var mc *db.GroupMemberConflict
		if !errors.As(err, &mc) || !errors.Is(err, db.ErrConflict) || mc.SourceServerID != srvID(1) || mc.GroupID != web.ID || mc.GroupName != "web" {
			t.Fatalf("a group with a member of another: %v", err)
		}
		err = d.Update(ctx, func(tx *db.Tx) error { return tx.AddGroupMembers(dbs.ID, []string{srvID(4), srvID(0)}, t0) })
		if !errors.As(err, &mc) || mc.SourceServerID != srvID(0) {
			t.Fatalf("adding a member of another group: %v", err)
		}
		err = d.Update(ctx, func(tx *db.Tx) error { return tx.CreateGroup(group("web", srvID(5))) })
		if !errors.Is(err, db.ErrConflict) || errors.As(err, &mc) {
			t.Fatalf("a second group named web: %v", err)
		}
		later := t0.Add(time.Minute)
		update(t, d, func(tx *db.Tx) error {
			if err := tx.AddGroupMembers(dbs.ID, []string{srvID(2), srvID(5)}, later); err != nil {
				return err
			}
			return tx.RemoveGroupMembers(web.ID, []string{srvID(1)}, later)
		})
		err = d.Update(ctx, func(tx *db.Tx) error { return tx.RemoveGroupMembers(web.ID, []string{srvID(1)}, later) })
		if !errors.Is(err, db.ErrNotFound) {
			t.Fatalf("removing a server that is not a member: %v", err)
		}
		err = d.View(ctx, func(tx *db.Tx) error {
			g, err := tx.Group(acct, "db")
			if err != nil || g.ID != dbs.ID || !reflect.DeepEqual(g.SourceServerIDs, []string{srvID(2), srvID(5)}) || !g.UpdatedAt.Equal(later) {
				t.Errorf("group db: %+v, %v", g, err)
			}
			if g, err := tx.Group(acct, web.ID); err != nil || !reflect.DeepEqual(g.SourceServerIDs, []string{srvID(0)}) {
				t.Errorf("group web by id: %+v, %v", g, err)
			}
			if _, err := tx.Group("acct-00000000000000002", "web"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("a group of another account: %v, want ErrNotFound", err)
			}
			for srv, want := range map[string]string{srvID(0): web.ID, srvID(1): "", srvID(5): dbs.ID} {
				if got, err := tx.GroupOf(srv); err != nil || got != want {
					t.Errorf("GroupOf(%s) = %q, %v; want %q", srv, got, err, want)
				}
			}
			first, next, err := tx.ListGroups(acct, 1, "")
			if err != nil || len(first) != 1 || first[0].Name != "db" || next == "" {
				t.Fatalf("first page: %+v %q %v", first, next, err)
			}
			second, next, err := tx.ListGroups(acct, 1, next)
			if err != nil || len(second) != 1 || second[0].Name != "web" || len(second[0].SourceServerIDs) != 1 || next != "" {
				t.Errorf("second page: %+v %q %v", second, next, err)
			}
			if _, _, err := tx.ListGroups(acct, 1, "!!"); !errors.Is(err, db.ErrBadPageToken) {
				t.Errorf("a bad page token: %v", err)
			}
			all, err := tx.AllGroups()
			if err != nil || len(all) != 2 {
				t.Errorf("all groups: %+v, %v", all, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// Deleting a server leaves its group; deleting the group leaves the servers.
		update(t, d, func(tx *db.Tx) error {
			if err := tx.DeleteSourceServer(srvID(5)); err != nil {
				return err
			}
			return tx.DeleteGroup(web.ID)
		})
		err = d.View(ctx, func(tx *db.Tx) error {
			if g, err := tx.Group(acct, "db"); err != nil || !reflect.DeepEqual(g.SourceServerIDs, []string{srvID(2)}) {
				t.Errorf("group db after its member was deleted: %+v, %v", g, err)
			}
			if _, err := tx.Group(acct, "web"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("deleted group: %v", err)
			}
			_, err := tx.SourceServer(srvID(0))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.DeleteGroup(web.ID) }); !errors.Is(err, db.ErrNotFound) {
			t.Fatalf("deleting a deleted group: %v", err)
		}
	})
}

// TestGroupPoints: points newest first, only complete ones when asked, paged; the
// members' PITs linked to a point; the group's deletion keeps the PITs.
func TestGroupPoints(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		fixture(t, d)
		ctx := context.Background()
		g := group("web", srvID(0), srvID(1))
		var ids []string
		update(t, d, func(tx *db.Tx) error {
			if err := tx.CreateGroup(g); err != nil {
				return err
			}
			for i := range 3 {
				p := db.GroupPoint{GroupPoint: api.GroupPoint{ID: fmt.Sprintf("gpit-%017d", i), GroupID: g.ID,
					State: api.GroupPointPreparing, Members: 2, CreatedAt: t0.Add(time.Duration(i) * time.Second),
					UpdatedAt: t0}, AccountID: acct}
				if err := tx.CreateGroupPoint(p); err != nil {
					return err
				}
				ids = append(ids, p.ID)
			}
			instant := t0.Add(1500 * time.Millisecond)
			for _, id := range []string{ids[0], ids[2]} {
				if err := tx.UpdateGroupPoint(id, api.GroupPointFreezing, "", instant, t0); err != nil {
					return err
				}
			}
			if err := tx.UpdateGroupPoint(ids[0], api.GroupPointComplete, "", time.Time{}, t0.Add(time.Minute)); err != nil {
				return err
			}
			if err := tx.UpdateGroupPoint(ids[1], api.GroupPointFailed, "s-00000000000000001 did not freeze", time.Time{}, t0); err != nil {
				return err
			}
			for i, srv := range []string{srvID(1), srvID(0)} {
				snap := db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: fmt.Sprintf("pit-%017d", i), SourceServerID: srv,
					Time: instant, Level: consistency.Filesystem, Volumes: []api.SnapshotVolume{}, CreatedAt: t0}, AccountID: acct}
				if err := tx.CreateSnapshot(snap); err != nil {
					return err
				}
				if err := tx.SetSnapshotGroupPoint(snap.ID, ids[0]); err != nil {
					return err
				}
			}
			return nil
		})
		err := d.View(ctx, func(tx *db.Tx) error {
			p, err := tx.GroupPoint(ids[0])
			wantSnaps := []api.GroupPointSnapshot{{SourceServerID: srvID(0), SnapshotID: "pit-00000000000000001"},
				{SourceServerID: srvID(1), SnapshotID: "pit-00000000000000000"}}
			if err != nil || p.State != api.GroupPointComplete || p.Time == nil || !p.Time.Equal(t0.Add(1500*time.Millisecond)) ||
				p.AccountID != acct || !reflect.DeepEqual(p.Snapshots, wantSnaps) || !p.UpdatedAt.Equal(t0.Add(time.Minute)) {
				t.Errorf("complete point: %+v, %v", p, err)
			}
			if p, err := tx.GroupPoint(ids[1]); err != nil || p.Time != nil || p.State != api.GroupPointFailed || p.Reason == "" || len(p.Snapshots) != 0 {
				t.Errorf("failed point: %+v, %v", p, err)
			}
			var order []string
			tok := ""
			for range 5 {
				ps, next, err := tx.ListGroupPoints(g.ID, 2, tok, false)
				if err != nil {
					return err
				}
				for _, p := range ps {
					order = append(order, p.ID)
				}
				if tok = next; tok == "" {
					break
				}
			}
			if !reflect.DeepEqual(order, []string{ids[2], ids[1], ids[0]}) {
				t.Errorf("points, newest first, 2 a page: %v", order)
			}
			done, next, err := tx.ListGroupPoints(g.ID, 0, "", true)
			if err != nil || len(done) != 1 || done[0].ID != ids[0] || len(done[0].Snapshots) != 2 || next != "" {
				t.Errorf("complete points: %+v %q %v", done, next, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		update(t, d, func(tx *db.Tx) error { return tx.DeleteGroup(g.ID) })
		err = d.View(ctx, func(tx *db.Tx) error {
			if _, err := tx.GroupPoint(ids[0]); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("a point of a deleted group: %v", err)
			}
			n, err := tx.CountSnapshots(srvID(0))
			if n != 1 {
				t.Errorf("%s has %d PITs after its group was deleted, want 1", srvID(0), n)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
