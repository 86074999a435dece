package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
)

// pitRows counts the PIT rows of a snapshots list table.
func pitRows(out string) int { return strings.Count(out, "\npit-") }

// snapshots list shows a page and says there is more, narrows to a time range and a
// level, and lists everything with --all; describe shows the data-loss exposure; a drill
// followed with --wait gives each server's PIT, its time and its RPO.
func TestSnapshotsListExposureAndRPO(t *testing.T) {
	e := startCLIEnv(t)
	repo := recoverytest.Store(t, e.cp)
	img := filepath.Join(e.dir, "vda.img")
	if err := os.WriteFile(img, []byte(strings.Repeat("lifeboat", 1<<17)), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
	now := time.Now().UTC().Truncate(time.Millisecond)
	pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, now.Add(-time.Hour), recoverytest.Volume{Name: "vda", Image: img})
	// 25 points of level none in the last minute (freezes failing), the last one the
	// state's last consistency point, as stored before LastRecoverablePoint existed.
	last := now.Add(-time.Second)
	err := e.cp.DB().Update(context.Background(), func(tx *db.Tx) error {
		for i := range 25 {
			at := now.Add(-time.Duration(25-i) * time.Second)
			if err := tx.CreateSnapshot(db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: fmt.Sprintf("pit-%017d", i+1),
				SourceServerID: srv.ID, Time: at, Level: consistency.None, Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1 << 20}},
				CreatedAt: at}, AccountID: srv.AccountID}); err != nil {
				return err
			}
		}
		st := srv.Replication
		st.DataReplicationState = api.StateContinuous
		st.LastConsistencyPoint = &api.ConsistencyPointInfo{Time: last, Level: consistency.None}
		return tx.SetReplicationState(srv.ID, st, now)
	})
	if err != nil {
		t.Fatal(err)
	}

	out, errs, code := e.run("snapshots", "list", srv.ID)
	if code != 0 || pitRows(out) != defaultSnapshotsShown || !strings.Contains(errs, "there are more") || !strings.Contains(errs, "--all") {
		t.Fatalf("snapshots list: exit %d, %d rows, stderr %q", code, pitRows(out), errs)
	}
	out, errs, _ = e.run("snapshots", "list", srv.ID, "--all")
	if pitRows(out) != 26 || errs != "" || !strings.Contains(out, pit.ID) {
		t.Fatalf("snapshots list --all: %d rows, stderr %q", pitRows(out), errs)
	}
	if out := e.must("snapshots", "list", srv.ID, "--since", "10s", "--limit", "100"); pitRows(out) < 9 || pitRows(out) > 11 {
		t.Fatalf("snapshots list --since 10s listed %d PITs:\n%s", pitRows(out), out)
	}
	until := now.Add(-30 * time.Minute).Format(time.RFC3339)
	if out := e.must("snapshots", "list", srv.ID, "--since", "2h", "--until", until); pitRows(out) != 1 || !strings.Contains(out, pit.ID) {
		t.Fatalf("snapshots list --since 2h --until %s:\n%s", until, out)
	}
	if out := e.must("snapshots", "list", srv.ID, "--level", "crash"); pitRows(out) != 1 || !strings.Contains(out, pit.ID) {
		t.Fatalf("snapshots list --level crash:\n%s", out)
	}
	e.fails(2, "must be earlier than --until", "snapshots", "list", srv.ID, "--since", "5m", "--until", "10m")
	e.fails(2, "--limit must be 1 to", "snapshots", "list", srv.ID, "--limit", "0")
	e.fails(2, "--level must be", "snapshots", "list", srv.ID, "--level", "fuzzy")
	e.fails(2, "--since \"soon\" is not a time", "snapshots", "list", srv.ID, "--since", "soon")

	// The last point is of level none: the exposure is the age of the crash PIT.
	if out := e.must("source-servers", "describe", srv.ID); !strings.Contains(out, "Data-loss exposure:") ||
		!strings.Contains(out, ", crash)") || !strings.Contains(out, pit.Time.Local().Format("2006-01-02 15:04:05.000")) {
		t.Fatalf("describe does not give the exposure from the crash PIT:\n%s", out)
	}

	e.must("settings", "launch", "set", srv.ID, "--provider", "image")
	out = e.must("drill", srv.ID, "--wait")
	// The replica held data through the last none point: the crash PIT is 59m59s older.
	if !strings.Contains(out, "RPO 59m59s") || !strings.Contains(out, "RPO") || !strings.Contains(out, pit.Time.Local().Format("15:04:05.000")) {
		t.Fatalf("drill --wait does not give the PIT's time and RPO:\n%s", out)
	}
}
