package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// diskEnv is a repository written through a disk index, with what it holds.
type diskEnv struct {
	be    *countingBackend // counts index objects read
	mk    MasterKey
	opts  Options
	pit   PIT
	m     model
	index int // index objects in the store
}

const diskSize = 120 * testBS

// newDiskEnv writes a PIT of 120 blocks through a repository with a disk index in a
// new directory, and leaves it open (the caller closes it or abandons it).
func newDiskEnv(t *testing.T) (*diskEnv, *Repo) {
	t.Helper()
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 64 << 10 // many packs and index objects
	opts.IndexDir = t.TempDir()
	r, be, mk := newTestRepo(t, opts)
	e := &diskEnv{be: &countingBackend{Backend: be, prefix: "index/"}, mk: mk, opts: opts, m: model{}}
	h, err := r.OpenHead(ctx, "s-d", "vda", diskSize, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < 100; b++ {
		blocks[b] = uint32(1 + b%3)
	}
	write(t, h, e.m, blocks)
	if e.pit, err = r.SealPIT(ctx, SealRequest{ID: "pit-d1", Server: "s-d", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
		t.Fatal(err)
	}
	if err := be.List(ctx, "index/", func(backend.ObjectInfo) error { e.index++; return nil }); err != nil {
		t.Fatal(err)
	}
	if e.index < 10 {
		t.Fatalf("the test wrote %d index objects; it needs many", e.index)
	}
	return e, r
}

func (e *diskEnv) open(t *testing.T) *Repo {
	t.Helper()
	r, err := Open(context.Background(), e.be, e.mk, e.opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// A repository closed cleanly opens again without reading one index object, and reads
// back what it holds.
func TestDiskIndexOpensWithoutReadingTheIndex(t *testing.T) {
	e, r := newDiskEnv(t)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := e.open(t)
	if n := e.be.gets.Load(); n != 0 {
		t.Fatalf("open read %d index objects of %d; want none", n, e.index)
	}
	if r2.disk == nil {
		t.Fatal("the repository opened without its disk index")
	}
	checkPIT(t, r2, e.pit, "vda", diskSize, e.m)
	chunks, _, _ := r2.IndexSize()
	if chunks != 100 {
		t.Fatalf("the reopened index counts %d data chunks, want 100", chunks)
	}
}

// A process that dies without closing loses nothing: the index objects stored after
// its last checkpoint are read again at the next open.
func TestDiskIndexCatchesUpAfterACrash(t *testing.T) {
	e, r := newDiskEnv(t)
	// "Crash": the files are closed without the checkpoint Close writes.
	r.packer.close()
	r.mu.Lock()
	if err := r.disk.close(); err != nil {
		t.Fatal(err)
	}
	r.disk = nil
	r.unlockDiskIndex() // the process is gone: the kernel drops its lock
	r.mu.Unlock()
	r2 := e.open(t)
	if n := e.be.gets.Load(); n == 0 || n > int64(e.index) {
		t.Fatalf("open after a crash read %d index objects of %d; want those since the last checkpoint", n, e.index)
	}
	checkPIT(t, r2, e.pit, "vda", diskSize, e.m)
}

// A damaged local index is rebuilt from the store's index objects: a truncated
// segment at open, a page that fails its checksum at the first lookup that reads it.
func TestDamagedDiskIndexIsRebuilt(t *testing.T) {
	for _, damage := range []string{"truncate", "flip"} {
		t.Run(damage, func(t *testing.T) {
			e, r := newDiskEnv(t)
			dir := r.diskDir
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.cix"))
			if len(segs) == 0 {
				t.Fatal("no segment written")
			}
			for _, s := range segs {
				b, err := os.ReadFile(s)
				if err != nil {
					t.Fatal(err)
				}
				if damage == "truncate" {
					b = b[:len(b)-100]
				} else {
					b[100] ^= 0xff // in the first page
				}
				if err := os.WriteFile(s, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			r2 := e.open(t)
			checkPIT(t, r2, e.pit, "vda", diskSize, e.m)
			if e.be.gets.Load() < int64(e.index) {
				t.Fatalf("read %d index objects of %d: the index was not rebuilt", e.be.gets.Load(), e.index)
			}
			if r2.ixBroken.Load() {
				t.Fatal("the index is still marked broken after its rebuild")
			}
		})
	}
}

// After a garbage collection in another process deleted chunks, the disk index no
// longer offers them for deduplication: the same content written again is stored
// again, and the store verifies clean with its data read.
func TestDiskIndexForgetsWhatAGarbageCollectionDeleted(t *testing.T) {
	ctx := context.Background()
	e, r := newDiskEnv(t)
	first := e.pit.Volumes[0].Root
	gcOpts := e.opts
	gcOpts.IndexDir = "" // the collector is another process, its index in RAM
	other := reopen(t, e.be, e.mk, gcOpts)
	h, err := r.OpenHead(ctx, "s-d", "vda", diskSize, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Overwrite every block and seal: nothing of the first PIT stays referenced once
	// it is deleted.
	fresh := model{}
	all := map[uint64]uint32{}
	for b := uint64(0); b < 120; b++ {
		all[b] = 7
	}
	write(t, h, fresh, all)
	if _, err := r.SealPIT(ctx, SealRequest{ID: "pit-d1b", Server: "s-d", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
		t.Fatal(err)
	}
	if err := other.DeletePIT(ctx, "s-d", e.pit.ID); err != nil {
		t.Fatal(err)
	}
	st, err := other.GC(ctx, GCOptions{Grace: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if st.DeadChunks == 0 {
		t.Fatalf("the collection deleted nothing: %+v", st)
	}
	if err := r.refreshView(ctx, false); err != nil {
		t.Fatal(err)
	}
	if r.dedupable(first) {
		t.Fatalf("the disk index still offers chunk %s, deleted by the collection", first)
	}
	// The old contents come back: they must be stored again, not referenced.
	back := map[uint64]uint32{}
	for b := uint64(0); b < 100; b++ {
		back[b] = uint32(1 + b%3)
	}
	write(t, h, fresh, back)
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-d2", Server: "s-d", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	checkPIT(t, r, p, "vda", diskSize, fresh)
	rep, err := other.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("verify: %v %v", err, rep.Errors)
	}
}

// Two repositories may not share an index directory: the second is refused with the
// reason.
func TestDiskIndexDirectoryIsOneProcessAtATime(t *testing.T) {
	e, _ := newDiskEnv(t)
	_, err := Open(context.Background(), e.be, e.mk, e.opts)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open of one index directory: %v; want refused as in use", err)
	}
}

// Flushes run in the background while the repository serves (the ingest never waits
// for a segment write or merge), and pack numbers stay right across a crash after
// them: every pack is recorded before a segment can name it.
func TestDiskIndexFlushesInTheBackgroundAndSurvivesACrash(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 16 << 10
	opts.IndexDir = t.TempDir()
	r, be, mk := newTestRepo(t, opts)
	r.mu.Lock()
	r.disk.limit = 8
	r.mu.Unlock()
	h, err := r.OpenHead(ctx, "s-b", "vda", diskSize, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	for round := uint32(1); round <= 4; round++ {
		blocks := map[uint64]uint32{}
		for b := uint64(0); b < 120; b += uint64(round) {
			blocks[b] = round
		}
		write(t, h, m, blocks)
		if err := h.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-b", Server: "s-b", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	r.packer.close()
	r.mu.Lock()
	d := r.disk
	d.flushWG.Wait()
	segs := d.idx.Segments()
	if err := d.close(); err != nil { // a crash: no checkpoint
		t.Fatal(err)
	}
	r.disk = nil
	r.unlockDiskIndex()
	r.mu.Unlock()
	if segs == 0 {
		t.Fatal("no background flush wrote a segment")
	}
	r2, err := Open(ctx, be, mk, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	checkPIT(t, r2, p, "vda", diskSize, m)
	rep, err := r2.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("verify: %v %v", err, rep.Errors)
	}
}
