// Package indexbench measures the on-disk chunk index (internal/store/chunkindex,
// issue 19) at a size set by LIFEBOAT_INDEX_N: BenchmarkIndexBuild puts that many
// synthetic random chunk ids into a new index in LIFEBOAT_INDEX_DIR and closes it;
// BenchmarkIndexLookup, run in another process (after run.sh dropped the page cache),
// opens it and times Gets of ids it holds and of ids it does not. They run only from
// bench/index/run.sh; each appends a JSON line to $LIFEBOAT_BENCH_RESULTS.
package indexbench

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/lifeboat-dr/lifeboat/internal/store/chunkindex"
)

// lookups is how many hits and how many misses BenchmarkIndexLookup times.
const lookups = 100_000

type config struct {
	dir     string
	n       int64
	results string
}

func setup(b *testing.B) config {
	c := config{dir: os.Getenv("LIFEBOAT_INDEX_DIR"), results: os.Getenv("LIFEBOAT_BENCH_RESULTS")}
	n, err := strconv.ParseInt(os.Getenv("LIFEBOAT_INDEX_N"), 10, 64)
	if c.dir == "" || c.results == "" || err != nil || n < 1 {
		b.Skip("run by bench/index/run.sh (LIFEBOAT_INDEX_DIR, LIFEBOAT_INDEX_N, LIFEBOAT_BENCH_RESULTS)")
	}
	c.n = n
	return c
}

// chunkID is the i-th synthetic id of a family: family 0 is put, family 1 never is.
func chunkID(family, i uint64) chunkindex.ID {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], i)
	var id chunkindex.ID
	h := xxh3.Hash128Seed(b[:], 2*family)
	binary.LittleEndian.PutUint64(id[0:], h.Lo)
	binary.LittleEndian.PutUint64(id[8:], h.Hi)
	h = xxh3.Hash128Seed(b[:], 2*family+1)
	binary.LittleEndian.PutUint64(id[16:], h.Lo)
	binary.LittleEndian.PutUint64(id[24:], h.Hi)
	return id
}

func record(b *testing.B, c config, v map[string]any) {
	line, err := json.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.OpenFile(c.results, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s\n", line); err != nil {
		b.Fatal(err)
	}
	b.Logf("%s", line)
}

func BenchmarkIndexBuild(b *testing.B) {
	c := setup(b)
	for range b.N {
		os.RemoveAll(c.dir)
		start := time.Now()
		x, err := chunkindex.Open(c.dir, chunkindex.Options{})
		if err != nil {
			b.Fatal(err)
		}
		for i := range uint64(c.n) {
			l := chunkindex.Loc{Pack: uint32(i / 1000), Offset: uint32(i % 1000 * 40000), Length: 30000, RawLen: 65536}
			if err := x.Put(chunkID(0, i), l); err != nil {
				b.Fatal(err)
			}
		}
		if err := x.Close(); err != nil {
			b.Fatal(err)
		}
		segs, err := filepath.Glob(filepath.Join(c.dir, "seg-*.cix"))
		if err != nil {
			b.Fatal(err)
		}
		record(b, c, map[string]any{"name": "build", "entries": c.n, "seconds": time.Since(start).Seconds(),
			"segments": len(segs), "diskBytes": diskBytes(b, c.dir), "rssPeak": rss(b, "VmHWM:")})
	}
}

func BenchmarkIndexLookup(b *testing.B) {
	c := setup(b)
	for range b.N {
		rss0 := rss(b, "VmRSS:")
		start := time.Now()
		x, err := chunkindex.Open(c.dir, chunkindex.Options{})
		if err != nil {
			b.Fatal(err)
		}
		open := time.Since(start).Seconds()
		rss1 := rss(b, "VmRSS:")
		r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		hit := timeGets(b, x, func() chunkindex.ID { return chunkID(0, r.Uint64N(uint64(c.n))) }, true)
		miss := timeGets(b, x, func() chunkindex.ID { return chunkID(1, r.Uint64()) }, false)
		record(b, c, map[string]any{"name": "lookup", "entries": x.Len(), "segments": x.Segments(),
			"openSeconds": open, "rssBeforeOpen": rss0, "rssAfterOpen": rss1, "rssAfterGets": rss(b, "VmRSS:"),
			"memoryBytes": x.MemoryBytes(), "lookups": lookups,
			"hitP50us": pct(hit, 50), "hitP99us": pct(hit, 99), "hitMaxus": pct(hit, 100),
			"missP50us": pct(miss, 50), "missP99us": pct(miss, 99), "missMaxus": pct(miss, 100)})
		if err := x.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// timeGets times lookups Gets of next's ids, each expected found or not; microseconds.
func timeGets(b *testing.B, x *chunkindex.Index, next func() chunkindex.ID, found bool) []float64 {
	d := make([]float64, lookups)
	for i := range d {
		id := next()
		t := time.Now()
		_, ok, err := x.Get(id)
		d[i] = float64(time.Since(t).Nanoseconds()) / 1e3
		if err != nil || ok != found {
			b.Fatalf("Get: found %v, want %v (%v)", ok, found, err)
		}
	}
	slices.Sort(d)
	return d
}

func pct(sorted []float64, p int) float64 {
	return sorted[min(len(sorted)*p/100, len(sorted)-1)]
}

// rss is a field of /proc/self/status in bytes: VmRSS (the resident set) or VmHWM
// (its peak).
func rss(b *testing.B, field string) int64 {
	s, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(s), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == field {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

func diskBytes(b *testing.B, dir string) int64 {
	m, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, f := range m {
		st, err := os.Stat(f)
		if err != nil {
			b.Fatal(err)
		}
		n += st.Size()
	}
	return n
}
