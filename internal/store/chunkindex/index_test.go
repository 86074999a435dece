package chunkindex

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func randID(r *rand.Rand) ID {
	var id ID
	for i := 0; i < len(id); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			id[i+j] = byte(v >> (8 * j))
		}
	}
	return id
}

func randLoc(r *rand.Rand) Loc {
	return Loc{Pack: r.Uint32(), Offset: r.Uint32(), Length: r.Uint32(), RawLen: r.Uint32(), Type: uint8(r.UintN(2))}
}

func open(t testing.TB, dir string, opts Options) *Index {
	t.Helper()
	x, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// fill puts n random entries and returns them.
func fill(t testing.TB, x *Index, seed uint64, n int) map[ID]Loc {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 0))
	want := make(map[ID]Loc, n)
	for range n {
		id, l := randID(r), randLoc(r)
		want[id] = l
		if err := x.Put(id, l); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

func checkAll(t testing.TB, x *Index, want map[ID]Loc) {
	t.Helper()
	for id, l := range want {
		got, ok, err := x.Get(id)
		if err != nil || !ok || got != l {
			t.Fatalf("Get(%x) = %+v, %v, %v; want %+v", id[:4], got, ok, err, l)
		}
	}
	r := rand.New(rand.NewPCG(99, 99))
	for range 2000 {
		if _, ok, err := x.Get(randID(r)); ok || err != nil {
			t.Fatalf("a missing id was found (%v, %v)", ok, err)
		}
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "seg-*"+segmentExt))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MemtableEntries: 1000, MaxSegments: 4}
	x := open(t, dir, opts)
	want := fill(t, x, 1, 25_500) // 25 flushes by Put, 500 left in the memtable
	if x.Segments() > opts.MaxSegments {
		t.Fatalf("%d segments, at most %d", x.Segments(), opts.MaxSegments)
	}
	checkAll(t, x, want)
	if x.Len() != int64(len(want)) {
		t.Fatalf("Len %d, want %d", x.Len(), len(want))
	}
	// A later Put of an id wins, in the memtable and across a merge.
	var old ID
	for id := range want {
		old = id
		break
	}
	want[old] = Loc{Pack: 7, Offset: 8, Length: 9, RawLen: 10, Type: 1}
	if err := x.Put(old, want[old]); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}

	x = open(t, dir, opts)
	checkAll(t, x, want)
	for id, l := range fill(t, x, 2, 3000) {
		want[id] = l
	}
	if err := x.Compact(); err != nil {
		t.Fatal(err)
	}
	if x.Segments() != 1 || len(segFiles(t, dir)) != 1 {
		t.Fatalf("%d segments (%d files) after Compact, want 1", x.Segments(), len(segFiles(t, dir)))
	}
	if x.Len() != int64(len(want)) {
		t.Fatalf("Len %d after Compact, want %d", x.Len(), len(want))
	}
	checkAll(t, x, want)
	if err := x.Verify(); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := x.Get(old); err != ErrClosed {
		t.Fatalf("Get after Close: %v", err)
	}
	x = open(t, dir, opts)
	defer x.Close()
	checkAll(t, x, want)
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	x := open(t, dir, Options{})
	defer x.Close()
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open: %v", err)
	}
}

// oneSegment writes n entries as one segment and returns its path and entries.
func oneSegment(t *testing.T, dir string, n int) (string, map[ID]Loc) {
	t.Helper()
	x := open(t, dir, Options{})
	want := fill(t, x, 3, n)
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	f := segFiles(t, dir)
	if len(f) != 1 {
		t.Fatalf("%d segment files", len(f))
	}
	return f[0], want
}

func TestDamagedSegmentRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  func(size int64) int64 // the byte to flip
		want string
	}{
		{"fence", func(int64) int64 { return 25*pageSize + 100 }, "checksum"}, // 2000 entries: 25 pages
		{"filter", func(size int64) int64 { return size - footerSize - 100 }, "checksum"},
		{"footer count", func(size int64) int64 { return size - footerSize + 24 }, "do not fit"},
		{"footer checksum", func(size int64) int64 { return size - 1 }, "checksum"},
		{"magic", func(size int64) int64 { return size - footerSize }, "no segment footer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path, _ := oneSegment(t, dir, 2000) // 25 pages
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[tc.off(int64(len(b)))] ^= 0x10
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = Open(dir, Options{})
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open of a damaged segment: %v; want an error naming %s and saying %q", err, path, tc.want)
			}
			t.Log(err)
		})
	}
}

// TestDamagedPage: Open reads no data page, so a damaged page is found by the Get that
// reads it, and by Verify.
func TestDamagedPage(t *testing.T) {
	dir := t.TempDir()
	path, want := oneSegment(t, dir, 2000)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, 3*pageSize+recordSize*5+40); err != nil {
		t.Fatal(err)
	}
	f.Close()
	x := open(t, dir, Options{})
	defer x.Close()
	var damaged int
	for id := range want {
		if _, _, err := x.Get(id); err != nil {
			if !strings.Contains(err.Error(), "page 3 is damaged") || !strings.Contains(err.Error(), path) {
				t.Fatalf("Get: %v", err)
			}
			damaged++
		}
	}
	if damaged != recordsPerPage {
		t.Fatalf("%d Gets failed, want the %d of page 3", damaged, recordsPerPage)
	}
	if err := x.Verify(); err == nil || !strings.Contains(err.Error(), "page 3 is damaged") {
		t.Fatalf("Verify: %v", err)
	}
}

func TestTruncatedSegmentRefused(t *testing.T) {
	for _, cut := range []int64{1, footerSize, 5000, -1} {
		dir := t.TempDir()
		path, _ := oneSegment(t, dir, 2000)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		size := st.Size() - cut
		if cut < 0 {
			size = 100
		}
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		_, err = Open(dir, Options{})
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("Open of a segment cut to %d bytes: %v", size, err)
		}
		t.Log(err)
	}
}

// TestCrashBeforeRename: a flush that died before its rename leaves a temporary file,
// which Open removes; the index holds what was flushed before.
func TestCrashBeforeRename(t *testing.T) {
	dir := t.TempDir()
	path, want := oneSegment(t, dir, 2000)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, segmentName(2, 2)+".tmp")
	if err := os.WriteFile(tmp, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	x := open(t, dir, Options{})
	defer x.Close()
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("the temporary file is still there: %v", err)
	}
	checkAll(t, x, want)
	// The next flush does not reuse the name of the one that died.
	fill(t, x, 4, 10)
	if err := x.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestCrashAfterMergeRename: a merge that died after its rename but before removing
