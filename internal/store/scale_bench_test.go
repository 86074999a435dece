package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

// The index at scale (issue 19), run only by bench/index/scale.sh, each benchmark in a
// process of its own so that its RSS is its own:
//
//   - BenchmarkScaleSynthesize makes a store in $LIFEBOAT_SCALE_DIR/store whose index
//     objects name $LIFEBOAT_SCALE_N chunks (in packs that do not exist: an index
//     only, no data), 50,000 per index object as a garbage collection writes them.
//   - BenchmarkScaleOpen opens it as the replicator does, with the chunk index on disk
//     in $LIFEBOAT_SCALE_DIR/idx (the first open builds it, a later one resumes it).
//   - BenchmarkScaleIngest opens it and ingests the image $LIFEBOAT_SCALE_IMAGE into a
//     new head, then times lookups of ids it holds and does not hold; with
//     LIFEBOAT_SCALE_EMPTY=1 it does so into a new empty store with the index in RAM,
//     as before issue 19 (the baseline).
//
// Each appends one JSON line to $LIFEBOAT_BENCH_RESULTS. The replicator's soft memory
// limit (224 MiB, its --memory-limit default) applies, as in the replicator.

type scaleConfig struct {
	dir, results, image string
	n                   int64
}

func scaleSetup(b *testing.B) scaleConfig {
	c := scaleConfig{dir: os.Getenv("LIFEBOAT_SCALE_DIR"), results: os.Getenv("LIFEBOAT_BENCH_RESULTS"),
		image: os.Getenv("LIFEBOAT_SCALE_IMAGE")}
	n, err := strconv.ParseInt(os.Getenv("LIFEBOAT_SCALE_N"), 10, 64)
	if c.dir == "" || c.results == "" || err != nil || n < 1 {
		b.Skip("run by bench/index/scale.sh (LIFEBOAT_SCALE_DIR, LIFEBOAT_SCALE_N, LIFEBOAT_BENCH_RESULTS)")
	}
	c.n = n
	debug.SetMemoryLimit(224 << 20)
	return c
}

func (c scaleConfig) emit(b *testing.B, v map[string]any) {
	line, _ := json.Marshal(v)
	f, err := os.OpenFile(c.results, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		b.Fatal(err)
	}
}

func (c scaleConfig) backend(b *testing.B, name string) (backend.Backend, MasterKey) {
	be, err := file.Open(filepath.Join(c.dir, name))
	if err != nil {
		b.Fatal(err)
	}
	keyPath := filepath.Join(c.dir, name+".key")
	var mk MasterKey
	if _, err = os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if mk, err = NewMasterKey(); err == nil {
			err = WriteMasterKey(keyPath, mk)
		}
	} else {
		mk, err = LoadMasterKey(keyPath)
	}
	if err != nil {
		b.Fatal(err)
	}
	return be, mk
}

// syntheticID is the i-th synthetic chunk id.
func syntheticID(i uint64) ID {
	var in [9]byte
	in[0] = 'c'
	binary.LittleEndian.PutUint64(in[1:], i)
	return ID(blake3.Sum256(in[:]))
}

