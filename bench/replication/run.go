package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

const blockSize = 64 << 10

type runFlags struct {
	bin, image, out, results, phases string
	reps                             int
	bigGiB                           int
	fioSeconds                       int
	fioBS                            string
	fioIntervals                     string
	metaSeconds, metaWrites          int
	metaInterval                     int
	changePct                        float64
	quiet                            float64
	codecs                           string
	anchors, perf, traceFreeze       bool
}

func cmdRun(ctx context.Context, args []string) error {
	var f runFlags
	fs := newFlagSet("run")
	fs.StringVar(&f.bin, "lifeboat", ".cache/lifeboat-bench", "the lifeboat binary")
	fs.StringVar(&f.image, "image", "bench/out/system.img", "the volume image (bench/data.sh)")
	fs.StringVar(&f.out, "out", "bench/out/replication", "work directory (emptied)")
	fs.StringVar(&f.results, "results", "bench/out/replication/results.jsonl", "JSON lines to append to")
	fs.StringVar(&f.phases, "phases", "initial,rescan,incremental,lag,big", "phases to run (also: metadata)")
	fs.IntVar(&f.reps, "reps", 3, "incremental cycles per volume")
	fs.IntVar(&f.bigGiB, "big-gib", 16, "size of the large volume (the image plus zeros)")
	fs.IntVar(&f.fioSeconds, "fio-seconds", 120, "length of the steady fio load")
	fs.StringVar(&f.fioBS, "fio-bs", "64k,4k", "fio block sizes, comma-separated (one load each)")
	fs.StringVar(&f.fioIntervals, "fio-interval", "2", "consistency-point intervals during the fio load (s), comma-separated: the load runs once at each")
	fs.IntVar(&f.metaSeconds, "meta-seconds", 300, "metadata phase: how long points every 1 s are taken under the light load (s)")
	fs.IntVar(&f.metaInterval, "meta-interval", 1, "metadata phase: the consistency-point interval (s)")
	fs.IntVar(&f.metaWrites, "meta-writes", 5, "metadata phase: small appends (4 KiB + fdatasync) per second of the light load")
	fs.Float64Var(&f.changePct, "change-pct", 1, "percent of the volume's blocks an incremental cycle changes")
	fs.Float64Var(&f.quiet, "quiet", 0.25, "before each timed step, wait (up to 2 min) until the CPUs were less than this busy for 3 s")
	fs.StringVar(&f.codecs, "codecs", "s2,zstd", "compressions of the initial sync; the first (the default setting) is kept for the other phases")
	fs.BoolVar(&f.anchors, "anchors", true, "run the anchors (false: Lifeboat's figures only)")
	fs.BoolVar(&f.perf, "perf", false, "record perf profiles of the agent and replicator during the initial syncs and the lag loads")
	fs.BoolVar(&f.traceFreeze, "trace-freeze", false, "record the kernel's freeze, sync and journal tracepoints (perf, all CPUs) during the lag loads")
	_ = fs.Parse(args)
	for _, p := range []*string{&f.bin, &f.image, &f.out, &f.results} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	if os.Geteuid() != 0 {
		return errors.New("replbench run needs root (loop devices, mounts, eBPF, drop_caches)")
	}
	want := map[string]bool{}
	for _, p := range strings.Split(f.phases, ",") {
		want[strings.TrimSpace(p)] = true
	}
	sink, err := openSink(f.results)
	if err != nil {
		return err
	}
	defer sink.close()
	u := &undo{}
	defer u.run()
	work, err := freshWork(f.out, u)
	if err != nil {
		return err
	}
	resticEnv = append(resticEnv, "RESTIC_CACHE_DIR="+filepath.Join(work, "restic-cache"))
	b := &bench{f: f, sink: sink, u: u, work: work}
	if err := b.small(ctx, want); err != nil {
		return err
	}
	if want["big"] {
		if err := b.big(ctx); err != nil {
			return err
		}
	}
	return nil
}

type bench struct {
	f    runFlags
	sink *sink
	u    *undo
	work string
}

func (b *bench) path(name string) string { return filepath.Join(b.work, name) }

// anchor times an anchor command (page cache dropped before, sync inside the timing).
func (b *bench) anchor(ctx context.Context, phase, name, data string, rep int, bytes int64, env []string, script string) (float64, error) {
	if !b.f.anchors {
		return 0, nil
	}
	b.quietWait(ctx)
	load := startLoad()
	el, cpu, err := timeShell(ctx, env, script)
	if err != nil {
		return 0, err
	}
	b.sink.add(result{Phase: phase, Name: name, Cmd: script + " && sync", Data: data, Rep: rep, Seconds: el.Seconds(), Bytes: bytes,
		Extra: map[string]float64{"cpuSeconds": cpu.Seconds()}, Load: load})
	return el.Seconds(), nil
}

