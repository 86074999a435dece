package db_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// TestSQLiteFilesArePrivate: the database file and the -wal and -shm files SQLite makes
// beside it are created 0600, and files an older version left 0644 are made 0600 once,
// with a warning, and without one the next time.
func TestSQLiteFilesArePrivate(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state", "lifeboat.db")
	d, err := db.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	files := []string{path, path + "-wal", path + "-shm"}
	for _, p := range files { // checked while open: SQLite removes -wal and -shm at close
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v, want 0600", p, err, fi.Mode())
		}
	}
	d.Close()

	if err := os.WriteFile(path+"-wal", nil, 0o644); err != nil { // as an older version's crash leaves it
		t.Fatal(err)
	}
	for _, p := range files[:2] {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range []int{2, 0} {
		var logs bytes.Buffer
		d, err := db.Open(ctx, path, db.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		if err != nil {
			t.Fatalf("open #%d: %v", i+2, err)
		}
		for _, p := range files {
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("open #%d: %s: %v, mode %v, want 0600", i+2, p, err, fi.Mode())
			}
		}
		d.Close()
		if got := strings.Count(logs.String(), "made private"); got != want {
			t.Errorf("open #%d logged %d files made private, want %d:\n%s", i+2, got, want, logs.String())
		}
	}
}

// TestPostgresPasswordFromEnvironmentOrPassfile: with no password in the URL, the
// driver takes it from PGPASSWORD or from the passfile named by PGPASSFILE, so it never
// has to be on a command line; without either the server refuses (so the password that
// got through came from there).
func TestPostgresPasswordFromEnvironmentOrPassfile(t *testing.T) {
	withPW, err := url.Parse(dbtest.URL(t, db.Postgres))
	if err != nil {
		t.Fatal(err)
	}
	user, password := withPW.User.Username(), ""
	if p, ok := withPW.User.Password(); ok {
		password = p
	}
	if password == "" {
		t.Fatalf("%s has no password, so this test shows nothing: give the test role one", dbtest.EnvPostgres)
	}
	bare := *withPW
	bare.User = url.User(user)
	if !db.URLHasPassword(withPW.String()) || db.URLHasPassword(bare.String()) {
		t.Fatalf("URLHasPassword: %v for a URL with one, %v without", db.URLHasPassword(withPW.String()), db.URLHasPassword(bare.String()))
	}
	escape := strings.NewReplacer(`\`, `\\`, `:`, `\:`)
	passfile := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(passfile, []byte("*:*:*:"+escape.Replace(user)+":"+escape.Replace(password)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nowhere := filepath.Join(t.TempDir(), "none")
	ctx := context.Background()
	for _, c := range []struct {
		name, pgpassword, pgpassfile string
		ok                           bool
	}{
		{"PGPASSWORD", password, nowhere, true},
		{"PGPASSFILE", "", passfile, true},
		{"neither", "", nowhere, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("PGPASSWORD", c.pgpassword)
			t.Setenv("PGPASSFILE", c.pgpassfile)
			d, err := db.Open(ctx, bare.String())
			if err == nil {
				d.Close()
			}
			if (err == nil) != c.ok {
				t.Fatalf("open without a password in the URL: %v, want success %v", err, c.ok)
			}
		})
	}
}

func TestURLHasPassword(t *testing.T) {
	for u, want := range map[string]bool{
		"postgres://lb:pw@db:5432/lifeboat":                     true,
		"postgresql://lb:@db/lifeboat":                          true, // an empty password is still one
		"postgres://db/lifeboat?user=lb&password=pw":            true,
		"postgres://lb@db/lifeboat?sslmode=verify-full":         false,
		"postgres://db/lifeboat":                                false,
		"/var/lib/lifeboat/lifeboat.db":                         false,
		"postgres://lb:pw@[bad":                                 true, // unparsable: assume the worst
		"postgres://lb@db/lifeboat?options=-c%20password%3Dnot": false,
	} {
		if got := db.URLHasPassword(u); got != want {
			t.Errorf("URLHasPassword(%q) = %v, want %v", u, got, want)
		}
	}
}
