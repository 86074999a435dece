package controlplane_test

import (
	"bytes"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// lockedBuffer is a bytes.Buffer the control plane's goroutines may log into.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	l.b.Reset()
	return s
}

// TestDataDirectoryIsPrivate: every file a control plane keeps in its data directory
// (the SQLite database with its -wal and -shm, CA and server keys, the master key, the
// runner id) is mode 0600 and every directory 0700, certificates aside; a data
// directory an older version or a copy left readable by others is made private at the
// next start, with one warning per file, and the start after says nothing.
func TestDataDirectoryIsPrivate(t *testing.T) {
	var logs lockedBuffer
	e := startWith(t, db.SQLite, func(c *controlplane.Config) {
		c.DBURL = "" // the default: lifeboat.db in the data directory
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	if _, err := store.LoadOrCreateMasterKey(filepath.Join(e.dataDir, "staging.key")); err != nil {
		t.Fatal(err)
	}
	checkPrivate(t, e.dataDir, "lifeboat.db", "lifeboat.db-wal", "lifeboat.db-shm", "ca.key", "server.key", "staging.key")

	e.stopCurrent()
	loose := []string{e.dataDir, filepath.Join(e.dataDir, "pki"), filepath.Join(e.dataDir, "pki", "ca.key"),
		filepath.Join(e.dataDir, "pki", "server.key"), filepath.Join(e.dataDir, "lifeboat.db"), filepath.Join(e.dataDir, "staging.key")}
	for _, p := range loose {
		mode := fs.FileMode(0o644)
		if p == e.dataDir || filepath.Base(p) == "pki" {
			mode = 0o755
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	logs.take()
	for i, want := range []int{len(loose), 0} {
		if i == 0 {
			e.open("") // stopped above
		} else {
			e.restart("")
		}
		checkPrivate(t, e.dataDir, "lifeboat.db", "lifeboat.db-wal", "lifeboat.db-shm", "ca.key", "server.key", "staging.key")
		if got := strings.Count(logs.take(), "made private"); got != want {
			t.Errorf("start #%d: %d warnings of files made private, want %d", i+2, got, want)
		}
	}
}

// checkPrivate fails the test for each file under dir (certificates aside) that is not
// mode 0600 and each directory that is not 0700, and for each of must that is missing.
func checkPrivate(t *testing.T, dir string, must ...string) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		seen[d.Name()] = true
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		switch {
		case d.IsDir():
			want = 0o700
		case strings.HasSuffix(p, ".crt"):
			return nil // public
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s is mode %04o, want %04o", p, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range must {
		if !seen[name] {
			t.Errorf("%s is not in the data directory: the check did not see it", name)
		}
	}
}
