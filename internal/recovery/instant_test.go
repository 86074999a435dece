package recovery_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
)

// An instant launch's export reads the PIT's bytes at any offset, says where its holes
// are (merged into runs), and bounds what one answer looks at.
func TestPITExportReadsAndListsHoles(t *testing.T) {
	data := make([]byte, 5*bs+100) // data, hole, hole, data, hole, short data
	for _, b := range []int{0, 3, 5} {
		for i := b * bs; i < min((b+1)*bs, len(data)); i++ {
			data[i] = byte(i*7 + b)
		}
	}
	repo, pit := pitOf(t, map[string][]byte{"vda": data})
	ctx := context.Background()
	e, _, err := recovery.PITExport(ctx, repo, pit, "vda")
	if err != nil {
		t.Fatal(err)
	}
	if e.Size() != int64(len(data)) {
		t.Fatalf("size %d, want %d", e.Size(), len(data))
	}
	got := make([]byte, 2*bs+10)
	off := int64(bs - 5)
	if n, err := e.ReadAt(got, off); err != nil || n != len(got) || !bytes.Equal(got, data[off:off+int64(len(got))]) {
		t.Fatalf("read at %d: %d bytes, %v, equal %v", off, n, err, bytes.Equal(got, data[off:off+int64(len(got))]))
	}
	ext, err := e.(nbd.ExtentLister).Extents(ctx, 0, e.Size())
	if err != nil {
		t.Fatal(err)
	}
	want := []nbd.Extent{{Length: bs}, {Length: 2 * bs, Hole: true}, {Length: bs}, {Length: bs, Hole: true}, {Length: 100}}
	if len(ext) != len(want) {
		t.Fatalf("extents %+v, want %+v", ext, want)
	}
	for i := range want {
		if ext[i] != want[i] {
			t.Fatalf("extents %+v, want %+v", ext, want)
		}
	}
	// From the middle of a block, the first extent starts there.
	ext, err = e.(nbd.ExtentLister).Extents(ctx, bs+10, 10)
	if err != nil || len(ext) != 1 || ext[0] != (nbd.Extent{Length: bs - 10, Hole: true}) {
		t.Fatalf("extents from the middle of a hole: %+v %v", ext, err)
	}
}

// A read that finds the staging store failing waits for it (here until its context
// ends) and says what it waits on, instead of failing at once or returning zeros.
func TestPITExportWaitsOnAFailingStore(t *testing.T) {
	data := bytes.Repeat([]byte("lifeboat"), bs/8)
	repo, pit, dir := pitOfAt(t, map[string][]byte{"vda": data})
	ctx := context.Background()
	e, stalled, err := recovery.PITExport(ctx, repo, pit, "vda")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "data"), filepath.Join(dir, "data.away")); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	buf := make([]byte, 4096)
	n, err := e.(nbd.ContextReaderAt).ReadAtContext(cctx, buf, 0)
	if err == nil || n == len(buf) && bytes.Equal(buf, data[:len(buf)]) {
		t.Fatalf("a read with the store's packs gone succeeded: %d bytes, %v", n, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 400*time.Millisecond {
		t.Fatalf("the read did not wait for the store: %v after %s", err, time.Since(start))
	}
	if stalled() == "" {
		t.Fatal("the export does not say what its reads wait on")
	}
	if err := os.Rename(filepath.Join(dir, "data.away"), filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
	if n, err := e.ReadAt(buf, 0); err != nil || n != len(buf) || !bytes.Equal(buf, data[:len(buf)]) {
		t.Fatalf("read after the store came back: %d, %v", n, err)
	}
}