func (b *bench) quietWait(ctx context.Context) { waitQuiet(ctx, b.f.quiet, 2*time.Minute) }

// startLoad describes the machine when a timed step starts: the load average and how
// busy the CPUs were in the last 3 s (the wait before it measured that).
func startLoad() string { return fmt.Sprintf("%s (CPUs %.0f%% busy)", loadAvg(), 100*lastBusy) }

// resticEnv is restic's environment; its cache lives in the work directory (set by cmdRun).
var resticEnv = []string{"RESTIC_PASSWORD=lifeboat-bench"}

// small runs the phases on the 4 GiB volume.
func (b *bench) small(ctx context.Context, want map[string]bool) error {
	u := b.u
	st, err := os.Stat(b.f.image)
	if err != nil {
		return fmt.Errorf("%w (make it with bench/data.sh)", err)
	}
	size := st.Size()
	data := fmt.Sprintf("%s (%d GiB ext4, mounted)", filepath.Base(b.f.image), size>>30)
	vol := b.path("vol4.img")
	logf("copying %s to %s", b.f.image, vol)
	if _, err := run(ctx, "cp", "--sparse=always", b.f.image, vol); err != nil {
		return err
	}
	lp, err := attachLoop(ctx, u, vol)
	if err != nil {
		return err
	}
	mnt := b.path("mnt4")
	if err := mount(ctx, u, lp.dev, mnt); err != nil {
		return err
	}
	syscall.Sync()
	if want["lag"] {
		if err := b.freezeAnchor(ctx, data, mnt, 30); err != nil {
			return err
		}
	}
	rsyncDst := b.path("rsync4")
	resticRepo := b.path("restic4")
	if err := os.MkdirAll(rsyncDst, 0o755); err != nil {
		return err
	}
	if _, err := run(ctx, "env", append(resticEnv, "restic", "-q", "-r", resticRepo, "init")...); err != nil {
		return err
	}

	// Initial sync: anchors, then Lifeboat.
	if want["initial"] {
		if _, err := b.anchor(ctx, "initial", "cp", data, 0, size, nil, fmt.Sprintf("cp %s %s", vol, b.path("copy.img"))); err != nil {
			return err
		}
		_ = os.Remove(b.path("copy.img"))
		if _, err := b.anchor(ctx, "initial", "dd iflag=direct (read only)", data, 0, size, nil,
			fmt.Sprintf("dd if=%s of=/dev/null bs=1M iflag=direct status=none", lp.dev)); err != nil {
			return err
		}
	}
	// rsync and restic make their first copy here (timed when the initial phase runs).
	if _, err := b.anchor(ctx, "initial", "rsync", data, 0, size, nil, fmt.Sprintf("rsync %s %s/", vol, rsyncDst)); err != nil {
		return err
	}
	if _, err := b.anchor(ctx, "initial", "restic backup --stdin", data, 0, size, resticEnv,
		fmt.Sprintf("restic -q -r %s backup --stdin --stdin-filename vol.img < %s", resticRepo, vol)); err != nil {
		return err
	}

	codecs := strings.Split(b.f.codecs, ",")
	cl, a, err := b.initialSync(ctx, u, "cluster4", "a4", strings.TrimSpace(codecs[0]), lp.dev, data, size)
	if err != nil {
		return err
	}
	if len(codecs) > 1 {
		// The other compressions, each in its own cluster and store, while the main
		// agent is stopped (two agents would freeze the same filesystem); the rescan
		// phase starts it again.
		a.stop()
		for _, codec := range codecs[1:] {
			vu := &undo{}
			_, _, err := b.initialSync(ctx, vu, "cluster4-"+codec, "a4"+codec, strings.TrimSpace(codec), lp.dev, data, size)
			vu.run()
			_ = os.RemoveAll(b.path("cluster4-" + codec))
			if err != nil {
				return err
			}
		}
		if !want["rescan"] {
			if err := a.start(u); err != nil {
				return err
			}
			if _, err := a.waitState(ctx, 10*time.Minute, func(s agent.Status) bool { return s.State == api.StateContinuous }); err != nil {
				return err
			}
		}
	}

	if want["rescan"] {
		if err := b.rescan(ctx, a, data, size, lp.dev, vol, rsyncDst, resticRepo); err != nil {
			return err
		}
	}
	if want["incremental"] {
		if err := b.incremental(ctx, a, "incremental", data, mnt, vol, rsyncDst, resticRepo, 0); err != nil {
			return err
		}
		if err := b.userVisible(ctx, a, data, mnt, vol, rsyncDst, resticRepo); err != nil {
			return err
		}
	}
	if want["lag"] {
		intervals, err := b.intervals()
		if err != nil {
			return err
		}
		for _, bs := range strings.Split(b.f.fioBS, ",") {
			for k, iv := range intervals {
				if err := b.lag(ctx, cl, a, data, mnt, strings.TrimSpace(bs), iv, k == 0); err != nil {
					return err
				}
			}
		}
	}
	a.stop()
	cl.rep.stop()
	cl.cp.stop()
	if want["metadata"] {
		return b.metadata(ctx, lp.dev, data, mnt, size)
	}
	return nil
}

