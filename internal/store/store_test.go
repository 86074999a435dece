package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

const testBS = 64 << 10

func testOptions() Options {
	return Options{PackSize: 1 << 20, GCGrace: 400 * time.Millisecond, Fanout: 16, MaxDirtyLeaves: 8}
}

func newTestRepo(t testing.TB, opts Options) (*Repo, backend.Backend, MasterKey) {
	t.Helper()
	be, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mk, err := NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Init(context.Background(), be, mk, withTestIndexDir(t, opts))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, be, mk
}

// withTestIndexDir gives opts a chunk index directory of its own when the suite runs
// with LIFEBOAT_TEST_STORE_INDEX=disk (scripts/test runs it so as well): every test
// that opens its repositories through newTestRepo and reopen then runs on the disk
// index, with the view refreshed in the background unless the test sets the clock and
// flushes that share packs, as a replicator's.
func withTestIndexDir(t testing.TB, opts Options) Options {
	if os.Getenv("LIFEBOAT_TEST_STORE_INDEX") == "disk" && opts.IndexDir == "" {
		// As the replicator opens the store (tests that set the clock by hand refresh
		// when they say).
		opts.IndexDir = t.TempDir()
		opts.RefreshInBackground = opts.Now == nil
		if opts.CommitInterval == 0 {
			opts.CommitInterval = 2 * time.Millisecond
		}
	}
	return opts
}