// its inputs leaves them, covered by the merged segment; Open removes them.
func TestCrashAfterMergeRename(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MemtableEntries: 1 << 20, MaxSegments: 8}
	x := open(t, dir, opts)
	want := map[ID]Loc{}
	for seed := range uint64(3) {
		for id, l := range fill(t, x, 10+seed, 500) {
			want[id] = l
		}
		if err := x.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// The three flushes made segments of 500, 500, 1000 (merged) then 500 + 1000 > 1000
	// so they merge again: read the files before Compact.
	before := map[string][]byte{}
	for _, f := range segFiles(t, dir) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	fill(t, x, 20, 1) // a newer entry, then Compact merges everything
	for id, l := range fill(t, x, 21, 300) {
		want[id] = l
	}
	if err := x.Compact(); err != nil {
		t.Fatal(err)
	}
	x.Close()
	for f, b := range before {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	x = open(t, dir, opts)
	defer x.Close()
	if x.Segments() != 1 || len(segFiles(t, dir)) != 1 {
		t.Fatalf("%d segments, %d files after reopening; want the merged one", x.Segments(), len(segFiles(t, dir)))
	}
	checkAll(t, x, want)
}

func TestFilterFalsePositives(t *testing.T) {
	const n = 1_000_000
	r := rand.New(rand.NewPCG(5, 5))
	for _, bpk := range []int{10, 12} {
		f := newFilter(filterBlocks(n, bpk), filterHashes(bpk))
		for range n {
			id := randID(r)
			f.add(&id)
		}
		var fp int
		for range n {
			id := randID(r)
			if f.has(&id) {
				fp++
			}
		}
		rate := float64(fp) / n
		t.Logf("%d bits per key, %d hashes: %.3f%% false positives", bpk, f.k, 100*rate)
		if rate > 0.02 {
			t.Fatalf("%d bits per key: false-positive rate %.3f%%, want at most 2%%", bpk, 100*rate)
		}
	}
}

// TestMemoryPerEntry: at a million entries the index holds at most 16 bytes of RAM per
// entry, as it reports and as the heap grows when it is opened.
func TestMemoryPerEntry(t *testing.T) {
	if testing.Short() {
		t.Skip("a million entries")
	}
	const n = 1_000_000
	dir := t.TempDir()
	x := open(t, dir, Options{})
	fill(t, x, 6, n)
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x = open(t, dir, Options{})
	defer x.Close()
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(x.MemoryBytes()) / n
	heap := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%d entries: MemoryBytes %d (%.2f B/entry), heap after Open %.2f B/entry", x.Len(), x.MemoryBytes(), per, heap)
	if x.Len() != n || per > 16 || heap > 16 {
		t.Fatalf("%d entries, %.2f B/entry reported, %.2f B/entry of heap; want at most 16", x.Len(), per, heap)
	}
}

// TestConcurrentGets: Gets answer while Puts flush and merge (run with -race).
func TestConcurrentGets(t *testing.T) {
	x := open(t, t.TempDir(), Options{MemtableEntries: 500, MaxSegments: 3})
	defer x.Close()
	want := fill(t, x, 30, 2000)
	done := make(chan struct{})
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				for id, l := range want {
					if got, ok, err := x.Get(id); err != nil || !ok || got != l {
						errs <- fmt.Errorf("Get during writes: %+v, %v, %v", got, ok, err)
						return
					}
				}
			}
		}()
	}
	fill(t, x, 31, 10_000)
	close(done)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestFewerMaxSegments: an index opened with a smaller MaxSegments merges at Open.
func TestFewerMaxSegments(t *testing.T) {
	dir := t.TempDir()
	x := open(t, dir, Options{MemtableEntries: 1 << 20, MaxSegments: 8})
	want := map[ID]Loc{}
	for seed := range uint64(4) {
		for id, l := range fill(t, x, 40+seed, 1000>>seed) { // sizes fall: no merge
			want[id] = l
		}
		if err := x.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n := x.Segments(); n != 4 {
		t.Fatalf("%d segments, want 4", n)
	}
	x.Close()
	x = open(t, dir, Options{MaxSegments: 2})
	defer x.Close()
	if n := x.Segments(); n != 2 {
		t.Fatalf("%d segments, want 2", n)
	}
	checkAll(t, x, want)
}

// BeforeFlush runs before each memtable is written; when it fails nothing is written
// and the entries stay, to be flushed by the next Flush.
func TestBeforeFlush(t *testing.T) {
	dir := t.TempDir()
	calls, fail := 0, true
	x := open(t, dir, Options{MemtableEntries: 100, BeforeFlush: func() error {
		calls++
		if fail {
			return errors.New("disk full")
		}
		return nil
	}})
	defer x.Close()
	want := fill(t, x, 7, 50)
	if err := x.Flush(); err == nil || calls != 1 || len(segFiles(t, dir)) != 0 {
		t.Fatalf("flush with a failing BeforeFlush: %v, %d calls, %d segments; want its error and no segment", err, calls, len(segFiles(t, dir)))
	}
	fail = false
	if err := x.Flush(); err != nil || calls != 2 || len(segFiles(t, dir)) != 1 {
		t.Fatalf("flush: %v, %d calls, %d segments; want one segment", err, calls, len(segFiles(t, dir)))
	}
	checkAll(t, x, want)
}