// intervals are the consistency-point intervals of the lag phase (-fio-interval).
func (b *bench) intervals() ([]int, error) {
	var out []int
	for _, f := range strings.Split(b.f.fioIntervals, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-fio-interval %q: want seconds ≥ 1, comma-separated", b.f.fioIntervals)
		}
		out = append(out, n)
	}
	return out, nil
}

// initialSync starts a cluster whose template uses codec, registers an agent for dev
// and times its initial sync: from the agent's start to the first PIT listed.
func (b *bench) initialSync(ctx context.Context, u *undo, dir, name, codec, dev, data string, size int64) (*cluster, *agentProc, error) {
	cl, err := newCluster(ctx, u, b.f.bin, b.path(dir), func(s *api.ReplicationSettings) { s.Compression = codec })
	if err != nil {
		return nil, nil, err
	}
	a, err := cl.installAgent(ctx, name, dev)
	if err != nil {
		return nil, nil, err
	}
	b.quietWait(ctx)
	load := startLoad()
	dropCaches()
	t0 := time.Now()
	if err := a.start(u); err != nil {
		return nil, nil, err
	}
	if b.f.perf {
		stop, err := perfRecord(ctx, filepath.Join(b.f.out, fmt.Sprintf("perf-initial-%s-%s.data", codec, name)), a.p.pid(), cl.rep.pid())
		if err != nil {
			return nil, nil, err
		}
		defer stop()
	}
	pit, seen, err := a.waitPIT(ctx, t0, 30*time.Minute)
	if err != nil {
		return nil, nil, err
	}
	el := seen.Sub(t0)
	s, err := a.statusAfter(ctx, seen)
	if err != nil {
		return nil, nil, err
	}
	stored := duBytes(filepath.Join(cl.dir, "staging"))
	b.sink.add(result{Phase: "initial", Name: "lifeboat", Data: data, Seconds: el.Seconds(), Bytes: size, Load: load,
		Note: fmt.Sprintf("compression %s, tracker %s; PIT %s level %s", codec, s.Tracker, pit.ID, pit.Level),
		Extra: map[string]float64{"sentBytes": float64(s.SentBytes), "sentBlocks": float64(s.SentBlocks), "storedBytes": float64(stored),
			"agentCPUSeconds": cpuTime(a.p.pid()).Seconds(), "replicatorCPUSeconds": cpuTime(cl.rep.pid()).Seconds(),
			"replicatorHWMMiB": float64(memKiB(cl.rep.pid(), "VmHWM")) / 1024, "agentHWMMiB": float64(memKiB(a.p.pid(), "VmHWM")) / 1024}})
	if s.Tracker != "ebpf" {
		return nil, nil, fmt.Errorf("the agent uses the %s tracker (%s), not eBPF: the incremental figures would not be the eBPF tracker's", s.Tracker, s.TrackerReason)
	}
	return cl, a, nil
}