func BenchmarkScaleSynthesize(b *testing.B) {
	c := scaleSetup(b)
	ctx := context.Background()
	be, mk := c.backend(b, "store")
	r, err := Init(ctx, be, mk, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	const perPack, perObject = 512, 50000
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	for first := uint64(0); first < uint64(c.n); first += perObject {
		g.Go(func() error {
			var packs []packEntries
			for i := first; i < min(first+perObject, uint64(c.n)); i++ {
				if i%perPack == 0 || len(packs) == 0 {
					var in [9]byte
					in[0] = 'p'
					binary.LittleEndian.PutUint64(in[1:], i/perPack)
					packs = append(packs, packEntries{Pack: ID(blake3.Sum256(in[:]))})
				}
				p := &packs[len(packs)-1]
				p.Entries = append(p.Entries, entry{ID: syntheticID(i), Type: blobData,
					Offset: packHeaderSize + uint32(i%perPack)*40000, Length: 40000, RawLen: 65536})
			}
			plain := encodeIndex(packs)
			return r.putSealed(gctx, indexName(ID(blake3.Sum256(plain))), plain, backend.PutOptions{})
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	c.emit(b, map[string]any{"name": "synthesize", "entries": c.n, "seconds": time.Since(start).Seconds(),
		"storeBytes": dirBytes(filepath.Join(c.dir, "store"))})
}

func BenchmarkScaleOpen(b *testing.B) {
	c := scaleSetup(b)
	be, mk := c.backend(b, "store")
	rssBefore := procStatus("VmRSS")
	start := time.Now()
	r, err := Open(context.Background(), be, mk, Options{IndexDir: filepath.Join(c.dir, "idx")})
	if err != nil {
		b.Fatal(err)
	}
	secs := time.Since(start).Seconds()
	debug.FreeOSMemory()
	v := map[string]any{"name": os.Getenv("LIFEBOAT_SCALE_NAME"), "entries": c.n, "openSeconds": secs,
		"rssBeforeOpen": rssBefore, "rssAfterOpen": procStatus("VmRSS"), "rssPeak": procStatus("VmHWM"),
		"segments": r.disk.idx.Segments(), "indexMemoryBytes": r.disk.idx.MemoryBytes(),
		"indexDiskBytes": dirBytes(filepath.Join(c.dir, "idx"))}
	if err := r.Close(); err != nil {
		b.Fatal(err)
	}
	c.emit(b, v)
}

func BenchmarkScaleIngest(b *testing.B) {
	c := scaleSetup(b)
	ctx := context.Background()
	empty := os.Getenv("LIFEBOAT_SCALE_EMPTY") == "1"
	var r *Repo
	var err error
	if empty {
		os.RemoveAll(filepath.Join(c.dir, "empty"))
		be, mk := c.backend(b, "empty")
		r, err = Init(ctx, be, mk, Options{})
	} else {
		be, mk := c.backend(b, "store")
		r, err = Open(ctx, be, mk, Options{IndexDir: filepath.Join(c.dir, "idx")})
	}
	if err != nil {
		b.Fatal(err)
	}
	rssOpen := procStatus("VmRSS")
	var mu sync.Mutex
	rssMax := rssOpen
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // RSS while ingesting, every 100 ms
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			mu.Lock()
			rssMax = max(rssMax, procStatus("VmRSS"))
			mu.Unlock()
		}
	}()
	start := time.Now()
	bytes, err := scaleIngest(ctx, r, c.image)
	close(stop)
	<-sampled
	if err != nil {
		b.Fatal(err)
	}
	secs := time.Since(start).Seconds()
	hit, miss := scaleLookups(r, c.n, empty)
	v := map[string]any{"name": map[bool]string{true: "ingest empty", false: "ingest"}[empty], "entries": c.n,
		"bytes": bytes, "seconds": secs, "mibPerSecond": float64(bytes) / (1 << 20) / secs,
		"rssAfterOpen": rssOpen, "rssMaxIngest": rssMax, "rssPeak": procStatus("VmHWM"),
		"hitP50us": hit[0], "hitP99us": hit[1], "missP50us": miss[0], "missP99us": miss[1]}
	if err := r.Close(); err != nil {
		b.Fatal(err)
	}
	c.emit(b, v)
}

// scaleIngest writes the image into a new head in batches of 256 blocks (as the
// replicator's sessions do), flushes it and seals a PIT. The first 8 bytes of every
// non-zero block are salted per run, so that each run stores new chunks (the store
// would otherwise hold the image from an earlier run, and every block would be a hit).
func scaleIngest(ctx context.Context, r *Repo, image string) (int64, error) {
	f, err := os.Open(image)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	server := "ingest-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	h, err := r.OpenHead(ctx, server, "vda", fi.Size(), HeadOptions{})
	if err != nil {
		return 0, err
	}
	defer h.Close()
	salt := uint64(time.Now().UnixNano()) | 1
	bs := int64(r.BlockSize())
	buf := make([]byte, 256*bs)
	for off := int64(0); off < fi.Size(); {
		n, err := io.ReadFull(f, buf)
		if n == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return off, err
		}
		var blocks []Block
		for i := int64(0); i < int64(n); i += bs {
			data := buf[i:min(i+bs, int64(n))]
			if !allZero(data) { // new chunks in every run, as compressible as the image's
				binary.LittleEndian.PutUint64(data, binary.LittleEndian.Uint64(data)^salt)
			}
			blocks = append(blocks, Block{Index: uint64((off + i) / bs), Data: data})
		}
		if err := h.WriteBlocks(ctx, blocks); err != nil {
			return off, err
		}
		off += int64(n)
	}
	_, err = r.SealPIT(ctx, SealRequest{ID: "pit-" + server, Server: server, Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	return fi.Size(), err
}

// scaleLookups times 100,000 dedup lookups of ids the store holds and as many of ids
// it does not, in a random order (p50 and p99 in µs). The empty store holds no
// synthetic ids: its hits are the chunks it ingested.
func scaleLookups(r *Repo, n int64, empty bool) (hit, miss [2]float64) {
	const lookups = 100_000
	var held []ID
	if empty {
		r.mu.RLock()
		for id := range r.ix.chunks.(memMap) {
			held = append(held, id)
			if len(held) == lookups {
				break
			}
		}
		r.mu.RUnlock()
	} else {
		rng := rand.New(rand.NewPCG(1, 2))
		for range lookups {
			held = append(held, syntheticID(rng.Uint64N(uint64(n))))
		}
	}
	time1 := func(id ID, want bool) float64 {
		t := time.Now()
		if r.dedupable(id) != want {
			panic("lookup of " + id.String() + " answered wrong")
		}
		return float64(time.Since(t).Nanoseconds()) / 1000
	}
	var hits, misses []float64
	for i, id := range held {
		hits = append(hits, time1(id, true))
		misses = append(misses, time1(syntheticID(uint64(n)+uint64(i)+1), false))
	}
	q := func(v []float64) [2]float64 {
		slices.Sort(v)
		return [2]float64{v[len(v)/2], v[len(v)*99/100]}
	}
	return q(hits), q(misses)
}

// procStatus is a field of /proc/self/status in bytes (VmRSS, VmHWM).
func procStatus(field string) int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func dirBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
