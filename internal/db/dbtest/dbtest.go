// Package dbtest gives tests a fresh database of each engine: an SQLite file in a
// temporary directory always, and a PostgreSQL schema of its own when
// LIFEBOAT_TEST_POSTGRES names a server (scripts/test sets it when run as root; in CI
// its absence fails the test).
package dbtest

import (
	"context"
	"database/sql"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// EnvPostgres names the environment variable with the PostgreSQL URL for tests.
const EnvPostgres = "LIFEBOAT_TEST_POSTGRES"

// Kinds lists the engines every database test runs on.
var Kinds = []db.Kind{db.SQLite, db.Postgres}

// URL returns the URL of a fresh, empty database of the given kind, removed when the
// test ends. For PostgreSQL it is a new schema on the server named by
// LIFEBOAT_TEST_POSTGRES (the test skips, or fails in CI, when that is not set).
func URL(t testing.TB, kind db.Kind) string {
	t.Helper()
	if kind == db.SQLite {
		return filepath.Join(t.TempDir(), "lifeboat.db")
	}
	base := os.Getenv(EnvPostgres)
	testutil.Need(t, base != "", EnvPostgres+" is not set, so the PostgreSQL half of this test cannot run")
	schema := "t_" + api.NewID("")
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("open %s: %v", EnvPostgres, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		t.Fatalf("create a test schema in PostgreSQL (%s): %v", EnvPostgres, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A query a stopped control plane cancelled may still run on the server for a
		// moment (its connection is closed, its backend not yet): the drop, which locks
		// table after table, can then deadlock with it. It is tried again.
		var err error
		for try := 0; try < 5; try++ {
			if _, err = admin.ExecContext(ctx, "DROP SCHEMA "+schema+" CASCADE"); err == nil || !strings.Contains(err.Error(), "40P01") {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("drop test schema %s: %v", schema, err)
		}
		admin.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s is not a URL: %v", EnvPostgres, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Open opens a fresh database of the given kind, closed when the test ends.
func Open(t testing.TB, kind db.Kind) *db.DB {
	t.Helper()
	d, err := db.Open(context.Background(), URL(t, kind))
	if err != nil {
		t.Fatalf("open %s test database: %v", kind, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// Each runs fn as a subtest on a fresh database of each engine.
func Each(t *testing.T, fn func(t *testing.T, d *db.DB)) {
	t.Helper()
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) { fn(t, Open(t, k)) })
	}
}
