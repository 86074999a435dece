package failbackclient

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestPutKeepsTheFirstBlockForTheEnd: extents in the first block are held back, the
// rest is written at once; finish writes the first block after the rest.
func TestPutKeepsTheFirstBlockForTheEnd(t *testing.T) {
	const bs = 4096
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 4*bs), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &writer{a: api.FailbackAssignment{BlockSize: bs, SizeBytes: 4 * bs}, f: f, path: path}
	data := bytes.Repeat([]byte{7}, 2*bs) // blocks 0 and 1
	if err := w.put(0, data); err != nil {
		t.Fatal(err)
	}
	disk, _ := os.ReadFile(path)
	if !bytes.Equal(disk[:bs], make([]byte, bs)) || !bytes.Equal(disk[bs:2*bs], data[bs:]) {
		t.Fatal("the first block was written before the end, or the second was not written at once")
	}
	if err := w.finish(); err != nil {
		t.Fatal(err)
	}
	disk, _ = os.ReadFile(path)
	if !bytes.Equal(disk[:2*bs], data) || w.written != 2*bs {
		t.Fatalf("after finish: the first two blocks are not the extent written, or %d bytes were counted", w.written)
	}
}
