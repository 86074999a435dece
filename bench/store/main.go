// Command storebench measures the staging store on a volume image: ingest of a full
// volume into a new local repository, a PIT after 1% of the blocks changed, restore of
// a PIT to a sparse file, and a garbage collection during ingest followed by a full
// verify. It prints one JSON object per measurement; bench/store/run.sh runs it beside
// the anchors (restic, cp) on the same data and writes bench/store/RESULTS.md.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

// result is one measurement.
type result struct {
	Name       string  `json:"name"`
	Data       string  `json:"data"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpuSeconds"`
	Bytes      int64   `json:"bytes"`            // logical bytes processed
	Stored     int64   `json:"stored,omitempty"` // bytes in the repository (or output's allocation)
	Extra      string  `json:"extra,omitempty"`
}

func cpuTime() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return tv(ru.Utime) + tv(ru.Stime)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func emit(r result) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func main() {
	log.SetFlags(0)
	if len(os.Args) < 2 {
		log.Fatal("usage: storebench run|report ...")
	}
	switch os.Args[1] {
	case "run":
		run(os.Args[2:])
	case "report":
		report(os.Args[2:])
	default:
		log.Fatalf("unknown mode %q", os.Args[1])
	}
}

func run(args []string) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	image := fs.String("image", "", "volume image to ingest")
	dir := fs.String("dir", "", "work directory (a new repository is made in it)")
	bs := fs.Int("block-size", store.DefaultBlockSize, "repository block size")
	codecName := fs.String("codec", "s2", "s2, zstd or none")
	phases := fs.String("phases", "ingest,change,restore,gc", "what to measure")
	label := fs.String("label", "", "name of the data set in the results")
	gcImage := fs.String("gc-image", "", "image the GC phase ingests as a second server (default -image)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run here")
	_ = fs.Parse(args)
	if *cpuprofile != "" {
		pf, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if *image == "" || *dir == "" {
		log.Fatal("-image and -dir are required")
	}
	codec, err := store.ParseCodec(*codecName)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if *label == "" {
		*label = filepath.Base(*image)
	}
	want := map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		want[p] = true
	}
	repoDir := filepath.Join(*dir, "repo")
	os.RemoveAll(repoDir)
	be, err := file.Open(repoDir)
	if err != nil {
		log.Fatal(err)
	}
	mk, _ := store.NewMasterKey()
	opts := store.Options{BlockSize: *bs, Compression: *codecName}
	r, err := store.Init(ctx, be, mk, opts)
	if err != nil {
		log.Fatal(err)
	}
	tag := fmt.Sprintf("%s bs=%dK codec=%s", *label, *bs>>10, codec)

	// Ingest.
	size := fileSize(*image)
	cpu0, t0 := cpuTime(), time.Now()
	h, err := r.OpenHead(ctx, "s-bench", "vda", size, store.HeadOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := ingest(ctx, h, *image, *bs); err != nil {
		log.Fatal(err)
	}
	pit, err := r.SealPIT(ctx, store.SealRequest{ID: "pit-full", Server: "s-bench", Time: time.Now(), Level: consistency.Crash, Heads: []*store.Head{h}})
	if err != nil {
		log.Fatal(err)
	}
	ingestSecs := time.Since(t0).Seconds()
	stored := dirSize(repoDir)
	emit(result{Name: "lifeboat ingest", Data: tag, Seconds: ingestSecs, CPUSeconds: cpuTime() - cpu0, Bytes: size, Stored: stored})

	if want["change"] {
		// 1% of the blocks get new random content; the new PIT should cost about that.
		nblocks := uint64((size + int64(*bs) - 1) / int64(*bs))
		rng := rand.New(rand.NewPCG(42, 1))
		changed := map[uint64]bool{}
		for uint64(len(changed)) < nblocks/100 {
			changed[uint64(rng.IntN(int(nblocks-1)))] = true
		}
		var blocks []store.Block
		for b := range changed {
			data := make([]byte, *bs)
			for i := 0; i < len(data); i += 8 {
				v := rng.Uint64()
				for k := 0; k < 8; k++ {
					data[i+k] = byte(v >> (8 * k))
				}
			}
			blocks = append(blocks, store.Block{Index: b, Data: data})
		}
		before := dirSize(repoDir)
		cpu0, t0 := cpuTime(), time.Now()
		if err := h.WriteBlocks(ctx, blocks); err != nil {
			log.Fatal(err)
		}
		p2, err := r.SealPIT(ctx, store.SealRequest{ID: "pit-inc", Server: "s-bench", Time: time.Now(), Level: consistency.Crash, Heads: []*store.Head{h}})
		if err != nil {
			log.Fatal(err)
		}
		added := dirSize(repoDir) - before
		data := int64(len(blocks)) * int64(*bs)
		emit(result{Name: "lifeboat PIT after 1% changed", Data: tag, Seconds: time.Since(t0).Seconds(), CPUSeconds: cpuTime() - cpu0,
			Bytes: data, Stored: added,
			Extra: fmt.Sprintf("%d blocks changed (%.1f MiB); PIT added %.1f MiB = %.2f%% of the first PIT's %.1f MiB; metadata (tree tables, journal, manifest, index) %.0f KiB; AddedBytes %d",
				len(blocks), mib(data), mib(added), 100*float64(added)/float64(stored), mib(stored), float64(added-int64(len(blocks))*int64(*bs+29))/1024, p2.AddedBytes)})
	}

	if want["restore"] {
		out := filepath.Join(*dir, "restore.img")
		os.Remove(out)
		f, err := os.Create(out)
		if err != nil {
			log.Fatal(err)
		}
		dropCaches()
		cpu0, t0 := cpuTime(), time.Now()
		v, err := r.OpenVolume(ctx, pit, "vda")
		if err != nil {
			log.Fatal(err)
		}
		st, err := v.Export(ctx, f, store.ExportOptions{})
		if err != nil {
			log.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			log.Fatal(err)
		}
		secs := time.Since(t0).Seconds()
		cpu := cpuTime() - cpu0
		f.Close()
		var sys syscall.Stat_t
		_ = syscall.Stat(out, &sys)
		same, err := sameContent(*image, out)
		if err != nil {
			log.Fatal(err)
		}
		if !same {
			log.Fatalf("the restored image differs from %s", *image)
		}
		emit(result{Name: "lifeboat restore (sparse)", Data: tag, Seconds: secs, CPUSeconds: cpu, Bytes: size, Stored: sys.Blocks * 512,
			Extra: fmt.Sprintf("%d zero blocks left as holes; output identical to the image", st.ZeroBlocks)})
		os.Remove(out)
	}
	r.Close()

	if want["gc"] {
		other := *image
		if *gcImage != "" {
			other = *gcImage
		}
		gcDuringIngest(ctx, be, mk, opts, other, tag, size)
	}
}

