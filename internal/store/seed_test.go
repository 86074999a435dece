package store

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestSeededHeadStartsAsThePIT: the head of a server that has none yet, opened with a
// PIT volume of another server as its seed, holds that PIT's blocks without any being
// written, keeps them (a second open does not seed again), and stores nothing new.
func TestSeededHeadStartsAsThePIT(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, Options{BlockSize: testBS})
	const size = 40 * testBS
	h, err := r.OpenHead(ctx, "s-origin", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	write(t, h, m, map[uint64]uint32{0: 1, 3: 2, 17: 1, 39: 2})
	pit := seal(t, r, "pit-origin", h)
	h.Close()

	chunks := func() int {
		st, err := r.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Chunks
	}
	before := chunks()
	seed := pit.Volumes[0]
	rev, err := r.OpenHead(ctx, "s-reversed", "vda", size, HeadOptions{Seed: &seed})
	if err != nil {
		t.Fatal(err)
	}
	if rev.Fresh() || !rev.Seeded() {
		t.Fatalf("seeded head: fresh %v, seeded %v; want an existing replica from the seed", rev.Fresh(), rev.Seeded())
	}
	if after := chunks(); after-before > 2 {
		t.Fatalf("seeding stored %d chunks, want none but the head's tree", after-before)
	}
	write(t, rev, m, map[uint64]uint32{5: 1})
	p2 := seal(t, r, "pit-rev-1", rev)
	rev.Close()
	checkPIT(t, r, p2, "vda", size, m)

	// Reopened (the replicator restarted, the seed still given): the head is the
	// reversed server's own, with the write made since the seed.
	r2 := reopen(t, be, mk, Options{BlockSize: testBS})
	rev, err = r2.OpenHead(ctx, "s-reversed", "vda", size, HeadOptions{Seed: &seed})
	if err != nil {
		t.Fatal(err)
	}
	if rev.Seeded() {
		t.Fatal("an existing head was seeded again")
	}
	p3 := seal(t, r2, "pit-rev-2", rev)
	rev.Close()
	checkPIT(t, r2, p3, "vda", size, m)

	bad := seed
	bad.BlockSize = testBS * 2
	if _, err := r2.OpenHead(ctx, "s-other", "vda", size, HeadOptions{Seed: &bad}); err == nil {
		t.Fatal("a seed of another block size was taken")
	}
}

// TestExportOnBlockSeesEveryNonZeroBlock: OnBlock gets each block that is not zero,
// with its content, also when OnlyDiffering skips writing it.
func TestExportOnBlockSeesEveryNonZeroBlock(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, Options{BlockSize: testBS})
	const size = 20 * testBS
	h, err := r.OpenHead(ctx, "s-1", "vol", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	write(t, h, m, map[uint64]uint32{1: 1, 2: 2, 19: 1})
	pit := seal(t, r, "pit-1", h)
	h.Close()
	for _, differing := range []bool{false, true} {
		v, err := r.OpenVolume(ctx, pit, "vol")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		seen := map[uint64][]byte{}
		f, err := os.Create(filepath.Join(t.TempDir(), "export.img"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = v.Export(ctx, f, ExportOptions{OnlyDiffering: differing, OnBlock: func(b uint64, data []byte) {
			mu.Lock()
			seen[b] = bytes.Clone(data)
			mu.Unlock()
		}})
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) != 3 {
			t.Fatalf("OnBlock saw %d blocks, want the 3 non-zero ones", len(seen))
		}
		for b, data := range seen {
			if !bytes.Equal(data, content(b, m[b])) {
				t.Fatalf("OnBlock got other content for block %d", b)
			}
		}
	}
}

// TestRebaseReplacesAHeadOnce: an existing head (with journals not yet folded) rebased
// onto another server's PIT holds that PIT, keeps its own PITs, is rebased once only
// (a second open with the same seed keeps what was written since), and its version
// grows, so no rollback check trips.
func TestRebaseReplacesAHeadOnce(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, Options{BlockSize: testBS})
	const size = 30 * testBS
	other, err := r.OpenHead(ctx, "s-rev", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := model{}
	write(t, other, want, map[uint64]uint32{1: 2, 2: 1, 29: 2})
	final := seal(t, r, "pit-final", other)
	other.Close()

	h, err := r.OpenHead(ctx, "s-origin", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := model{}
	write(t, h, old, map[uint64]uint32{1: 1, 5: 1})
	oldPIT := seal(t, r, "pit-old", h)
	write(t, h, old, map[uint64]uint32{6: 1}) // journaled, not in a checkpoint
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	v0 := h.Version()
	h.Close()

	seed := final.Volumes[0]
	opts := HeadOptions{Seed: &seed, SeedID: "s-rev/pit-final", Rebase: true}
	h, err = r.OpenHead(ctx, "s-origin", "vda", size, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Seeded() || h.Version() <= v0 {
		t.Fatalf("rebase: seeded %v, version %d after %d", h.Seeded(), h.Version(), v0)
	}
	write(t, h, want, map[uint64]uint32{7: 1})
	p := seal(t, r, "pit-after", h)
	h.Close()
	checkPIT(t, r, p, "vda", size, want)
	checkPIT(t, r, oldPIT, "vda", size, model{1: 1, 5: 1})

	r2 := reopen(t, be, mk, Options{BlockSize: testBS})
	h, err = r2.OpenHead(ctx, "s-origin", "vda", size, opts)
	if err != nil {
		t.Fatal(err)
	}
	if h.Seeded() {
		t.Fatal("the head was rebased twice onto the same seed")
	}
	p = seal(t, r2, "pit-again", h)
	h.Close()
	checkPIT(t, r2, p, "vda", size, want)
}
