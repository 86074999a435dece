package secfile_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/secfile"
)

// TestTighten: group and other permissions go, the owner's stay, each change is logged
// once, and a missing path is skipped.
func TestTighten(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	file := filepath.Join(dir, "key")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o764); err != nil { // umask-proof
		t.Fatal(err)
	}
	if secfile.IsPrivate(file) {
		t.Fatal("IsPrivate says yes for mode 0764")
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for i, want := range []int{2, 0} {
		if err := secfile.Tighten(log, dir, file, filepath.Join(dir, "missing")); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(logs.String(), "made private"); n != want {
			t.Errorf("call #%d logged %d changes, want %d:\n%s", i+1, n, want, logs.String())
		}
		logs.Reset()
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, file: 0o700} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v, want %04o", p, err, fi.Mode(), want)
		}
	}
	if !secfile.IsPrivate(file) {
		t.Fatal("IsPrivate says no after Tighten")
	}
}