// rescan restarts the agent on the unchanged volume: it reads everything, sends nothing.
func (b *bench) rescan(ctx context.Context, a *agentProc, data string, size int64, dev, vol, rsyncDst, resticRepo string) error {
	before, err := a.status()
	if err != nil {
		return err
	}
	a.stop()
	b.quietWait(ctx)
	load := startLoad()
	dropCaches()
	t0 := time.Now()
	if err := a.start(b.u); err != nil {
		return err
	}
	s, err := a.waitState(ctx, 10*time.Minute, func(s agent.Status) bool {
		return s.Generation > before.Generation && s.UpdatedAt.After(t0) && s.State == api.StateContinuous
	})
	if err != nil {
		return err
	}
	tCont := s.UpdatedAt
	_, seen, err := a.waitPIT(ctx, t0, 10*time.Minute)
	if err != nil {
		return err
	}
	s, err = a.statusAfter(ctx, seen)
	if err != nil {
		return err
	}
	b.sink.add(result{Phase: "rescan", Name: "lifeboat", Data: data, Seconds: seen.Sub(t0).Seconds(), Bytes: size, Load: load,
		Note: "agent restarted on the unchanged volume: a new tracker generation, so it reads every block and sends those the replica lacks",
		Extra: map[string]float64{"sentBytes": float64(s.SentBytes), "sentBlocks": float64(s.SentBlocks), "scanBytes": float64(s.ScanDoneBytes),
			"toContinuousSeconds": tCont.Sub(t0).Seconds(), "agentCPUSeconds": cpuTime(a.p.pid()).Seconds()}})
	if _, err := b.anchor(ctx, "rescan", "dd iflag=direct (read only)", data, 0, size, nil,
		fmt.Sprintf("dd if=%s of=/dev/null bs=1M iflag=direct status=none", dev)); err != nil {
		return err
	}
	if _, err := b.anchor(ctx, "rescan", "rsync --inplace --no-whole-file", data, 0, size, nil,
		fmt.Sprintf("rsync --inplace --no-whole-file %s %s/", vol, rsyncDst)); err != nil {
		return err
	}
	_, err = b.anchor(ctx, "rescan", "restic backup --stdin", data, 0, size, resticEnv,
		fmt.Sprintf("restic -q -r %s backup --stdin --stdin-filename vol.img < %s", resticRepo, vol))
	return err
}

// setInterval sets the consistency-point interval and waits until the agent has read it
// (it reads its config every 5 s).
func setInterval(ctx context.Context, cl *cluster, seconds int) error {
	if err := cl.setTemplate(ctx, func(s *api.ReplicationSettings) { s.ConsistencyPointIntervalSeconds = seconds }); err != nil {
		return err
	}
	sleepCtx(ctx, 6*time.Second)
	return ctx.Err()
}

