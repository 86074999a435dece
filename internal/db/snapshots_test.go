package db_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// seedPITs records n PITs of server s-…1, one a second from t0, every 10th of level
// none and the others filesystem; two of them share the time t0+5s.
func seedPITs(t *testing.T, d *db.DB, n int) {
	t.Helper()
	err := d.Update(context.Background(), func(tx *db.Tx) error {
		for i := range n {
			level, at := consistency.Filesystem, t0.Add(time.Duration(i)*time.Second)
			if i%10 == 9 {
				level = consistency.None
			}
			if i == 6 {
				at = t0.Add(5 * time.Second)
			}
			err := tx.CreateSnapshot(db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: fmt.Sprintf("pit-%017d", i),
				SourceServerID: "s-00000000000000001", Time: at, Level: level,
				Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1 << 30}}, CreatedAt: at}, AccountID: acct})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// findAll pages through FindSnapshots with f, limit a page, and returns the PITs' numbers.
func findAll(tx *db.Tx, f db.SnapshotFilter, limit int) ([]int, error) {
	var got []int
	tok := ""
	for range 100 {
		page, next, err := tx.FindSnapshots("s-00000000000000001", f, limit, tok)
		if err != nil {
			return nil, err
		}
		for _, p := range page {
			var n int
			fmt.Sscanf(p.ID, "pit-%d", &n)
			got = append(got, n)
		}
		if tok = next; tok == "" {
			return got, nil
		}
	}
	return nil, errors.New("the pages never end")
}

// A time range is inclusive of after and exclusive of before, a level filter keeps only
// its level, and both page like the whole listing (same PITs, same order, at any page
// size, with a tie on the time kept apart by id).
func TestFindSnapshotsByTimeAndLevel(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		fixture(t, d)
		seedPITs(t, d, 30)
		at := func(s int) *time.Time { v := t0.Add(time.Duration(s) * time.Second); return &v }
		none := consistency.None
		fs := consistency.Filesystem
		cases := []struct {
			name string
			f    db.SnapshotFilter
			want string
		}{
			{"all", db.SnapshotFilter{}, "[29 28 27 26 25 24 23 22 21 20 19 18 17 16 15 14 13 12 11 10 9 8 7 5 6 4 3 2 1 0]"},
			{"after inclusive", db.SnapshotFilter{After: at(25)}, "[29 28 27 26 25]"},
			{"before exclusive", db.SnapshotFilter{Before: at(3)}, "[2 1 0]"},
			{"range with a tie", db.SnapshotFilter{After: at(4), Before: at(8)}, "[7 5 6 4]"},
			{"level none", db.SnapshotFilter{Level: &none}, "[29 19 9]"},
			{"level and range", db.SnapshotFilter{Level: &fs, After: at(17), Before: at(21)}, "[20 18 17]"},
			{"empty range", db.SnapshotFilter{After: at(100)}, "[]"},
		}
		for _, c := range cases {
			for _, limit := range []int{1, 2, 7, 100} {
				var got []int
				err := d.View(context.Background(), func(tx *db.Tx) (err error) {
					got, err = findAll(tx, c.f, limit)
					return err
				})
				if s := fmt.Sprint(got); err != nil || (s != c.want && !(c.want == "[]" && got == nil)) {
					t.Errorf("%s, pages of %d: %s, %v; want %s", c.name, limit, s, err, c.want)
				}
			}
		}
		err := d.View(context.Background(), func(tx *db.Tx) error {
			_, _, err := tx.FindSnapshots("s-00000000000000001", db.SnapshotFilter{}, 5, "not-a-token")
			return err
		})
		if !errors.Is(err, db.ErrBadPageToken) {
			t.Errorf("a bad page token: %v", err)
		}
	})
}

// A job server's PIT time and RPO are stored with the job and kept by later updates
// that do not carry them (the runner's).
func TestJobServerKeepsItsRPO(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		fixture(t, d)
		pitTime, rpo := t0.Add(-1500*time.Millisecond), 1.5
		js := api.JobServer{SourceServerID: "s-00000000000000001", RecoveryInstanceID: "i-00000000000000001",
			SnapshotID: "pit-00000000000000001", LaunchStatus: api.LaunchPending, SnapshotTime: &pitTime, RPOSeconds: &rpo}
		job := db.Job{Job: api.Job{ID: "drsjob-00000000000000001", Type: api.JobLaunch, InitiatedBy: api.InitiatedStartDrill,
			Status: api.JobPending, IsDrill: true, CreatedBy: "token:x", CreatedAt: t0, Servers: []api.JobServer{js}}, AccountID: acct}
		var got api.JobServer
		err := d.Update(ctx, func(tx *db.Tx) error {
			if err := tx.CreateJob(job); err != nil {
				return err
			}
			later := js
			later.SnapshotTime, later.RPOSeconds, later.LaunchStatus = nil, nil, api.LaunchInProgress
			if err := tx.PutJobServer(db.JobServer{JobID: job.ID, JobServer: later, UpdatedAt: t0.Add(time.Second)}); err != nil {
				return err
			}
			j, err := tx.Job(job.ID)
			if err == nil {
				got = j.Servers[0]
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.LaunchStatus != api.LaunchInProgress || got.RPOSeconds == nil || *got.RPOSeconds != 1.5 ||
			got.SnapshotTime == nil || !got.SnapshotTime.Equal(pitTime) {
			t.Fatalf("job server read back as %+v", got)
		}
	})
}