// ingest reads the image sequentially and writes it in batches, reading ahead in a
// goroutine as the replicator receives from the network while it stores.
func ingest(ctx context.Context, h *store.Head, image string, bs int) error {
	f, err := os.Open(image)
	if err != nil {
		return err
	}
	defer f.Close()
	const batch = 64
	type chunk struct {
		first uint64
		buf   []byte
		n     int
	}
	free := make(chan []byte, 3)
	for i := 0; i < 3; i++ {
		free <- make([]byte, batch*bs)
	}
	full := make(chan chunk, 2)
	var rerr error
	go func() {
		defer close(full)
		rd := bufio.NewReaderSize(f, 4<<20)
		var block uint64
		for {
			buf := <-free
			n, err := io.ReadFull(rd, buf)
			if n > 0 {
				full <- chunk{first: block, buf: buf, n: n}
				block += uint64((n + bs - 1) / bs)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					rerr = err
				}
				return
			}
		}
	}()
	blocks := make([]store.Block, 0, batch)
	for c := range full {
		blocks = blocks[:0]
		for off := 0; off < c.n; off += bs {
			blocks = append(blocks, store.Block{Index: c.first + uint64(off/bs), Data: c.buf[off:min(off+bs, c.n)]})
		}
		if err := h.WriteBlocks(ctx, blocks); err != nil {
			return err
		}
		free <- c.buf
	}
	if rerr != nil {
		return rerr
	}
	return h.Flush(ctx)
}