// incremental runs reps cycles: change 1% of the blocks through the filesystem and
// sync, then wait for the first PIT after it; then rsync and restic on the same change.
// seedBase distinguishes the data (not the places) of the 16 GiB volume's changes.
// The change is a percentage of the image's blocks (the 4 GiB volume), whatever the
// device's size, so both volumes get the same change.
func (b *bench) incremental(ctx context.Context, a *agentProc, phase, data string, mnt, vol, rsyncDst, resticRepo string, seedBase uint64) error {
	if err := setInterval(ctx, a.c, 1); err != nil {
		return err
	}
	logf("listing the file blocks of %s (FIEMAP)", mnt)
	cands, err := candidates(mnt, blockSize)
	if err != nil {
		return err
	}
	n := b.changeBlocks()
	logf("%d candidate blocks; each cycle rewrites %d (%.1f MiB)", len(cands), n, float64(n*blockSize)/(1<<20))
	for rep := 1; rep <= b.f.reps; rep++ {
		if err := b.cycle(ctx, a, phase, data, rep, seedBase+uint64(rep), choose(cands, n, uint64(rep)), false); err != nil {
			return err
		}
		if err := b.incAnchors(ctx, phase, data, rep, n, vol, rsyncDst, resticRepo); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) incAnchors(ctx context.Context, phase, data string, rep, n int, vol, rsyncDst, resticRepo string) error {
	changed := int64(n) * blockSize
	if _, err := b.anchor(ctx, phase, "rsync --inplace --no-whole-file", data, rep, changed, nil,
		fmt.Sprintf("rsync --inplace --no-whole-file %s %s/", vol, rsyncDst)); err != nil {
		return err
	}
	_, err := b.anchor(ctx, phase, "restic backup --stdin", data, rep, changed, resticEnv,
		fmt.Sprintf("restic -q -r %s backup --stdin --stdin-filename vol.img < %s", resticRepo, vol))
	return err
}

// cycle makes one change and times it to the first PIT sealed after it. With request,
// it also asks for a PIT at once (lifeboat snapshots create).
func (b *bench) cycle(ctx context.Context, a *agentProc, phase, data string, rep int, dataSeed uint64, pieces []piece, request bool) error {
	// Let the previous cycle's points pass, and read the counters before.
	sleepCtx(ctx, 3*time.Second)
	before, err := a.statusAfter(ctx, time.Now())
	if err != nil {
		return err
	}
	b.quietWait(ctx)
	load := startLoad()
	dropCaches()
	t0 := time.Now()
	if err := applyChange(pieces, blockSize, dataSeed); err != nil {
		return err
	}
	t1 := time.Now()
	since := t1
	if request {
		req, err := a.c.admin.RequestSnapshot(ctx, a.id)
		if err != nil {
			return err
		}
		if req.RequestedAt.After(since) {
			since = req.RequestedAt
		}
	}
	pit, seen, err := a.waitPIT(ctx, since, 5*time.Minute)
	if err != nil {
		return err
	}
	// Counters once the points after it have passed (nothing else writes).
	sleepCtx(ctx, 3*time.Second)
	after, err := a.statusAfter(ctx, time.Now())
	if err != nil {
		return err
	}
	changed := int64(len(pieces)) * blockSize
	name := "lifeboat"
	note := "consistency point every 1 s; the figure is from the end of write+sync to the first PIT after it listed by the control plane"
	if request {
		name = "lifeboat snapshots create --wait"
		note = "default settings (points every 10 s); a PIT requested through the API right after the sync, as `lifeboat snapshots create --wait`"
	}
	freeze := 0.0
	if after.LastFreezeMs != nil {
		freeze = *after.LastFreezeMs
	}
	b.sink.add(result{Phase: phase, Name: name, Data: data, Rep: rep, Seconds: seen.Sub(t1).Seconds(), Bytes: changed, Load: load, Note: note,
		Extra: map[string]float64{"writeSyncSeconds": t1.Sub(t0).Seconds(), "withWriteSeconds": seen.Sub(t0).Seconds(),
			"waitForPointSeconds": pit.Time.Sub(t1).Seconds(), "pointToListedSeconds": seen.Sub(pit.Time).Seconds(),
			"sentBytes": float64(after.SentBytes - before.SentBytes), "sentBlocks": float64(after.SentBlocks - before.SentBlocks),
			"changedBlocks": float64(len(pieces)), "pitAddedBytes": float64(pit.SizeBytes), "lastFreezeMs": freeze}})
	return nil
}

// userVisible is one cycle with the default settings and a snapshot request, as an
// operator sees `lifeboat snapshots create ID --wait` after a change.
func (b *bench) userVisible(ctx context.Context, a *agentProc, data string, mnt, vol, rsyncDst, resticRepo string) error {
	if err := setInterval(ctx, a.c, 10); err != nil {
		return err
	}
	cands, err := candidates(mnt, blockSize)
	if err != nil {
		return err
	}
	n := b.changeBlocks()
	rep := b.f.reps + 1
	if err := b.cycle(ctx, a, "incremental", data, rep, 100, choose(cands, n, 100), true); err != nil {
		return err
	}
	return b.incAnchors(ctx, "incremental", data, rep, n, vol, rsyncDst, resticRepo)
}

// lag runs a steady 10 MB/s random-write fio load on a file of the mounted volume with
// a consistency point every interval seconds, and samples the agent's reported lag, the
// freeze of every point, the write stall they add up to, the steps of each point (the
// agent's debug log) and the agent's and replicator's CPU time. anchor also times the
// kernel's own freeze under the same load (once per block size).
func (b *bench) lag(ctx context.Context, cl *cluster, a *agentProc, data, mnt, bs string, interval int, anchor bool) error {
	if err := setInterval(ctx, cl, interval); err != nil {
		return err
	}
	fioArgs, fileSize, err := steadyLoad(mnt, bs)
	if err != nil {
		return err
	}
	if anchor {
		if err := b.freezeUnderLoad(ctx, cl, a, data, mnt, "bs="+bs, fioArgs); err != nil {
			return err
		}
	}
	// Let everything drain.
	if _, err := a.waitState(ctx, 5*time.Minute, func(s agent.Status) bool {
		return s.BacklogBytes == 0 && s.LagSeconds != nil && *s.LagSeconds < 2 && time.Since(s.UpdatedAt) < 3*time.Second
	}); err != nil {
		return err
	}
	sleepCtx(ctx, 3*time.Second)
	b.quietWait(ctx)
	load := startLoad()
	smp := startLagSampler(a)
	logOff := fileSizeOf(a.p.log)
	agentCPU0, repCPU0 := cpuTime(a.p.pid()), cpuTime(cl.rep.pid())
	sent0, _ := a.status()
	if b.f.perf {
		stop, err := perfRecord(ctx, filepath.Join(b.f.out, fmt.Sprintf("perf-lag-%s-%ds.data", bs, interval)), a.p.pid(), cl.rep.pid())
		if err != nil {
			return err
		}
		defer stop()
	}
	if b.f.traceFreeze {
		stop, err := perfTrace(ctx, filepath.Join(b.f.out, fmt.Sprintf("trace-lag-%s-%ds.data", bs, interval)))
		if err != nil {
			return err
		}
		defer stop()
	}
	t0 := time.Now()
	fioOut, err := run(ctx, "fio", append(fioArgs, fmt.Sprintf("--runtime=%d", b.f.fioSeconds))...)
	t1 := time.Now()
	agentCPU, repCPU := cpuTime(a.p.pid())-agentCPU0, cpuTime(cl.rep.pid())-repCPU0
	sleepCtx(ctx, 2500*time.Millisecond)
	// Lag samples taken during the load, after its first 5 s.
	lags := smp.stop(t0.Add(5*time.Second), t1)
	if err != nil {
		return err
	}
	sent1, _ := a.status()
	fioBW, fioCPU := fioSummary(fioOut)
	// Freeze of every PIT sealed during the load, from the PIT labels in the store.
	from := t0.Add(5 * time.Second)
	freezes, levels, err := pitFreezes(ctx, cl, a.id, from, t1)
	if err != nil {
		return err
	}
	wall := t1.Sub(t0).Seconds()
	window := t1.Sub(from).Seconds()
	d := fmt.Sprintf("%s; fio randwrite bs=%s direct=1 rate=10m over the %d MiB of an existing file, %d s", data, bs, fileSize>>20, b.f.fioSeconds)
	ex := map[string]float64{
		"lagP50": pct(lags, 50), "lagP99": pct(lags, 99), "lagMax": pct(lags, 100), "lagSamples": float64(len(lags)),
		"freezeP50Ms": pct(freezes, 50), "freezeP99Ms": pct(freezes, 99), "freezeMaxMs": pct(freezes, 100), "points": float64(len(freezes)),
		"pointsNotFilesystem": float64(levels), "agentCPUPercent": 100 * agentCPU.Seconds() / wall, "replicatorCPUPercent": 100 * repCPU.Seconds() / wall,
		"fioMBps": fioBW / 1e6, "fioCPUPercent": fioCPU, "sentMBps": float64(sent1.SentBytes-sent0.SentBytes) / wall / 1e6,
		"intervalSeconds": float64(interval), "pointsPerSecond": float64(len(freezes)+levels) / window,
		"stallFraction": sum(freezes) / 1000 / window,
	}
	for k, v := range pointSteps(a.p.log, logOff, from, t1) {
		ex[k] = v
	}
	b.sink.add(result{Phase: "lag", Name: "lifeboat", Data: d, Seconds: wall, Load: load, Extra: ex,
		Note: "lag: the agent's lagSeconds (time since the replica last matched the source), sampled at each status report (every 2 s); freeze: freezeMicros of every PIT sealed during the load; stall: their sum over the time they were taken in"})
	return nil
}

// steadyLoad is fio's arguments for the lag phase's load, and the size of the file it
// overwrites: the volume's largest file, in place (the volume is nearly full, as
// bench/data.sh makes it): a database-like file of existing data.
func steadyLoad(mnt, bs string) ([]string, int64, error) {
	file, fileSize, err := largestFile(mnt)
	if err != nil {
		return nil, 0, err
	}
	fileSize = fileSize / (1 << 20) * (1 << 20)
	if fileSize < 32<<20 {
		return nil, 0, fmt.Errorf("the largest file on %s (%s) has only %d MiB", mnt, file, fileSize>>20)
	}
	return []string{"--name=steady", "--filename=" + file, fmt.Sprintf("--size=%d", fileSize), "--rw=randwrite", "--bs=" + bs,
		"--direct=1", "--ioengine=psync", "--rate=10m", "--time_based", "--randrepeat=0", "--allow_file_create=0", "--output-format=json"}, fileSize, nil
}

// largestFile returns the largest regular file under root and its size.
func largestFile(root string) (string, int64, error) {
	var best string
	var size int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if info, err := d.Info(); err == nil && info.Size() > size {
			best, size = p, info.Size()
		}
		return nil
	})
	return best, size, err
}

