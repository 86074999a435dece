package store

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// A reader that opened a PIT's volume before a garbage collection (run by another
// process) repacked its chunks still exports it: a pack gone makes it reload the index.
func TestExportAfterAGCMovedTheChunks(t *testing.T) {
	ctx := context.Background()
	w, be, mk := newTestRepo(t, testOptions())
	reader := reopen(t, be, mk, testOptions())
	const size = 40 * testBS
	h, err := w.OpenHead(ctx, "s-1", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	write(t, h, m, map[uint64]uint32{0: 1, 5: 2, 39: 3})
	if _, err := w.SealPIT(ctx, SealRequest{ID: "pit-1", Server: "s-1", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
		t.Fatal(err)
	}
	pit, err := reader.LoadPIT(ctx, "s-1", "pit-1")
	if err != nil {
		t.Fatal(err)
	}
	v, err := reader.OpenVolume(ctx, pit, "vda")
	if err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < v.Blocks(); b += 16 { // one block per leaf: the reader caches the tree
		if _, err := v.ReadBlock(ctx, b, nil); err != nil {
			t.Fatal(err)
		}
	}
	st, err := w.GC(ctx, GCOptions{SmallPack: 64 << 20}) // every pack is "small": all are repacked
	if err != nil {
		t.Fatal(err)
	}
	if st.RepackedPacks == 0 {
		t.Fatalf("the GC repacked nothing: %+v", st)
	}
	path := filepath.Join(t.TempDir(), "export.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := v.Export(ctx, f, ExportOptions{}); err != nil {
		t.Fatalf("export after the chunks moved: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < 40; b++ {
		if !bytes.Equal(got[b*testBS:(b+1)*testBS], content(b, m[b])) {
			t.Fatalf("block %d differs from the PIT", b)
		}
	}
}

// OnlyDiffering writes only blocks that differ, and leaves the tail of a target larger
// than the volume alone (an existing instance's bigger disk).
func TestExportOnlyDifferingKeepsALargerTarget(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	const size = 20 * testBS
	h, err := r.OpenHead(ctx, "s-1", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	write(t, h, m, map[uint64]uint32{1: 1, 2: 2, 3: 3})
	pit, err := r.SealPIT(ctx, SealRequest{ID: "pit-1", Server: "s-1", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := r.OpenVolume(ctx, pit, "vda")
	if err != nil {
		t.Fatal(err)
	}
	// The target: blocks 1 and 2 as in the PIT, block 3 different, block 7 not zero,
	// and 5 blocks past the volume's end.
	target := make([]byte, size+5*testBS)
	copy(target[1*testBS:], content(1, 1))
	copy(target[2*testBS:], content(2, 2))
	copy(target[3*testBS:], content(3, 9))
	copy(target[7*testBS:], content(7, 4))
	tail := content(99, 5)
	copy(target[size:], tail)
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, target, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := v.Export(ctx, f, ExportOptions{OnlyDiffering: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.WrittenBlocks != 2 || st.SameBlocks != 18 {
		t.Fatalf("wrote %d blocks and kept %d, want 2 (blocks 3 and 7) and 18", st.WrittenBlocks, st.SameBlocks)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(target) || !bytes.Equal(got[size:size+testBS], tail) {
		t.Fatalf("the target's tail was changed: %d bytes, want %d", len(got), len(target))
	}
	for b := uint64(0); b < 20; b++ {
		if !bytes.Equal(got[b*testBS:(b+1)*testBS], content(b, m[b])) {
			t.Fatalf("block %d differs from the PIT", b)
		}
	}
}
