package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const acct = "acct-00000000000000001"

// fixture fills a database with one account, two sites, two replicators and ten source
// servers with varied states, hostnames and assignments.
func fixture(t *testing.T, d *db.DB) {
	t.Helper()
	err := d.Update(context.Background(), func(tx *db.Tx) error {
		a := db.Account{Account: api.Account{ID: acct, Name: "default", System: true, QuotaSourceServers: 300, CreatedAt: t0},
			Template: api.DefaultReplicationSettings("file:///var/lib/lifeboat/staging")}
		if err := tx.CreateAccount(a); err != nil {
			return err
		}
		for _, s := range []string{"default", "dr"} {
			if err := tx.CreateSite(acct, api.Site{ID: s, CreatedAt: t0}); err != nil {
				return err
			}
		}
		hb := t0
		for i, name := range []string{"r1", "r2"} {
			r := db.Replicator{Replicator: api.Replicator{ID: fmt.Sprintf("rep-0000000000000000%d", i+1), AccountID: acct,
				Name: name, SiteID: "default", Address: "127.0.0.1:1500", CertificateExpiresAt: t0.AddDate(1, 0, 0),
				CreatedAt: t0, LastHeartbeatAt: &hb}, CertSerial: fmt.Sprint(i)}
			if i == 1 {
				r.LastHeartbeatAt = nil // never beat: lost
			}
			if err := tx.CreateReplicator(r); err != nil {
				return err
			}
		}
		hosts := []string{"web-1", "web-2", "db_1", "DB-2", "cache%1", "app-1", "app-2", "app-3", "mail", "WEB-3"}
		for i, h := range hosts {
			st := api.NewReplicationState(t0)
			switch i % 3 {
			case 1:
				st.DataReplicationState = api.StateContinuous
				st.LastConsistencyPoint = &api.ConsistencyPointInfo{Time: t0, Level: consistency.Filesystem}
			case 2:
				st.DataReplicationState = api.StateStopped
			}
			st.ReadyForRecovery = st.Ready()
			s := db.SourceServer{SourceServer: api.SourceServer{ID: fmt.Sprintf("s-%017d", i), AccountID: acct,
				MachineID: fmt.Sprintf("m%d", i), Hostname: h, SiteID: "default", Replication: st,
				CertificateExpiresAt: t0.AddDate(1, 0, 0), CreatedAt: t0.Add(time.Duration(i) * time.Second),
				UpdatedAt: t0}, CertSerial: fmt.Sprint(i)}
			switch {
			case i < 3:
				s.ReplicatorID = "rep-00000000000000001"
			case i < 5:
				s.ReplicatorID = "rep-00000000000000002"
			}
			if err := tx.CreateSourceServer(s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
}

func ids(ss []db.SourceServer) []string {
	out := []string{}
	for _, s := range ss {
		out = append(out, s.ID)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// TestEnginesAgree runs each case on SQLite and PostgreSQL, checks it against the
// expected result, and checks both engines gave the same result.
func TestEnginesAgree(t *testing.T) {
	cases := []struct {
		name string
		run  func(tx *db.Tx) (any, error)
		want any
	}{
		{"list all, ready first", func(tx *db.Tx) (any, error) {
			ss, next, err := tx.ListSourceServers(acct, api.SourceServerFilter{})
			return fmt.Sprint(ids(ss), next == ""), err
		}, "[s-00000000000000001 s-00000000000000004 s-00000000000000007 s-00000000000000000 s-00000000000000002 " +
			"s-00000000000000003 s-00000000000000005 s-00000000000000006 s-00000000000000008 s-00000000000000009] true"},
		{"hostname substring is case-insensitive and literal", func(tx *db.Tx) (any, error) {
			a, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{Hostname: "WeB"})
			if err != nil {
				return nil, err
			}
			b, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{Hostname: "_"})
			if err != nil {
				return nil, err
			}
			c, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{Hostname: "%"})
			return fmt.Sprint(ids(a), ids(b), ids(c)), err
		}, "[s-00000000000000001 s-00000000000000000 s-00000000000000009] [s-00000000000000002] [s-00000000000000004]"},
		{"state, replicator and ready filters", func(tx *db.Tx) (any, error) {
			a, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{States: []string{api.StateStopped, api.StateContinuous}, ReadyForRecovery: ptr(false)})
			if err != nil {
				return nil, err
			}
			b, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{ReplicatorID: "rep-00000000000000002"})
			return fmt.Sprint(ids(a), ids(b)), err
		}, "[s-00000000000000002 s-00000000000000005 s-00000000000000008] [s-00000000000000004 s-00000000000000003]"},
		{"paging returns every server once, in order", func(tx *db.Tx) (any, error) {
			var all []string
			tok := ""
			for pages := 0; pages < 20; pages++ {
				ss, next, err := tx.ListSourceServers(acct, api.SourceServerFilter{Limit: 3, PageToken: tok})
				if err != nil {
					return nil, err
				}
				all = append(all, ids(ss)...)
				if next == "" {
					break
				}
				tok = next
			}
			return fmt.Sprintf("%d %s %s %s", len(all), all[0], all[3], all[9]), nil
		}, "10 s-00000000000000001 s-00000000000000000 s-00000000000000009"},
		{"bad page token", func(tx *db.Tx) (any, error) {
			_, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{PageToken: "bm9wZQ"})
			return errors.Is(err, db.ErrBadPageToken), nil
		}, true},
		{"duplicate machine id conflicts", func(tx *db.Tx) (any, error) {
			s, err := tx.SourceServer("s-00000000000000000")
			if err != nil {
				return nil, err
			}
			s.ID = "s-00000000000000099"
			err = tx.CreateSourceServer(s)
			return errors.Is(err, db.ErrConflict), nil
		}, true},
		{"site in use cannot be deleted", func(tx *db.Tx) (any, error) {
			return errors.Is(tx.DeleteSite(acct, "default"), db.ErrReferenced), nil
		}, true},
		{"unknown site is not found", func(tx *db.Tx) (any, error) {
			return errors.Is(tx.DeleteSite(acct, "nowhere"), db.ErrNotFound), nil
		}, true},
		{"count replicating excludes stopped", func(tx *db.Tx) (any, error) {
			return tx.CountReplicating(acct)
		}, 7},
		{"token uses run out", func(tx *db.Tx) (any, error) {
			tk := db.Token{Token: api.Token{ID: "tok1", Kind: api.TokenInstall, Scope: api.ScopeSourceServer,
				CreatedBy: "test", CreatedAt: t0, UsesLeft: ptr(2)}, AccountID: acct, SecretHash: "h"}
			if err := tx.CreateToken(tk); err != nil {
				return nil, err
			}
			var res []bool
			for range 3 {
				res = append(res, tx.ConsumeToken("tok1", t0) == nil)
			}
			got, err := tx.Token("tok1")
			return fmt.Sprint(res, *got.UsesLeft, got.Uses), err
		}, "[true true false] 0 2"},
		{"expired and revoked tokens cannot be used", func(tx *db.Tx) (any, error) {
			exp := t0.Add(time.Hour)
			tk := db.Token{Token: api.Token{ID: "tok2", Kind: api.TokenInstall, CreatedBy: "test", CreatedAt: t0,
				ExpiresAt: &exp}, AccountID: acct, SecretHash: "h"}
			if err := tx.CreateToken(tk); err != nil {
				return nil, err
			}
			before := tx.ConsumeToken("tok2", t0.Add(59*time.Minute))
			after := tx.ConsumeToken("tok2", t0.Add(61*time.Minute))
			if err := tx.RevokeToken(acct, "tok2", t0); err != nil {
				return nil, err
			}
			revoked := tx.ConsumeToken("tok2", t0)
			return fmt.Sprint(before == nil, errors.Is(after, db.ErrNotFound), errors.Is(revoked, db.ErrNotFound)), nil
		}, "true true true"},
		{"assignment: unassigned, lost replicator, other site", func(tx *db.Tx) (any, error) {
			if err := tx.SetSourceSettings("s-00000000000000001", api.ReplicationSettingsOverrides{TargetSite: ptr("dr")}, "dr", "", t0); err != nil {
				return nil, err
			}
			us, err := tx.NeedingAssignment(acct, t0.Add(-time.Minute))
			var out []string
			for _, u := range us {
				out = append(out, u.ID+"@"+u.SiteID)
			}
			return fmt.Sprint(out), err
		}, "[s-00000000000000001@dr s-00000000000000003@default s-00000000000000004@default s-00000000000000005@default " +
			"s-00000000000000006@default s-00000000000000007@default s-00000000000000008@default s-00000000000000009@default]"},
		{"replicator counts and liveness", func(tx *db.Tx) (any, error) {
			rs, err := tx.Replicators(acct, t0.Add(-time.Minute))
			var out []string
			for _, r := range rs {
				out = append(out, fmt.Sprintf("%s:%s:%d", r.Name, r.State, r.AssignedSourceServers))
			}
			return fmt.Sprint(out), err
		}, "[r1:live:3 r2:lost:2]"},
		{"deleting a replicator unassigns its servers", func(tx *db.Tx) (any, error) {
			if err := tx.DeleteReplicator("rep-00000000000000002"); err != nil {
				return nil, err
			}
			s, err := tx.SourceServer("s-00000000000000003")
			return s.ReplicatorID == "", err
		}, true},
		{"snapshots newest first, paged, deleted with their server", func(tx *db.Tx) (any, error) {
			for i := range 5 {
				err := tx.CreateSnapshot(db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: fmt.Sprintf("pit-%017d", i),
					SourceServerID: "s-00000000000000001", Time: t0.Add(time.Duration(i%3) * time.Minute), Level: consistency.Crash,
					Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1 << 30}}, CreatedAt: t0}, AccountID: acct})
				if err != nil {
					return nil, err
				}
			}
			var got []string
			tok := ""
			for range 5 {
				ps, next, err := tx.ListSnapshots("s-00000000000000001", 2, tok)
				if err != nil {
					return nil, err
				}
				for _, p := range ps {
					got = append(got, p.ID[len(p.ID)-1:])
				}
				if tok = next; tok == "" {
					break
				}
			}
			if err := tx.DeleteSourceServer("s-00000000000000001"); err != nil {
				return nil, err
			}
			n, err := tx.CountSnapshots("s-00000000000000001")
			return fmt.Sprint(got, n), err
		}, "[2 1 4 0 3] 0"},
		{"launch settings upsert", func(tx *db.Tx) (any, error) {
			l := api.DefaultLaunchSettings(2, 4<<30)
			if err := tx.SetLaunchSettings("s-00000000000000000", l, t0); err != nil {
				return nil, err
			}
			l.CPUs = 8
			if err := tx.SetLaunchSettings("s-00000000000000000", l, t0.Add(time.Second)); err != nil {
				return nil, err
			}
			got, at, err := tx.LaunchSettings("s-00000000000000000")
			_, _, missing := tx.LaunchSettings("s-00000000000000009")
			return fmt.Sprint(got.CPUs, got.MemoryMiB, at.Equal(t0.Add(time.Second)), errors.Is(missing, db.ErrNotFound)), err
		}, "8 4096 true true"},
		{"audit log newest first with paging and filters", func(tx *db.Tx) (any, error) {
			for i := range 5 {
				_, err := tx.AddAudit(acct, api.AuditEntry{Time: t0.Add(time.Duration(i) * time.Second), ActorKind: "user",
					ActorID: "tok", Action: "x.update", TargetKind: "x", TargetID: fmt.Sprint(i % 2),
					Detail: map[string]any{"n": i}})
				if err != nil {
					return nil, err
				}
			}
			page1, next, err := tx.ListAudit(acct, api.AuditFilter{Limit: 2})
			if err != nil {
				return nil, err
			}
			page2, _, err := tx.ListAudit(acct, api.AuditFilter{Limit: 2, PageToken: next})
			if err != nil {
				return nil, err
			}
			odd, _, err := tx.ListAudit(acct, api.AuditFilter{TargetID: "1"})
			return fmt.Sprint(page1[0].Detail["n"], page1[1].Detail["n"], page2[0].Detail["n"], len(odd)), err
		}, "4 3 2 2"},
		{"list summaries follow every change of a row", func(tx *db.Tx) (any, error) {
			id := "s-00000000000000003"
			later := t0.Add(time.Hour)
			st := api.NewReplicationState(t0).Apply(api.ReplicationStateUpdate{DataReplicationState: ptr(api.StateContinuous),
				LastConsistencyPoint: &api.ConsistencyPointInfo{Time: t0, Level: consistency.Crash}}, later)
			// After each change, the stored summary must equal the row's own rendering.
			stale := func(step string) (string, error) {
				sums, _, err := tx.ListSourceServerSummaries(acct, api.SourceServerFilter{Limit: 100})
				if err != nil {
					return "", err
				}
				full, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{Limit: 100})
				if err != nil {
					return "", err
				}
				for i, js := range sums {
					var got api.SourceServer
					if err := json.Unmarshal([]byte(js), &got); err != nil {
						return "", err
					}
					want := full[i].SourceServer
					want.Volumes, want.Replication.InitiationSteps = nil, nil
					if !reflect.DeepEqual(got, want) {
						return step + " left a stale summary of " + got.ID, nil
					}
				}
				return "", nil
			}
			steps := []struct {
				name string
				run  func() error
			}{
				{"SetReplicationState", func() error { return tx.SetReplicationState(id, st, later) }},
				{"SetVolumes", func() error { return tx.SetVolumes(id, []api.Volume{{Name: "vdz", Path: "/dev/vdz"}}, later.Add(1)) }},
				{"TouchSourceServer", func() error { return tx.TouchSourceServer(id, later.Add(2*time.Millisecond)) }},
				{"SetSourceCertificate", func() error { return tx.SetSourceCertificate(id, "beef", later.AddDate(1, 0, 0), later) }},
				{"SetAssignment", func() error { return tx.SetAssignment(id, "rep-00000000000000001", later) }},
				{"SetSourceSettings", func() error {
					return tx.SetSourceSettings(id, api.ReplicationSettingsOverrides{TargetSite: ptr("dr")}, "dr", "", later)
				}},
				{"SetEffectiveSite", func() error { return tx.SetEffectiveSite("s-00000000000000000", "dr", "", later) }},
				{"DeleteReplicator", func() error { return tx.DeleteReplicator("rep-00000000000000002") }},
			}
			for _, step := range steps {
				if err := step.run(); err != nil {
					return nil, err
				}
				if msg, err := stale(step.name); err != nil || msg != "" {
					return msg, err
				}
			}
			full, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{})
			if err != nil {
				return nil, err
			}
			var mismatches []string
			var order []string
			tok := ""
			for range 10 {
				sums, next, err := tx.ListSourceServerSummaries(acct, api.SourceServerFilter{Limit: 4, PageToken: tok})
				if err != nil {
					return nil, err
				}
				for _, js := range sums {
					var got api.SourceServer
					if err := json.Unmarshal([]byte(js), &got); err != nil {
						return nil, err
					}
					order = append(order, got.ID)
					for _, f := range full {
						if f.ID != got.ID {
							continue
						}
						want := f.SourceServer
						want.Volumes, want.Replication.InitiationSteps = nil, nil
						if !reflect.DeepEqual(got, want) {
							mismatches = append(mismatches, got.ID)
						}
					}
				}
				if tok = next; tok == "" {
					break
				}
			}
			return fmt.Sprintf("%v %v %s", mismatches, reflect.DeepEqual(order, ids(full)), order[0]), nil
		}, "[] true s-00000000000000001"},
		{"replication state round trip", func(tx *db.Tx) (any, error) {
			st := api.NewReplicationState(t0).Apply(api.ReplicationStateUpdate{
				DataReplicationState: ptr(api.StateContinuous), LagSeconds: ptr(0.5), BacklogBytes: ptr(int64(42)),
				LastConsistencyPoint: &api.ConsistencyPointInfo{Time: t0, Level: consistency.Filesystem, SnapshotID: "pit-00000000000000001"},
				Error:                &api.ReplicationError{Code: api.ErrUnstableNetwork, Message: "check the link"},
			}, t0)
			if err := tx.SetReplicationState("s-00000000000000000", st, t0); err != nil {
				return nil, err
			}
			s, err := tx.SourceServer("s-00000000000000000")
			return reflect.DeepEqual(s.Replication, st) && s.Replication.ReadyForRecovery, err
		}, true},
	}
	results := map[string]map[db.Kind]any{}
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					d := dbtest.Open(t, kind)
					fixture(t, d)
					// The case's transaction is always rolled back: PostgreSQL refuses to
					// commit one in which a statement failed, as some cases make happen.
					var got any
					var runErr error
					errRollback := errors.New("rollback")
					err := d.Update(context.Background(), func(tx *db.Tx) error {
						got, runErr = c.run(tx)
						return errRollback
					})
					if !errors.Is(err, errRollback) || runErr != nil {
						t.Fatalf("%v %v", err, runErr)
					}
					if !reflect.DeepEqual(got, c.want) {
						t.Errorf("got  %v\nwant %v", got, c.want)
					}
					if results[c.name] == nil {
						results[c.name] = map[db.Kind]any{}
					}
					results[c.name][kind] = got
				})
			}
		})
	}
	for name, byKind := range results {
		if len(byKind) == 2 && !reflect.DeepEqual(byKind[db.SQLite], byKind[db.Postgres]) {
			t.Errorf("%s: SQLite gave %v, PostgreSQL gave %v", name, byKind[db.SQLite], byKind[db.Postgres])
		}
	}
}