// timeFreezes times n FIFREEZE + FITHAW of the mounted filesystem, gap apart, syncfs
// first as the agent does: what the kernel alone costs for a freeze on this volume.
// With expedite, expedited RCU grace periods are on during the FIFREEZE, as the agent
// has them by default.
func timeFreezes(ctx context.Context, mnt string, n int, gap time.Duration, expedite bool) ([]float64, error) {
	f, err := os.Open(mnt)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const rcu = "/sys/kernel/rcu_expedited"
	old, err := os.ReadFile(rcu)
	if err != nil && expedite {
		return nil, err
	}
	var ms []float64
	for i := 0; i < n && ctx.Err() == nil; i++ {
		if err := unix.Syncfs(int(f.Fd())); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if expedite {
			if err := os.WriteFile(rcu, []byte("1\n"), 0o644); err != nil {
				return nil, err
			}
		}
		_, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), 0xC0045877, 0) // FIFREEZE
		var rerr error
		if expedite {
			rerr = os.WriteFile(rcu, old, 0o644) // back as it was; thaw first if this failed
		}
		if e != 0 {
			return nil, fmt.Errorf("FIFREEZE %s: %w", mnt, e)
		}
		_, _, e = syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), 0xC0045878, 0) // FITHAW
		ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
		if e != 0 {
			return nil, fmt.Errorf("FITHAW %s: %w", mnt, e)
		}
		if rerr != nil {
			return nil, rerr
		}
		sleepCtx(ctx, gap)
	}
	return ms, nil
}