// gcDuringIngest ingests the image as a second server while garbage collections run
// on a repository with PITs to drop, then verifies every chunk.
func gcDuringIngest(ctx context.Context, be backend.Backend, mk store.MasterKey, opts store.Options, image, tag string, size int64) {
	opts.GCGrace = 2 * time.Second
	r, err := store.Open(ctx, be, mk, opts)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	// Garbage to collect: the first server's changed blocks change again (a new PIT),
	// and the PIT that held their previous content goes.
	h, err := r.OpenHead(ctx, "s-bench", "vda", size, store.HeadOptions{})
	if err != nil {
		log.Fatal(err)
	}
	nblocks := uint64((size + int64(r.BlockSize()) - 1) / int64(r.BlockSize()))
	// The same blocks as the change phase (same generator), with new content.
	pick := rand.New(rand.NewPCG(42, 1))
	changed := map[uint64]bool{}
	for uint64(len(changed)) < nblocks/100 {
		changed[uint64(pick.IntN(int(nblocks-1)))] = true
	}
	rng := rand.New(rand.NewPCG(43, 2))
	var blocks []store.Block
	for b := range changed {
		data := make([]byte, r.BlockSize())
		for k := 0; k < len(data); k += 8 {
			v := rng.Uint64()
			for j := 0; j < 8; j++ {
				data[k+j] = byte(v >> (8 * j))
			}
		}
		blocks = append(blocks, store.Block{Index: b, Data: data})
	}
	if err := h.WriteBlocks(ctx, blocks); err != nil {
		log.Fatal(err)
	}
	if _, err := r.SealPIT(ctx, store.SealRequest{ID: "pit-inc2", Server: "s-bench", Time: time.Now(), Level: consistency.Crash, Heads: []*store.Head{h}}); err != nil {
		log.Fatal(err)
	}
	if err := r.DeletePIT(ctx, "s-bench", "pit-inc"); err != nil {
		log.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var runs, dead int
	var gcErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			st, err := r.GC(ctx, store.GCOptions{})
			if err != nil {
				gcErr = err
				return
			}
			runs++
			dead += st.DeadChunks
		}
	}()
	t0 := time.Now()
	size = fileSize(image)
	h2, err := r.OpenHead(ctx, "s-bench2", "vda", size, store.HeadOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := ingest(ctx, h2, image, r.BlockSize()); err != nil {
		log.Fatal(err)
	}
	if _, err := r.SealPIT(ctx, store.SealRequest{ID: "pit-2", Server: "s-bench2", Time: time.Now(), Level: consistency.Crash, Heads: []*store.Head{h2}}); err != nil {
		log.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if gcErr != nil {
		log.Fatalf("gc during ingest: %v", gcErr)
	}
	ingestSecs := time.Since(t0).Seconds()
	t1 := time.Now()
	rep, err := r.Verify(ctx, store.VerifyOptions{ReadData: true})
	if err != nil {
		log.Fatal(err)
	}
	emit(result{Name: "lifeboat GC during ingest, then verify --read-data", Data: tag, Seconds: ingestSecs, Bytes: size,
		Extra: fmt.Sprintf("%d collections ran during a %.1f s ingest of %s and removed %d dead chunks; verify read %d chunks (%.0f MiB) in %.1f s: %d errors",
			runs, ingestSecs, filepath.Base(image), dead, rep.ReadChunks, mib(rep.ReadBytes), time.Since(t1).Seconds(), len(rep.Errors))})
	if !rep.OK() {
		log.Fatalf("verify found errors: %v", rep.Errors)
	}
}

func dropCaches() {
	syscall.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		log.Fatal(err)
	}
	return fi.Size()
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || string(ba[:na]) != string(bb[:nb]) {
			return false, nil
		}
		if ea != nil || eb != nil {
			return (ea == nil) == (eb == nil), nil
		}
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// report turns JSON lines (from run and from the script's anchors) into Markdown rows.
func report(args []string) {
	if len(args) != 1 {
		log.Fatal("usage: storebench report RESULTS.jsonl")
	}
	f, err := os.Open(args[0])
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	var rs []result
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r result
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Name != "" {
			rs = append(rs, r)
		}
	}
	byName := func(prefix, data string) *result {
		for i := range rs {
			if strings.HasPrefix(rs[i].Name, prefix) && strings.HasPrefix(rs[i].Data, data) {
				return &rs[i]
			}
		}
		return nil
	}
	datas := []string{}
	seen := map[string]bool{}
	for _, r := range rs {
		d := strings.Fields(r.Data)[0]
		if !seen[d] {
			seen[d] = true
			datas = append(datas, d)
		}
	}
	sort.Strings(datas)
	fmt.Println("| data | what | time | MB/s | CPU s | stored / output | ratio to anchor |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, d := range datas {
		restic := byName("restic backup", d)
		resticRestore := byName("restic restore", d)
		cp := byName("cp", d)
		for _, r := range rs {
			if !strings.HasPrefix(r.Data, d) || strings.HasPrefix(r.Name, "lifeboat GC") {
				continue
			}
			ratio := ""
			switch {
			case strings.HasPrefix(r.Name, "lifeboat ingest") && restic != nil:
				ratio = fmt.Sprintf("%.2f× restic backup's throughput", restic.Seconds/r.Seconds)
				if cp != nil {
					ratio += fmt.Sprintf("; %.0f%% of cp's", 100*cp.Seconds/r.Seconds)
				}
			case strings.HasPrefix(r.Name, "lifeboat restore") && resticRestore != nil:
				ratio = fmt.Sprintf("%.2f× restic restore's throughput", resticRestore.Seconds/r.Seconds)
				if cp != nil {
					ratio += fmt.Sprintf("; %.0f%% of cp's", 100*cp.Seconds/r.Seconds)
				}
			case strings.HasPrefix(r.Name, "lifeboat ingest") && restic == nil:
			}
			if strings.HasPrefix(r.Name, "lifeboat ingest") && restic != nil && restic.Stored > 0 {
				ratio += fmt.Sprintf("; stored %.2f× restic's", float64(r.Stored)/float64(restic.Stored))
			}
			fmt.Printf("| %s | %s | %.2f s | %.0f | %.1f | %.0f MiB | %s |\n", r.Data, r.Name, r.Seconds,
				float64(r.Bytes)/1e6/r.Seconds, r.CPUSeconds, mib(r.Stored), ratio)
		}
	}
	fmt.Println()
	for _, r := range rs {
		if r.Extra != "" {
			fmt.Printf("- %s, %s: %s\n", r.Name, r.Data, r.Extra)
		}
	}
}