func reopen(t testing.TB, be backend.Backend, mk MasterKey, opts Options) *Repo {
	t.Helper()
	r, err := Open(context.Background(), be, mk, withTestIndexDir(t, opts))
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// content returns the deterministic content of version v of a block: 0 is all zeros,
// odd versions are random, even versions compressible text.
func content(block uint64, v uint32) []byte {
	b := make([]byte, testBS)
	if v == 0 {
		return b
	}
	rng := rand.New(rand.NewPCG(block, uint64(v)))
	if v%2 == 1 {
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		return b
	}
	line := []byte(fmt.Sprintf("block %d version %d: the quick brown fox jumps over the lazy dog %d\n", block, v, rng.IntN(1000)))
	for i := 0; i < len(b); i += len(line) {
		copy(b[i:], line)
	}
	return b
}

// model is what a test expects a volume to hold: block → content version.
type model map[uint64]uint32

func (m model) clone() model {
	c := model{}
	for k, v := range m {
		c[k] = v
	}
	return c
}

func write(t *testing.T, h *Head, m model, blocks map[uint64]uint32) {
	t.Helper()
	var bl []Block
	for b, v := range blocks {
		bl = append(bl, Block{Index: b, Data: content(b, v)})
		m[b] = v
	}
	if err := h.WriteBlocks(context.Background(), bl); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func checkPIT(t *testing.T, r *Repo, pit PIT, volume string, size int64, m model) {
	t.Helper()
	ctx := context.Background()
	v, err := r.OpenVolume(ctx, pit, volume)
	if err != nil {
		t.Fatalf("open %s/%s: %v", pit.ID, volume, err)
	}
	if v.Size() != size {
		t.Fatalf("PIT %s volume %s: size %d, want %d", pit.ID, volume, v.Size(), size)
	}
	var buf []byte
	for b := uint64(0); b < v.Blocks(); b++ {
		buf, err = v.ReadBlock(ctx, b, buf)
		if err != nil {
			t.Fatalf("PIT %s block %d: %v", pit.ID, b, err)
		}
		if want := content(b, m[b]); !bytes.Equal(buf, want) {
			t.Fatalf("PIT %s volume %s block %d differs from version %d", pit.ID, volume, b, m[b])
		}
	}
	// The export must equal the same content, with holes for zero blocks.
	path := filepath.Join(t.TempDir(), "export.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := v.Export(ctx, f, ExportOptions{})
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != size {
		t.Fatalf("export is %d bytes, want %d", len(got), size)
	}
	zero := int64(0)
	for b := uint64(0); b < v.Blocks(); b++ {
		if m[b] == 0 {
			zero++
		}
		want := content(b, m[b])
		end := min(int64(b+1)*testBS, size)
		if !bytes.Equal(got[int64(b)*testBS:end], want[:end-int64(b)*testBS]) {
			t.Fatalf("export of PIT %s block %d differs", pit.ID, b)
		}
	}
	if st.ZeroBlocks != zero {
		t.Fatalf("export counted %d zero blocks, want %d", st.ZeroBlocks, zero)
	}
	var sys syscall.Stat_t
	if err := syscall.Stat(path, &sys); err == nil && zero > 0 {
		allocated := sys.Blocks * 512
		if allocated > size-zero*testBS+2*testBS {
			t.Fatalf("export allocates %d bytes for %d bytes of data: zero blocks are not holes", allocated, size-zero*testBS)
		}
	}
}

func TestWriteSealReadExport(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, testOptions())
	const size = 100*testBS + 1000 // a partial last block
	h, err := r.OpenHead(ctx, "s-1", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < 60; b++ {
		blocks[b] = uint32(b%3) + 1 // random and text content
	}
	blocks[70] = 1 // same as... different block number, so different random content
	write(t, h, m, blocks)
	// The partial last block: only its first 1000 bytes are the volume's.
	last := content(100, 3)
	clear(last[1000:])
	if err := h.WriteBlocks(ctx, []Block{{Index: 100, Data: last[:1000]}}); err != nil {
		t.Fatal(err)
	}
	m[100] = 3
	pit1, err := r.SealPIT(ctx, SealRequest{ID: "pit-1", Server: "s-1", Time: time.Now(), Level: consistency.Filesystem, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	if pit1.AddedBytes <= 0 {
		t.Fatalf("PIT added %d bytes", pit1.AddedBytes)
	}
	// content(100,3)'s tail beyond 1000 bytes is zero in the volume.
	checkPartial := func(p PIT) {
		v, err := r.OpenVolume(ctx, p, "vda")
		if err != nil {
			t.Fatal(err)
		}
		got, err := v.ReadBlock(ctx, 100, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, last) {
			t.Fatal("the partial last block does not read back")
		}
	}
	checkPartial(pit1)
	m1 := m.clone()
	delete(m1, 100) // checked separately: content(100,3) is not its full content
	m1Full := func(p PIT, mm model) {
		mm2 := mm.clone()
		mm2[100] = 0
		v, _ := r.OpenVolume(ctx, p, "vda")
		for b := uint64(0); b < 100; b++ {
			got, err := v.ReadBlock(ctx, b, nil)
			if err != nil || !bytes.Equal(got, content(b, mm2[b])) {
				t.Fatalf("PIT %s block %d differs (%v)", p.ID, b, err)
			}
		}
	}
	m1Full(pit1, m1)

	// A second PIT after changing a few blocks: the first still reads as it was.
	m2 := m.clone()
	write(t, h, m2, map[uint64]uint32{5: 7, 6: 0, 80: 2})
	pit2, err := r.SealPIT(ctx, SealRequest{ID: "pit-2", Server: "s-1", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	delete(m2, 100)
	m1Full(pit1, m1)
	m1Full(pit2, m2)

	// Everything survives a reopen, and verify with data finds nothing wrong.
	r.Close()
	r2 := reopen(t, be, mk, testOptions())
	p1, err := r2.LoadPIT(ctx, "s-1", "pit-1")
	if err != nil {
		t.Fatal(err)
	}
	r = r2
	m1Full(p1, m1)
	rep, err := r2.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %v %v", err, rep.Errors)
	}
	if rep.PITs != 2 || rep.ReadChunks == 0 {
		t.Fatalf("verify saw %d PITs and read %d chunks", rep.PITs, rep.ReadChunks)
	}
}

func TestExportMatchesAndIsSparse(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	const size = 300 * testBS
	h, err := r.OpenHead(ctx, "s-2", "disk0", size, HeadOptions{Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < 300; b += 3 {
		blocks[b] = uint32(b%4) + 1
	}
	write(t, h, m, blocks)
	pit, err := r.SealPIT(ctx, SealRequest{ID: "pit-a", Server: "s-2", Time: time.Now(), Level: consistency.Filesystem, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	checkPIT(t, r, pit, "disk0", size, m)
}

func TestDedupAcrossVolumesAndZeroBlocksCostNothing(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	const size = 64 * testBS
	var heads []*Head
	for _, name := range []string{"a", "b"} {
		h, err := r.OpenHead(ctx, "s-3", name, size, HeadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Same content in both volumes (same block numbers and versions).
		blocks := map[uint64]uint32{}
		for b := uint64(0); b < 32; b++ {
			blocks[b] = 1
		}
		write(t, h, model{}, blocks)
		heads = append(heads, h)
	}
	zeroHead, err := r.OpenHead(ctx, "s-3", "empty", 1<<30, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]Block, 100)
	for i := range zeros {
		zeros[i] = Block{Index: uint64(i * 7), Data: make([]byte, testBS)}
	}
	if err := zeroHead.WriteBlocks(ctx, zeros); err != nil {
		t.Fatal(err)
	}
	heads = append(heads, zeroHead)
	if _, err := r.SealPIT(ctx, SealRequest{ID: "pit-d", Server: "s-3", Time: time.Now(), Level: consistency.Crash, Heads: heads}); err != nil {
		t.Fatal(err)
	}
	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Servers) != 1 {
		t.Fatalf("stats: %+v", st)
	}
	ss := st.Servers[0]
	if ss.UniqueBytes != 32*testBS || ss.ReferencedBytes != 64*testBS {
		t.Fatalf("unique %d referenced %d: want 32 and 64 blocks (identical volumes stored once, zeros free)", ss.UniqueBytes, ss.ReferencedBytes)
	}
	if ss.DedupRatio != 2 {
		t.Fatalf("dedup ratio %v, want 2", ss.DedupRatio)
	}
	if st.RawBytes > 32*testBS+int64(st.Chunks-32)*int64(1+32*16) {
		t.Fatalf("%d raw bytes stored for 32 unique blocks", st.RawBytes)
	}
}

func TestIncrementalPITCostsWhatChanged(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.Fanout = 256
	r, be, _ := newTestRepo(t, opts)
	const nblocks = 2048
	h, err := r.OpenHead(ctx, "s-4", "vda", nblocks*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < nblocks; b++ {
		blocks[b] = 1
	}
	write(t, h, model{}, blocks)
	if _, err := r.SealPIT(ctx, SealRequest{ID: "pit-full", Server: "s-4", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
		t.Fatal(err)
	}
	before := dirSize(t, be)
	// 1% of the blocks change (random ones).
	rng := rand.New(rand.NewPCG(1, 2))
	changed := map[uint64]uint32{}
	for len(changed) < nblocks/100 {
		changed[uint64(rng.IntN(nblocks))] = 3
	}
	write(t, h, model{}, changed)
	pit, err := r.SealPIT(ctx, SealRequest{ID: "pit-inc", Server: "s-4", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	added := dirSize(t, be) - before
	data := int64(len(changed)) * (testBS + sealOverhead + 1)
	if added < data || added > data+int64(nblocks/256+2)*int64(256*32+100)+64<<10 {
		t.Fatalf("an incremental PIT of %d changed blocks added %d bytes (data %d)", len(changed), added, data)
	}
	if pit.AddedBytes < data {
		t.Fatalf("PIT says it added %d bytes, less than its data %d", pit.AddedBytes, data)
	}
}

func dirSize(t *testing.T, be backend.Backend) int64 {
	t.Helper()
	var n int64
	if err := be.List(context.Background(), "", func(oi backend.ObjectInfo) error { n += oi.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestWrongMasterKeyIsRefused(t *testing.T) {
	ctx := context.Background()
	r, be, _ := newTestRepo(t, testOptions())
	r.Close()
	other, _ := NewMasterKey()
	_, err := Open(ctx, be, other, testOptions())
	if !errors.Is(err, ErrWrongKey) {
		t.Fatalf("open with another key: %v, want ErrWrongKey", err)
	}
	empty, _ := file.Open(t.TempDir())
	if _, err := Open(ctx, empty, other, testOptions()); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("open of an empty directory: %v", err)
	}
	if _, err := Init(ctx, be, other, testOptions()); !errors.Is(err, ErrExists) {
		t.Fatalf("init over a repository: %v", err)
	}
}

func TestMasterKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k", "master.key")
	k1, err := LoadOrCreateMasterKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateMasterKey(path)
	if err != nil || k1 != k2 {
		t.Fatalf("second load: %v, same=%v", err, k1 == k2)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := LoadMasterKey(path); err == nil {
		t.Fatal("a garbage key file loaded")
	}
}

func TestCrashRecoversFlushedWritesOnly(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	r, be, mk := newTestRepo(t, opts)
	const size = 200 * testBS
	h, _ := r.OpenHead(ctx, "s-5", "vda", size, HeadOptions{})
	m := model{}
	first := map[uint64]uint32{}
	for b := uint64(0); b < 150; b++ {
		first[b] = 1
	}
	write(t, h, m, first)
	pit, err := r.SealPIT(ctx, SealRequest{ID: "pit-c1", Server: "s-5", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	sealed := m.clone()
	write(t, h, m, map[uint64]uint32{3: 2, 4: 0, 199: 1})
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	flushed := m.clone()
	// Written but never flushed: lost with the crash, as they were never acknowledged.
	write(t, h, model{}, map[uint64]uint32{10: 2, 11: 2})
	// "Crash": the repository is abandoned without Close and opened afresh.
	r2 := reopen(t, be, mk, opts)
	h2, err := r2.OpenHead(ctx, "s-5", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p2, err := r2.SealPIT(ctx, SealRequest{ID: "pit-c2", Server: "s-5", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h2}})
	if err != nil {
		t.Fatal(err)
	}
	checkPIT(t, r2, p2, "vda", size, flushed)
	p1, _ := r2.LoadPIT(ctx, "s-5", pit.ID)
	checkPIT(t, r2, p1, "vda", size, sealed)
}

func TestResize(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	r, be, mk := newTestRepo(t, opts)
	h, _ := r.OpenHead(ctx, "s-6", "vda", 40*testBS, HeadOptions{})
	m := model{}
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < 40; b++ {
		blocks[b] = 1
	}
	write(t, h, m, blocks)
	if err := h.SetSize(20*testBS + 512); err != nil { // shrink into the middle of a leaf
		t.Fatal(err)
	}
	if err := h.SetSize(50 * testBS); err != nil { // and grow again: the cut part reads as zeros
		t.Fatal(err)
	}
	for b := uint64(21); b < 50; b++ {
		delete(m, b)
	}
	// Block 20 was cut to 512 bytes and grown back: its tail reads zero.
	m20 := content(20, 1)
	clear(m20[512:])
	delete(m, 20)
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := reopen(t, be, mk, opts)
	h2, err := r2.OpenHead(ctx, "s-6", "vda", 50*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	write(t, h2, m, map[uint64]uint32{20: 2})
	pit, err := r2.SealPIT(ctx, SealRequest{ID: "pit-r", Server: "s-6", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h2}})
	if err != nil {
		t.Fatal(err)
	}
	checkPIT(t, r2, pit, "vda", 50*testBS, m)
}

func TestConcurrentWritersOfDifferentVolumes(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	const size = 128 * testBS
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	models := make([]model, 8)
	pits := make([]PIT, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			server := fmt.Sprintf("s-c%d", i)
			h, err := r.OpenHead(ctx, server, "vda", size, HeadOptions{})
			if err != nil {
				errs <- err
				return
			}
			m := model{}
			for round := 0; round < 5; round++ {
				var bl []Block
				for b := uint64(round); b < 128; b += 5 {
					v := uint32(1 + (i+round)%4)
					bl = append(bl, Block{Index: b, Data: content(b, v)})
					m[b] = v
				}
				if err := h.WriteBlocks(ctx, bl); err != nil {
					errs <- err
					return
				}
				if err := h.Flush(ctx); err != nil {
					errs <- err
					return
				}
			}
			p, err := r.SealPIT(ctx, SealRequest{ID: "pit-x", Server: server, Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
			if err != nil {
				errs <- err
				return
			}
			models[i], pits[i] = m, p
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range pits {
		checkPIT(t, r, pits[i], "vda", size, models[i])
	}
}

func TestRetentionPolicy(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var pits []PIT
	// A consistency point every 10 s for 9 days.
	for age := 9 * 24 * time.Hour; age >= 0; age -= 10 * time.Second {
		pits = append(pits, PIT{ID: fmt.Sprintf("p%d", age/time.Second), Time: now.Add(-age), Level: consistency.Filesystem})
	}
	// One locked PIT 8 days old, and one inconsistent newest PIT.
	locked := len(pits) / 20
	pits[locked].LockUntil = now.Add(time.Hour)
	pits[len(pits)-1].Level = consistency.None
	dec := DefaultPolicy().Apply(pits, now)
	kept := 0
	for i, d := range dec {
		age := now.Sub(d.PIT.Time)
		switch {
		case i == locked && !d.Keep:
			t.Fatal("a locked PIT was not kept")
		case age <= time.Hour && !d.Keep:
			t.Fatalf("a consistency point %s old was not kept", age)
		}
		if d.Keep {
			kept++
		}
	}
	// 1 h of points (361) + hourly for 24 h + daily for 7 days + the locked one, give or take bucket edges.
	if kept < 361+23+6 || kept > 361+24+8+2 {
		t.Fatalf("kept %d PITs", kept)
	}
	if !dec[len(dec)-2].Keep {
		t.Fatal("the newest consistent PIT was not kept")
	}
	// Days 2-7 keep exactly one PIT per day.
	days := map[int64]int{}
	for _, d := range dec {
		age := now.Sub(d.PIT.Time)
		if d.Keep && age > 25*time.Hour && age < 6*24*time.Hour {
			days[d.PIT.Time.Unix()/86400]++
		}
	}
	for day, n := range days {
		if n != 1 {
			t.Fatalf("day %d keeps %d PITs", day, n)
		}
	}
}

// In a rule's interval, a PIT of a consistency-group point is kept over an earlier one
// of the same level that is not: every member of the group keeps the same point.
func TestRetentionKeepsGroupPoints(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	at := now.Add(-3 * time.Hour).Truncate(time.Hour)
	pits := []PIT{
		{ID: "own", Time: at.Add(time.Minute), Level: consistency.Filesystem},
		{ID: "group", Time: at.Add(2 * time.Minute), Level: consistency.Filesystem, Labels: map[string]string{LabelGroupPoint: "gpit-1"}},
		{ID: "group-later", Time: at.Add(3 * time.Minute), Level: consistency.Filesystem, Labels: map[string]string{LabelGroupPoint: "gpit-2"}},
		{ID: "newest", Time: now, Level: consistency.Filesystem},
	}
	for _, d := range DefaultPolicy().Apply(pits, now) {
		if want := d.PIT.ID == "group" || d.PIT.ID == "newest"; d.Keep != want {
			t.Errorf("PIT %s kept %v (%s), want %v", d.PIT.ID, d.Keep, d.Reason, want)
		}
	}
}

func TestLockedPITCannotBeDeleted(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	opts := testOptions()
	opts.Now = func() time.Time { return now }
	r, _, _ := newTestRepo(t, opts)
	h, _ := r.OpenHead(ctx, "s-7", "vda", 10*testBS, HeadOptions{})
	write(t, h, model{}, map[uint64]uint32{1: 1})
	old := now.Add(-30 * 24 * time.Hour)
	if _, err := r.SealPIT(ctx, SealRequest{ID: "pit-old", Server: "s-7", Time: old, Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ProtectPIT(ctx, "s-7", "pit-old", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	write(t, h, model{}, map[uint64]uint32{1: 2})
	if _, err := r.SealPIT(ctx, SealRequest{ID: "pit-new", Server: "s-7", Time: now, Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
		t.Fatal(err)
	}
	if err := r.DeletePIT(ctx, "s-7", "pit-old"); !errors.Is(err, ErrLocked) {
		t.Fatalf("delete of a locked PIT: %v", err)
	}
	deleted, err := r.ApplyRetention(ctx, "s-7", DefaultPolicy())
	if err != nil || len(deleted) != 0 {
		t.Fatalf("retention deleted %v (%v)", deleted, err)
	}
	// After the lock ends, retention removes it and GC frees its data.
	now = now.Add(2 * time.Hour)
	deleted, err = r.ApplyRetention(ctx, "s-7", DefaultPolicy())
	if err != nil || len(deleted) != 1 || deleted[0].ID != "pit-old" {
		t.Fatalf("retention after the lock: %v (%v)", deleted, err)
	}
}

func TestPrecompressedS2IsStoredAsGiven(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	h, _ := r.OpenHead(ctx, "s-s2", "vda", 8*testBS, HeadOptions{Compression: "s2"})
	var bl []Block
	m := model{}
	for b := uint64(0); b < 8; b++ {
		data := content(b, 2) // compressible text
		bl = append(bl, Block{Index: b, Data: data, Compressed: s2.Encode(nil, data), CompressedWith: CodecS2})
		m[b] = 2
	}
	if err := h.WriteBlocks(ctx, bl); err != nil {
		t.Fatal(err)
	}
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-s2", Server: "s-s2", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	checkPIT(t, r, p, "vda", 8*testBS, m)
	st, _ := r.Stats(ctx)
	if st.StoredBytes >= st.RawBytes/2 {
		t.Fatalf("precompressed blocks stored %d bytes for %d: not compressed", st.StoredBytes, st.RawBytes)
	}
}

// TestManyHeadsStayWithinTheMemoryBudget: heads with light, scattered writes hold
// small tables, and all heads together stay within MaxDirtyBytes (checkpointing when
// they would not), without changing what they hold.
func TestManyHeadsStayWithinTheMemoryBudget(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.Fanout = 1024
	opts.MaxDirtyLeaves = 1 << 20
	opts.MaxDirtyBytes = 16 << 10
	r, _, _ := newTestRepo(t, opts)
	const nblocks = 64 * 1024 // 4 GiB volumes: 64 leaves each
	var heads []*Head
	models := make([]model, 20)
	for i := range 20 {
		h, err := r.OpenHead(ctx, fmt.Sprintf("s-m%d", i), "vda", nblocks*testBS, HeadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
		models[i] = model{}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	peak := int64(0)
	for round := 0; round < 30; round++ {
		for i, h := range heads {
			b := uint64(rng.IntN(nblocks))
			write(t, h, models[i], map[uint64]uint32{b: uint32(round%3 + 1)})
			peak = max(peak, r.dirtyBytes.Load())
		}
	}
	if peak > opts.MaxDirtyBytes+4096 {
		t.Fatalf("the heads' tables peaked at %d bytes, the budget is %d", peak, opts.MaxDirtyBytes)
	}
	// Full tables for 600 scattered writes would be 19 MiB; small ones and the budget
	// keep them under 16 KiB.
	t.Logf("peak %d bytes of changed tables for 600 scattered writes in 20 volumes", peak)
	for i, h := range heads[:3] {
		p, err := r.SealPIT(ctx, SealRequest{ID: "pit-m", Server: h.Server(), Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
		if err != nil {
			t.Fatal(err)
		}
		v, _ := r.OpenVolume(ctx, p, "vda")
		for b, ver := range models[i] {
			got, err := v.ReadBlock(ctx, b, nil)
			if err != nil || !bytes.Equal(got, content(b, ver)) {
				t.Fatalf("head %d block %d is not version %d (%v)", i, b, ver, err)
			}
		}
	}
}

// TestCompressionNoneIsHonoured: "none" is a choice, not the absence of one.
func TestCompressionNoneIsHonoured(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.Compression = "none"
	r, _, _ := newTestRepo(t, opts)
	for i, c := range []string{"", "s2"} {
		h, err := r.OpenHead(ctx, "s-n"+c, "vda", 8*testBS, HeadOptions{Compression: c})
		if err != nil {
			t.Fatal(err)
		}
		v := uint32(2 + 2*i) // compressible text, not the same for both (no dedup)
		write(t, h, model{}, map[uint64]uint32{0: v, 1: v})
		if _, err := r.SealPIT(ctx, SealRequest{ID: "pit-n", Server: h.Server(), Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := r.Stats(ctx)
	for _, s := range st.Servers {
		compressed := s.CompressionRatio > 1.5
		if (s.Server == "s-n") == compressed {
			t.Fatalf("server %s: compression ratio %.2f (the repository says none; s-ns2 asks for s2)", s.Server, s.CompressionRatio)
		}
	}
	if _, err := r.OpenHead(ctx, "s-x", "vda", testBS, HeadOptions{Compression: "lzma"}); err == nil {
		t.Fatal("an unknown compression was accepted")
	}
}

// A pack buffer grows as chunks come but never past PackSize plus the slack for the
// chunk that fills it and its trailer, and keeps what was in it.
func TestPackBufferGrowthIsBounded(t *testing.T) {
	r, _, _ := newTestRepo(t, testOptions())
	p := r.packer
	var buf []byte
	chunk := bytes.Repeat([]byte{7}, 40<<10)
	for len(buf)+len(chunk) <= r.opts.PackSize+packSlack {
		buf = p.grow(buf, len(chunk))
		buf = append(buf, chunk...)
		if limit := r.opts.PackSize + packSlack; cap(buf) > limit {
			t.Fatalf("a pack buffer of %d bytes has capacity %d, more than %d", len(buf), cap(buf), limit)
		}
	}
	if !bytes.Equal(buf[len(buf)-len(chunk):], chunk) || !bytes.Equal(buf[:len(chunk)], chunk) {
		t.Fatal("growing lost the buffer's content")
	}
	// A chunk larger than the slack still fits.
	big := make([]byte, 2*packSlack)
	if buf = p.grow(buf, len(big)); cap(buf)-len(buf) < len(big) {
		t.Fatalf("no room for a %d-byte chunk: len %d cap %d", len(big), len(buf), cap(buf))
	}
}
