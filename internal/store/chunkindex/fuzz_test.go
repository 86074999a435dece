package chunkindex

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpenSegment feeds arbitrary bytes as a segment file: Open returns an error or an
// index whose Gets and Verify answer (possibly with errors), and never panics. The
// counts in a footer are bounded by the file's size before anything is allocated.
func FuzzOpenSegment(f *testing.F) {
	dir := f.TempDir()
	x := open(f, dir, Options{})
	want := fill(f, x, 8, 200) // 3 pages
	if err := x.Close(); err != nil {
		f.Fatal(err)
	}
	valid, err := os.ReadFile(segFiles(f, dir)[0])
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add(valid[len(valid)-footerSize:])
	f.Add(append([]byte(nil), valid[pageSize:]...))
	var ids []ID
	for id := range want {
		if ids = append(ids, id); len(ids) == 20 {
			break
		}
	}
	dir = f.TempDir() // one per worker process, which runs its inputs one at a time
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, segmentName(1, 1)), b, 0o600); err != nil {
			t.Fatal(err)
		}
		x, err := Open(dir, Options{})
		if err != nil {
			return
		}
		defer x.Close()
		for _, id := range ids {
			x.Get(id) //nolint:errcheck // any answer but a panic
		}
		x.Get(ID{})       //nolint:errcheck
		x.Get(ID{0: 255}) //nolint:errcheck
		x.Verify()        //nolint:errcheck
	})
}