func (b *bench) addFreezeAnchor(name, cmd, data, load string, ms []float64) {
	b.sink.add(result{Phase: "freeze-anchor", Name: name, Cmd: cmd, Data: data, Seconds: pct(ms, 50) / 1000, Load: load,
		Extra: map[string]float64{"p50Ms": pct(ms, 50), "p99Ms": pct(ms, 99), "maxMs": pct(ms, 100), "samples": float64(len(ms))}})
}

func freezeAnchorName(name string, expedite bool) string {
	if expedite {
		return name + ", expedited RCU"
	}
	return name
}

func rcuNote(expedite bool) string {
	if expedite {
		return "; expedited RCU grace periods during FIFREEZE, as the agent does"
	}
	return "; normal RCU grace periods"
}

// freezeAnchor times the kernel's freeze of the idle volume (no agent yet).
func (b *bench) freezeAnchor(ctx context.Context, data, mnt string, n int) error {
	b.quietWait(ctx)
	load := startLoad()
	for _, expedite := range []bool{false, true} {
		ms, err := timeFreezes(ctx, mnt, n, 200*time.Millisecond, expedite)
		if err != nil {
			return err
		}
		b.addFreezeAnchor(freezeAnchorName("FIFREEZE+FITHAW", expedite), "syncfs; then timed: ioctl FIFREEZE; ioctl FITHAW (idle volume, no agent)"+rcuNote(expedite), data, load, ms)
	}
	return nil
}

// freezeUnderLoad times the kernel's freeze under the same fio load, with replication
// paused (so the agent takes no points): what the agent's freezes cannot go below.
func (b *bench) freezeUnderLoad(ctx context.Context, cl *cluster, a *agentProc, data, mnt, bs string, fioArgs []string) error {
	if _, err := cl.admin.ReplicationAction(ctx, a.id, api.ActionPause); err != nil {
		return err
	}
	if _, err := a.waitState(ctx, time.Minute, func(s agent.Status) bool { return s.State == api.StatePaused }); err != nil {
		return err
	}
	b.quietWait(ctx)
	load := startLoad()
	fio := exec.CommandContext(ctx, "fio", append(fioArgs, "--runtime=40")...)
	fio.Stdout, fio.Stderr = nil, nil
	if err := fio.Start(); err != nil {
		return err
	}
	sleepCtx(ctx, 5*time.Second)
	ms, ferr := timeFreezes(ctx, mnt, 15, time.Second, false)
	var mse []float64
	if ferr == nil {
		mse, ferr = timeFreezes(ctx, mnt, 15, time.Second, true)
	}
	werr := fio.Wait()
	if _, err := cl.admin.ReplicationAction(ctx, a.id, api.ActionResume); err != nil {
		return err
	}
	if ferr != nil {
		return ferr
	}
	if werr != nil {
		return fmt.Errorf("fio: %w", werr)
	}
	for k, m := range [][]float64{ms, mse} {
		b.addFreezeAnchor(freezeAnchorName("FIFREEZE+FITHAW under load "+bs, k == 1),
			"syncfs; then timed: ioctl FIFREEZE; ioctl FITHAW, every 1 s during the same fio load, replication paused"+rcuNote(k == 1), data, load, m)
	}
	_, err := a.waitState(ctx, 5*time.Minute, func(s agent.Status) bool {
		return s.State == api.StateContinuous && s.BacklogBytes == 0 && s.LagSeconds != nil && *s.LagSeconds < 2 && time.Since(s.UpdatedAt) < 3*time.Second
	})
	return err
}

