package db_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// daySnapshots is a day of consistency points every second, all kept: what the
// recovery_snapshots table holds for one server when nothing thins them (issue 15).
const daySnapshots = 86_400

// BenchmarkListSnapshots86400 lists a server's PITs, 100 a page as the API does, from
// a table holding a day of points every second for it (and as many for another
// server): every page, the first page, and the hour 12 h before the newest (the
// listing has no time filter: a client reaches an hour by its page token, here made
// for the hour's end). SQLite always, PostgreSQL when LIFEBOAT_TEST_POSTGRES is set.
func BenchmarkListSnapshots86400(b *testing.B) {
	kinds := []db.Kind{db.SQLite}
	if os.Getenv(dbtest.EnvPostgres) != "" {
		kinds = append(kinds, db.Postgres)
	}
	for _, k := range kinds {
		b.Run(string(k), func(b *testing.B) {
			d := dbtest.Open(b, k)
			end := fillSnapshots(b, d)
			server := "s-00000000000000001"
			b.Run("all pages", func(b *testing.B) {
				for b.Loop() {
					if n := listPages(b, d, server, "", daySnapshots/100+1); n != daySnapshots {
						b.Fatalf("listed %d PITs, want %d", n, daySnapshots)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(daySnapshots/100)/1e6, "ms/page")
			})
			b.Run("first page", func(b *testing.B) {
				for b.Loop() {
					listPages(b, d, server, "", 1)
				}
			})
			b.Run("hour 12h ago", func(b *testing.B) {
				// The cursor for the hour's end: taken_at < that instant (its id sorts first).
				tok := base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(end.Add(-12*time.Hour).UnixMilli(), 10) + "|pit-00000000000000000"))
				for b.Loop() {
					if n := listPages(b, d, server, tok, 36); n != 3600 {
						b.Fatalf("listed %d PITs of the hour, want 3600", n)
					}
				}
			})
		})
	}
}

// fillSnapshots inserts a day of PITs every second for two servers of one account and
// returns the time after the newest.
func fillSnapshots(b *testing.B, d *db.DB) time.Time {
	b.Helper()
	ctx := context.Background()
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	err := d.Update(ctx, func(tx *db.Tx) error {
		a := db.Account{Account: api.Account{ID: acct, Name: "default", System: true, QuotaSourceServers: 300, CreatedAt: start},
			Template: api.DefaultReplicationSettings("file:///var/lib/lifeboat/staging")}
		if err := tx.CreateAccount(a); err != nil {
			return err
		}
		if err := tx.CreateSite(acct, api.Site{ID: "default", CreatedAt: start}); err != nil {
			return err
		}
		for i := 1; i <= 2; i++ {
			s := db.SourceServer{SourceServer: api.SourceServer{ID: fmt.Sprintf("s-%017d", i), AccountID: acct,
				MachineID: fmt.Sprintf("m%d", i), Hostname: fmt.Sprintf("web-%d", i), SiteID: "default",
				Replication: api.NewReplicationState(start), CertificateExpiresAt: start.AddDate(1, 0, 0),
				CreatedAt: start, UpdatedAt: start}, CertSerial: fmt.Sprint(i)}
			if err := tx.CreateSourceServer(s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	vols := []api.SnapshotVolume{{Name: "vda", SizeBytes: 4 << 30}}
	const batch = 10_000
	for server := 1; server <= 2; server++ {
		for from := 0; from < daySnapshots; from += batch {
			err := d.Update(ctx, func(tx *db.Tx) error {
				for i := from; i < min(from+batch, daySnapshots); i++ {
					at := start.Add(time.Duration(i) * time.Second)
					err := tx.CreateSnapshot(db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: fmt.Sprintf("pit-%d%016x", server, i),
						SourceServerID: fmt.Sprintf("s-%017d", server), ReplicatorID: "rep-00000000000000001", Time: at,
						Level: consistency.Filesystem, Volumes: vols, SizeBytes: 4096, CreatedAt: at.Add(200 * time.Millisecond),
						ManifestDigest: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}, AccountID: acct})
					if err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	return start.Add(daySnapshots * time.Second)
}

// listPages lists up to pages pages of 100 from tok and returns how many PITs came.
func listPages(b *testing.B, d *db.DB, server, tok string, pages int) int {
	n := 0
	for range pages {
		var page []db.Snapshot
		err := d.View(context.Background(), func(tx *db.Tx) error {
			var err error
			page, tok, err = tx.ListSnapshots(server, 100, tok)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		n += len(page)
		if tok == "" {
			break
		}
	}
	return n
}
