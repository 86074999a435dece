// Package recoverybench measures recovery (issue 6: "Restore" and "RTO"):
// materializing a PIT from a local staging store into a sparse raw image, against
// restic restore and qemu-img convert of the same image (run.sh times those anchors in
// the same run), and the time from a recovery's start to the recovered VM answering
// HTTP for 1, 4 and 16 GiB bootable disks, materialized and instant (booted from the
// staging store over NBD, copied afterwards). It runs only as benchmarks
// (bench/recovery/run.sh); each appends JSON lines to $LIFEBOAT_BENCH_RESULTS.
package recoverybench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// result is one measurement (the same shape as run.sh's anchor lines).
type result struct {
	Name    string  `json:"name"`
	Data    string  `json:"data"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes"`
	Stored  int64   `json:"stored,omitempty"` // bytes the output allocates
	Extra   string  `json:"extra,omitempty"`
}

func emit(b *testing.B, r result) {
	b.Helper()
	b.Logf("%s %s: %.2f s", r.Name, r.Data, r.Seconds)
	path := os.Getenv("LIFEBOAT_BENCH_RESULTS")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	line, _ := json.Marshal(r)
	fmt.Fprintln(f, string(line))
}

func dropCaches() {
	syscall.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

func allocated(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// workDir is where the benchmark writes (beside the data sets, not in /tmp, which may
// be a small tmpfs).
func workDir(b *testing.B, name string) string {
	b.Helper()
	dir := filepath.Join(os.Getenv("LIFEBOAT_BENCH_OUT"), name)
	if os.Getenv("LIFEBOAT_BENCH_OUT") == "" {
		dir = filepath.Join(b.TempDir(), name)
	}
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ingest writes an image into a head of a new repository and seals a PIT.
func ingest(b *testing.B, repo *store.Repo, server, image string) store.PIT {
	b.Helper()
	ctx := context.Background()
	f, err := os.Open(image)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	h, err := repo.OpenHead(ctx, server, "vda", fi.Size(), store.HeadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	bs := int64(repo.BlockSize())
	batch := make([]store.Block, 0, 256)
	buf := make([]byte, 256*bs)
	for off := int64(0); off < fi.Size(); off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			b.Fatal(err)
		}
		batch = batch[:0]
		for i := int64(0); i*bs < int64(n); i++ {
			batch = append(batch, store.Block{Index: uint64(off/bs + i), Data: buf[i*bs : min((i+1)*bs, int64(n))]})
		}
		if err := h.WriteBlocks(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	pit, err := repo.SealPIT(ctx, store.SealRequest{ID: "pit-bench", Server: server, Time: time.Now(), Level: consistency.Crash, Heads: []*store.Head{h}})
	if err != nil {
		b.Fatal(err)
	}
	return pit
}

// BenchmarkMaterialize: a PIT of $LIFEBOAT_BENCH_IMAGE, materialized from a cold cache
// into a sparse raw image (fsynced), as a recovery's SNAPSHOT step does.
func BenchmarkMaterialize(b *testing.B) {
	image := os.Getenv("LIFEBOAT_BENCH_IMAGE")
	if image == "" {
		b.Skip("LIFEBOAT_BENCH_IMAGE names no image (run bench/recovery/run.sh)")
	}
	ctx := context.Background()
	dir := workDir(b, "materialize")
	be, err := file.Open(filepath.Join(dir, "store"))
	if err != nil {
		b.Fatal(err)
	}
	mk, _ := store.NewMasterKey()
	repo, err := store.Init(ctx, be, mk, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer repo.Close()
	pit := ingest(b, repo, "s-bench", image)
	size := pit.Volumes[0].Size
	out := filepath.Join(dir, "vda.raw")
	for range b.N {
		os.Remove(out)
		dropCaches()
		start := time.Now()
		b.ResetTimer()
		stats, err := recovery.Materialize(ctx, repo, pit, []launch.Disk{{Volume: "vda", SizeBytes: size, Path: out, Mode: launch.WriteFresh}}, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		secs := time.Since(start).Seconds()
		b.StopTimer()
		if err := exec.Command("cmp", "-s", out, image).Run(); err != nil {
			b.Fatalf("the materialized image differs from %s", image)
		}
		emit(b, result{Name: "lifeboat materialize", Data: filepath.Base(image), Seconds: secs, Bytes: size, Stored: allocated(out),
			Extra: fmt.Sprintf("%d blocks written, %d holes", stats[0].WrittenBlocks, stats[0].ZeroBlocks)})
		b.ReportMetric(float64(size)/1e6/secs, "MB/s")
	}
}

// BenchmarkRecoverToHTTP: a bootable Linux disk of 1, 4 and 16 GiB, filled with system
// files (60%, at most the filler's size), is a PIT; the time from asking for the
// recovery to the recovered QEMU VM (TCG) answering HTTP on its forwarded port, with the
// job's own breakdown: materialized first, and instant (booted from the staging store,
// copied afterwards). LIFEBOAT_BENCH_RECOVER lists the cases (default
// "1,4,16,1i,16i": GiB, i for instant).
func BenchmarkRecoverToHTTP(b *testing.B) {
	filler := os.Getenv("LIFEBOAT_BENCH_IMAGE")
	if filler == "" {
		b.Skip("LIFEBOAT_BENCH_IMAGE names no filler data (run bench/recovery/run.sh)")
	}
	cases := os.Getenv("LIFEBOAT_BENCH_RECOVER")
	if cases == "" {
		cases = "1,4,16,1i,16i"
	}
	for _, c := range strings.Split(cases, ",") {
		num, instant := strings.CutSuffix(strings.TrimSpace(c), "i")
		gib, err := strconv.Atoi(num)
		if err != nil || gib < 1 {
			b.Fatalf("LIFEBOAT_BENCH_RECOVER: %q is not GiB with an optional i", c)
		}
		b.Run(c, func(b *testing.B) {
			for range b.N {
				recoverToHTTP(b, gib, instant, filler)
			}
		})
	}
}

func recoverToHTTP(b *testing.B, gib int, instant bool, filler string) {
	ctx := context.Background()
	img := testutil.BuildBootImage(b, testutil.BootImageOptions{SizeMiB: gib << 10, Hostname: "bench", Page: "recovered\n"})
	// Fill 60% of the disk with real files' bytes (from the system data set).
	fill := filepath.Join(workDir(b, "filler"), "fill")
	n := int64(gib) << 30 * 6 / 10
	src, err := os.Open(filler)
	if err != nil {
		b.Fatal(err)
	}
	dst, err := os.Create(fill)
	if err != nil {
		b.Fatal(err)
	}
	if n, err = io.Copy(dst, io.LimitReader(src, n)); err != nil {
		b.Fatal(err)
	}
	src.Close()
	dst.Close()
	testutil.Run(b, "debugfs", "-w", "-R", "write "+fill+" /filler.bin", img)
	os.Remove(fill)

	dir, err := os.MkdirTemp(os.Getenv("LIFEBOAT_BENCH_OUT"), "lb-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	recoverytest.KillVMsAtCleanup(b, dir)
	cp, err := controlplane.Open(ctx, controlplane.Config{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	if err := cp.Listen(); err != nil {
		b.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cp.Serve(sctx) }()
	b.Cleanup(func() { cancel(); <-done; cp.Close() })
	repo := recoverytest.Store(b, cp)
	fi, _ := os.Stat(img)
	server := recoverytest.Server(b, cp, "bench", map[string]int64{"vda": fi.Size()})
	recoverytest.PIT(b, cp, repo, server, consistency.Filesystem, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	tok, err := cp.CreateToken(ctx, cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
	if err != nil {
		b.Fatal(err)
	}
	c, err := api.NewClient(api.ClientConfig{Server: cp.URL(), Token: tok.Secret, CAPEM: cp.CACertPEM()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ls := api.DefaultLaunchSettings(2, 1<<30)
	ls.BootMode = api.BootKernel
	ls.Network = api.LaunchNetwork{Mode: api.NetworkUser, PortForwards: []api.PortForward{{Protocol: "tcp", GuestPort: 80}}}
	ls.PostLaunchActions = []api.PostLaunchAction{{Name: "page", Type: "http-check", URL: "http://${LIFEBOAT_PORT_TCP_80}/", TimeoutSeconds: 900}}
	ls.Instant = instant
	if _, err := c.SetLaunchSettings(ctx, server.ID, ls); err != nil {
		b.Fatal(err)
	}
	dropCaches()

	start := time.Now()
	job, err := c.StartRecovery(ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: server.ID}}})
	if err != nil {
		b.Fatal(err)
	}
	// The page, polled from outside as a user would, as soon as the port is known.
	var url string
	var answered time.Duration
	for deadline := time.Now().Add(20 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if url == "" {
			j, err := c.Job(ctx, job.ID)
			if err != nil {
				b.Fatal(err)
			}
			if s := j.Servers[0]; s.LaunchStatus == api.LaunchFailed {
				b.Fatalf("the recovery failed: %s", s.Error)
			}
			ri, err := c.RecoveryInstance(ctx, j.Servers[0].RecoveryInstanceID)
			if err != nil || len(ri.PortForwards) == 0 || ri.PortForwards[0].HostPort == 0 {
				continue
			}
			url = fmt.Sprintf("http://%s/", net.JoinHostPort(ri.PortForwards[0].HostAddr, fmt.Sprint(ri.PortForwards[0].HostPort)))
		}
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), "recovered") {
				answered = time.Since(start)
				break
			}
		}
	}
	if answered == 0 {
		b.Fatal("the recovered VM never answered HTTP")
	}
	j := recoverytest.WaitJob(b, c, job.ID, 20*time.Minute)
	at := jobEvents(b, c, job.ID, instant)
	span := func(from, to string) float64 { return at[to].Sub(at[from]).Seconds() }
	rto := 0.0
	if j.Servers[0].RTOSeconds != nil {
		rto = *j.Servers[0].RTOSeconds
	}
	data, first := fmt.Sprintf("%d GiB bootable disk, %.1f GiB of files", gib, float64(n)/(1<<30)), "materialize"
	extra := ""
	if instant {
		data, first = data+", instant", "overlays"
		extra = fmt.Sprintf("; disks copied %.1f s after boot", span(api.EventBoot, api.EventHydrated))
	}
	emit(b, result{Name: "recover to HTTP", Data: data, Seconds: answered.Seconds(), Bytes: fi.Size(),
		Extra: fmt.Sprintf("job RTO %.1f s (ms-resolution log): %s %.1f s, conversion %.1f s, QEMU start %.1f s, boot to HTTP %.1f s%s",
			rto, first, span(api.EventSnapshotStart, api.EventSnapshotEnd), span(api.EventConversionStart, api.EventConversionEnd),
			span(api.EventLaunchStart, api.EventLaunchEnd), span(api.EventPostLaunchStart, api.EventPostLaunchEnd), extra)})
	b.ReportMetric(answered.Seconds(), "s/recover-to-http")
}

// jobEvents returns when each type of event first appears in a job's log; for an
// instant launch it waits (20 minutes at most) for HYDRATED.
func jobEvents(b *testing.B, c *api.Client, job string, instant bool) map[string]time.Time {
	for deadline := time.Now().Add(20 * time.Minute); ; time.Sleep(time.Second) {
		at := map[string]time.Time{}
		tok := ""
		for {
			l, err := c.JobLog(context.Background(), job, 0, tok)
			if err != nil {
				b.Fatal(err)
			}
			for _, e := range l.Items {
				if _, ok := at[e.Type]; !ok {
					at[e.Type] = e.Time
				}
			}
			if tok = l.NextPageToken; tok == "" || len(l.Items) == 0 {
				break
			}
		}
		if _, ok := at[api.EventHydrated]; ok || !instant {
			return at
		}
		if time.Now().After(deadline) {
			b.Fatal("the instant launch's disks were not copied within 20 minutes")
		}
	}
}