// fioSummary returns fio's write bandwidth (bytes/s) and its CPU share (%).
func fioSummary(out string) (float64, float64) {
	i := strings.IndexByte(out, '{')
	if i < 0 {
		return 0, 0
	}
	var r struct {
		Jobs []struct {
			Write struct {
				BW float64 `json:"bw_bytes"`
			} `json:"write"`
			UsrCPU float64 `json:"usr_cpu"`
			SysCPU float64 `json:"sys_cpu"`
		} `json:"jobs"`
	}
	if json.Unmarshal([]byte(out[i:]), &r) != nil || len(r.Jobs) == 0 {
		return 0, 0
	}
	return r.Jobs[0].Write.BW, r.Jobs[0].UsrCPU + r.Jobs[0].SysCPU
}

// pitFreezes reads the freeze duration (ms) of the server's PITs whose points lie in
// [from, to] from their labels in the staging store, and counts those not taken under a
// filesystem freeze.
func pitFreezes(ctx context.Context, cl *cluster, server string, from, to time.Time) ([]float64, int, error) {
	be, err := file.Open(filepath.Join(cl.dir, "staging"))
	if err != nil {
		return nil, 0, err
	}
	defer be.Close()
	mk, err := store.LoadMasterKey(filepath.Join(cl.dir, "cp", "staging.key")) // the control plane's master key opens every store
	if err != nil {
		return nil, 0, err
	}
	repo, err := store.OpenWithoutIndex(ctx, be, mk, store.Options{})
	if err != nil {
		return nil, 0, err
	}
	defer repo.Close()
	pits, err := repo.ListPITs(ctx, server)
	if err != nil {
		return nil, 0, err
	}
	var out []float64
	other := 0
	for _, p := range pits {
		if p.Time.Before(from) || p.Time.After(to) {
			continue
		}
		if p.Level != consistency.Filesystem {
			other++
			continue
		}
		us, err := strconv.ParseFloat(p.Labels["freezeMicros"], 64)
		if err != nil {
			continue
		}
		out = append(out, us/1000)
	}
	return out, other, nil
}

// pct is the p-th percentile (nearest rank) of xs; NaN when empty.
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func duBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// big runs the initial sync and the incremental cycles on a large volume: the image plus
// zeros, with its own control plane, replicator and (empty) staging store, so nothing is
// deduplicated against the 4 GiB volume's data.
func (b *bench) big(ctx context.Context) error {
	u := &undo{}
	defer u.run()
	size := int64(b.f.bigGiB) << 30
	data := fmt.Sprintf("%s plus zeros (%d GiB device, ext4 mounted)", filepath.Base(b.f.image), b.f.bigGiB)
	vol := b.path("vol-big.img")
	if _, err := run(ctx, "cp", "--sparse=always", b.f.image, vol); err != nil {
		return err
	}
	u.push(func() { _ = os.Remove(vol) })
	if err := os.Truncate(vol, size); err != nil {
		return err
	}
	lp, err := attachLoop(ctx, u, vol)
	if err != nil {
		return err
	}
	mnt := b.path("mnt-big")
	if err := mount(ctx, u, lp.dev, mnt); err != nil {
		return err
	}
	syscall.Sync()
	rsyncDst := b.path("rsync-big")
	resticRepo := b.path("restic-big")
	u.push(func() { _ = os.RemoveAll(rsyncDst); _ = os.RemoveAll(resticRepo) })
	if err := os.MkdirAll(rsyncDst, 0o755); err != nil {
		return err
	}
	// rsync's first copy is not timed (a sparse cp makes the same file); restic's is.
	if _, err := run(ctx, "cp", "--sparse=always", vol, filepath.Join(rsyncDst, filepath.Base(vol))); err != nil {
		return err
	}
	if _, err := run(ctx, "env", append(resticEnv, "restic", "-q", "-r", resticRepo, "init")...); err != nil {
		return err
	}
	if _, err := b.anchor(ctx, "initial", "restic backup --stdin", data, 0, size, resticEnv,
		fmt.Sprintf("restic -q -r %s backup --stdin --stdin-filename vol.img < %s", resticRepo, vol)); err != nil {
		return err
	}
	_, a, err := b.initialSync(ctx, u, "cluster-big", "abig", strings.TrimSpace(strings.Split(b.f.codecs, ",")[0]), lp.dev, data, size)
	if err != nil {
		return err
	}
	if err := b.incremental(ctx, a, "incremental", data, mnt, vol, rsyncDst, resticRepo, 1000); err != nil {
		return err
	}
	a.stop()
	return nil
}

// changeBlocks is the number of blocks an incremental cycle rewrites.
func (b *bench) changeBlocks() int {
	st, err := os.Stat(b.f.image)
	if err != nil {
		return 0
	}
	return int(math.Round(float64(st.Size()/blockSize) * b.f.changePct / 100))
}