func TestMigrationsAreIdempotentAndRecorded(t *testing.T) {
	// The newest migration's number is the schema version.
	files, err := filepath.Glob("migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations found: %v", err)
	}
	sort.Strings(files)
	var want int64
	fmt.Sscanf(filepath.Base(files[len(files)-1]), "%d_", &want)
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			url := dbtest.URL(t, kind)
			ctx := context.Background()
			for i := range 2 {
				d, err := db.Open(ctx, url)
				if err != nil {
					t.Fatalf("open #%d: %v", i+1, err)
				}
				v, err := d.SchemaVersion(ctx)
				d.Close()
				if err != nil || v != want {
					t.Fatalf("open #%d: schema version %d, %v; want %d", i+1, v, err, want)
				}
			}
		})
	}
}

func TestRollbackLeavesNothing(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		fixture(t, d)
		ctx := context.Background()
		boom := errors.New("boom")
		err := d.Update(ctx, func(tx *db.Tx) error {
			if err := tx.DeleteSourceServer("s-00000000000000000"); err != nil {
				return err
			}
			if err := tx.SetAccountQuota(acct, 1, t0); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Update returned %v, want boom", err)
		}
		err = d.View(ctx, func(tx *db.Tx) error {
			if _, err := tx.SourceServer("s-00000000000000000"); err != nil {
				return fmt.Errorf("server gone after rollback: %w", err)
			}
			a, err := tx.Account(acct)
			if err == nil && a.QuotaSourceServers != 300 {
				err = fmt.Errorf("quota %d after rollback, want 300", a.QuotaSourceServers)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
