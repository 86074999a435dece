package atomicfile

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// leftovers returns the names in dir other than want.
func leftovers(t *testing.T, dir string, want ...string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !contains(want, e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestWriteFileReplacesWithMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "secret")
	if err := os.WriteFile(p, []byte("old content, longer than the new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new"), 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != "new" {
		t.Fatalf("content %q (%v), want %q", got, err, "new")
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v (%v), want 0640", fi.Mode().Perm(), err)
	}
	if l := leftovers(t, dir, "secret"); len(l) != 0 {
		t.Fatalf("left %v beside the file", l)
	}
}

// A failed write, or a cancellation before the rename, leaves the old file whole and
// no temporary file.
func TestFailureKeepsTheOldContent(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	if err := WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := Write(context.Background(), p, 0o600, func(f *os.File) error {
		if _, err := f.Write([]byte("half of the ne")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), p) {
		t.Fatalf("a failing write returned %v, want boom and the path", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = Write(ctx, p, 0o600, func(f *os.File) error { _, err := f.Write([]byte("new")); return err })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled write returned %v, want context.Canceled", err)
	}
	got, _ := os.ReadFile(p)
	if string(got) != "old" {
		t.Fatalf("content %q after failed writes, want the old one", got)
	}
	if l := leftovers(t, dir, "state.json"); len(l) != 0 {
		t.Fatalf("failed writes left %v", l)
	}
}

// Errors keep the system's kind, which callers match (the file backend retries a
// directory pruned under it, and maps ENOSPC to ErrFull); a very long name still gets
// a temporary file.
func TestErrorKindsAndLongNames(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFile(filepath.Join(dir, "missing", "f"), nil, 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("write into a missing directory: %v, want fs.ErrNotExist", err)
	}
	long := strings.Repeat("a", 255)
	if err := WriteFile(filepath.Join(dir, long), []byte("x"), 0o600); err != nil {
		t.Fatalf("a 255-byte name: %v", err)
	}
	if l := leftovers(t, dir, long); len(l) != 0 {
		t.Fatalf("left %v", l)
	}
}
