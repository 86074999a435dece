package main

// replbench failback measures the way home of issue 14 with the real lifeboat binary as
// separate processes, on loop devices, following TestFailbackCycleOnDevices
// (test/e2e/failback_test.go) step by step:
//
//  1. disk A (the source server): ext4 filled to ~50% with files of system.img, its
//     agent's configuration at /etc/lifeboat/agent.yaml; the agent replicates it, a
//     PIT is taken, the agent stops (the disaster);
//  2. recovery of that PIT onto disk B (the recovery instance), image provider;
//  3. B's agent files copied out (as the instance's service reads them), 5% of the disk
//     written on B in new random files;
//  4. reverse replication: timed to the reversed source server's CONTINUOUS, with the
//     bytes it sent against the disk and against what changed;
//  5. planned failback into A: a marker written on B right before, then `lifeboat
//     failback launch RI --into A --no-start --wait` timed, the job log's counts;
//  6. data lost: every file written on B, and the marker, read back from A;
//  7. re-protection: A's agent, with the configuration and hash table the failback put
//     back on A, to CONTINUOUS, and what it sent;
//  8. the anchor: a full copy of B onto A (dd), and of B's image file (cp), timed alike.
//
// One JSON line per figure; `replbench failback report FILE` renders them.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
)

type fbFlags struct {
	bin, size, results, out, image string
	fill, change, quiet            float64
	rep                            int
}

// fbRun is one failback cycle on disks of one size.
type fbRun struct {
	f          fbFlags
	size       int64
	label      string // "1 GiB"
	data       string // what A holds, for the results
	sink       *sink
	u          *undo
	work       string
	cl         *cluster
	origin     *agentProc
	a, b       *loop
	mntA, mntB *mnt
	pit        api.RecoverySnapshot
	ri         api.RecoveryInstance
	rr         api.ReverseReplication
	revDir     string     // the reversed agent's files, copied out of B
	rev        *agentProc // the reversed agent
	written    []writtenFile
	marker     writtenFile
	changes    map[string]float64 // bytes written on B and by conversion
}

// writtenFile is a file written on the recovery instance: path under B's root, size, sha256.
type writtenFile struct {
	rel  string
	size int64
	sum  string
}

type fbStep struct {
	name    string
	timeout time.Duration
	fn      func(context.Context) error
}

func cmdFailback(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "report" {
		return cmdFailbackReport(args[1:])
	}
	var f fbFlags
	fs := newFlagSet("failback")
	fs.StringVar(&f.bin, "lifeboat", ".cache/lifeboat-bench", "the lifeboat binary")
	fs.StringVar(&f.size, "size", "1G", "size of the disks: 1G, 4G (or e.g. 512M)")
	fs.StringVar(&f.results, "results", "bench/out/failback/results.jsonl", "JSON lines to append to")
	fs.StringVar(&f.out, "out", "bench/out/failback", "work directory (its work-SIZE subdirectory is emptied)")
	fs.StringVar(&f.image, "image", "bench/out/system.img", "the image whose files fill the source disk (bench/data.sh)")
	fs.Float64Var(&f.fill, "fill", 50, "percent of the disk filled with the image's files")
	fs.Float64Var(&f.change, "change", 5, "percent of the disk written on the recovery instance, in new random files")
	fs.IntVar(&f.rep, "rep", 0, "the repetition this run is (recorded with its figures; 0: none)")
	fs.Float64Var(&f.quiet, "quiet", 0.25, "before each timed step, wait (up to 2 min) until the CPUs were less than this busy for 3 s")
	_ = fs.Parse(args)
	for _, p := range []*string{&f.bin, &f.results, &f.out, &f.image} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	if os.Geteuid() != 0 {
		return errors.New("replbench failback needs root (loop devices, mounts, eBPF, drop_caches)")
	}
	size, err := parseSize(f.size)
	if err != nil {
		return err
	}
	sink, err := openSink(f.results)
	if err != nil {
		return err
	}
	defer sink.close()
	u := &undo{}
	defer u.run()
	r := &fbRun{f: f, size: size, label: sizeLabel(size), sink: sink, u: u, changes: map[string]float64{}}
	if err := r.makeWork(); err != nil {
		return err
	}
	return r.runPlan(ctx)
}

// runPlan runs the steps in order, each with its own time limit.
func (r *fbRun) runPlan(ctx context.Context) error {
	steps := []fbStep{
		{"make the source disk A", 20 * time.Minute, r.makeSource},
		{"protect A and take a PIT", 30 * time.Minute, r.protect},
		{"recover the PIT onto disk B", 30 * time.Minute, r.recoverOntoB},
		{"write on the recovery instance", 20 * time.Minute, r.instanceWrites},
		{"reverse replication", 30 * time.Minute, r.reverse},
		{"planned failback into A", 30 * time.Minute, r.failback},
		{"data lost", 20 * time.Minute, r.checkLoss},
		{"re-protection", 30 * time.Minute, r.reprotect},
		{"failback complete", 10 * time.Minute, r.complete},
		{"full-copy anchors", 30 * time.Minute, r.anchors},
	}
	for i, s := range steps {
		logf("failback %s, step %d/%d: %s", r.label, i+1, len(steps), s.name)
		sctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := s.fn(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("failback %s, %s: %w", r.label, s.name, err)
		}
	}
	return nil
}

// makeWork empties the work directory; when the run ends the processes' logs are kept
// in logs-SIZE and the rest (disks, store) is removed.
func (r *fbRun) makeWork() error {
	r.work = filepath.Join(r.f.out, "work-"+strings.ReplaceAll(r.label, " ", ""))
	if err := os.RemoveAll(r.work); err != nil {
		return err
	}
	if err := os.MkdirAll(r.work, 0o755); err != nil {
		return err
	}
	logs := filepath.Join(r.f.out, "logs-"+strings.ReplaceAll(r.label, " ", ""))
	if r.f.rep > 0 {
		logs += fmt.Sprintf("-run%d", r.f.rep)
	}
	r.u.push(func() {
		_ = os.RemoveAll(logs)
		_ = os.MkdirAll(logs, 0o755)
		found, _ := filepath.Glob(filepath.Join(r.work, "cluster", "*.log"))
		for _, p := range found {
			if b, err := os.ReadFile(p); err == nil {
				_ = os.WriteFile(filepath.Join(logs, filepath.Base(p)), b, 0o644)
			}
		}
		_ = os.RemoveAll(r.work)
	})
	return nil
}

func (r *fbRun) path(name string) string { return filepath.Join(r.work, name) }

// add records a figure of this run.
func (r *fbRun) add(x result) {
	x.Rep = r.f.rep
	r.sink.add(x)
}

func (r *fbRun) quietWait(ctx context.Context) { waitQuiet(ctx, r.f.quiet, 2*time.Minute) }

// makeSource makes disk A: ext4, filled from the image, the agent's configuration on it.
func (r *fbRun) makeSource(ctx context.Context) error {
	var err error
	if r.a, err = r.newDisk(ctx, "A.img"); err != nil {
		return err
	}
	if _, err := run(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", r.a.dev); err != nil {
		return err
	}
	if r.mntA, err = mountDir(ctx, r.u, r.a.dev, r.path("mntA")); err != nil {
		return err
	}
	n, bytes, err := fillFromImage(ctx, r.f.image, r.path("image"), r.mntA.dir, int64(float64(r.size)*r.f.fill/100))
	if err != nil {
		return err
	}
	r.data = fmt.Sprintf("%s disk: ext4 holding %d files (%.0f MiB) of %s", r.label, n, float64(bytes)/(1<<20), filepath.Base(r.f.image))
	logf("%s", r.data)
	if r.cl, err = newCluster(ctx, r.u, r.f.bin, r.path("cluster"), nil); err != nil {
		return err
	}
	if r.origin, err = r.cl.installAgent(ctx, "origin", r.a.dev); err != nil {
		return err
	}
	// The agent's configuration lives on the server's root filesystem, as on a real one.
	conf, err := os.ReadFile(r.origin.config)
	if err != nil {
		return err
	}
	etc := filepath.Join(r.mntA.dir, "etc", "lifeboat")
	if err := os.MkdirAll(etc, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(etc, "agent.yaml"), conf, 0o600); err != nil {
		return err
	}
	syscall.Sync()
	return nil
}

// newDisk makes a sparse image file of the run's size and attaches it (direct I/O).
func (r *fbRun) newDisk(ctx context.Context, name string) (*loop, error) {
	p := r.path(name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return nil, err
	}
	if err := os.Truncate(p, r.size); err != nil {
		return nil, err
	}
	return attachLoop(ctx, r.u, p)
}

// protect replicates A to CONTINUOUS, takes a PIT and stops the agent: the disaster.
func (r *fbRun) protect(ctx context.Context) error {
	t0 := time.Now()
	if err := r.origin.start(r.u); err != nil {
		return err
	}
	if _, err := r.origin.waitState(ctx, 25*time.Minute, isContinuous(t0)); err != nil {
		return err
	}
	logf("A replicated (CONTINUOUS) in %.1f s", time.Since(t0).Seconds())
	out, err := r.cl.cli(ctx, "snapshots", "create", r.origin.id, "--wait", "-o", "json")
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), &r.pit); err != nil || r.pit.ID == "" {
		return fmt.Errorf("snapshots create printed %q: %v", out, err)
	}
	logf("PIT %s (%s) at %s", r.pit.ID, r.pit.Level, r.pit.Time.Format(time.RFC3339Nano))
	r.origin.stop()
	return nil
}

func isContinuous(after time.Time) func(agent.Status) bool {
	return func(s agent.Status) bool { return s.State == api.StateContinuous && s.UpdatedAt.After(after) }
}

// recoverOntoB recovers the PIT onto disk B with the image provider, as
// recoverOntoDevice in the e2e test does.
func (r *fbRun) recoverOntoB(ctx context.Context) error {
	var err error
	if r.b, err = r.newDisk(ctx, "B.img"); err != nil {
		return err
	}
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider, ls.ImageTarget = api.ProviderImage, &api.ImageTarget{Devices: []string{r.b.dev}}
	if _, err := r.cl.admin.SetLaunchSettings(ctx, r.origin.id, ls); err != nil {
		return err
	}
	load := startLoad()
	t0 := time.Now()
	out, err := r.cl.cli(ctx, "recover", r.origin.id, "--pit", r.pit.ID, "--wait")
	if err != nil {
		return err
	}
	el := time.Since(t0)
	jobID, _, _ := strings.Cut(out, "\n")
	j, err := r.cl.admin.Job(ctx, strings.TrimSpace(jobID))
	if err != nil || len(j.Servers) != 1 || j.Servers[0].LaunchStatus != api.LaunchLaunched {
		return fmt.Errorf("recovery job %+v (%v)\n%s", j, err, out)
	}
	if r.ri, err = r.cl.admin.RecoveryInstance(ctx, j.Servers[0].RecoveryInstanceID); err != nil {
		return err
	}
	r.add(result{Phase: "failback-recover", Name: "lifeboat recover --wait", Data: r.data, Seconds: el.Seconds(), Bytes: r.size, Load: load,
		Note: fmt.Sprintf("recovery instance %s: PIT %s written onto loop device B (image provider); not a failback figure, the way there", r.ri.ID, r.pit.ID)})
	return nil
}

// instanceWrites copies the reversed agent's files out of B (before mounting it, as the
// e2e test does), mounts B and writes the change: new random files, then sync.
func (r *fbRun) instanceWrites(ctx context.Context) error {
	r.revDir = r.path("reversed")
	files := map[string]string{api.DefaultAgentConfig: "agent.yaml", api.RecoveryInfoFile: "recovery-instance.json",
		api.SeedTableFile(api.ReverseSeedDir, 0): "seed/seed-0.hashes"}
	for in, out := range files {
		if err := debugfsDump(ctx, r.b.dev, in, filepath.Join(r.revDir, out)); err != nil {
			return err
		}
	}
	var err error
	if r.mntB, err = mountDir(ctx, r.u, r.b.dev, r.path("mntB")); err != nil {
		return err
	}
	target := int64(float64(r.size) * r.f.change / 100)
	if r.written, err = writeRandomFiles(ctx, r.mntB.dir, "instance-writes", target, 14); err != nil {
		return err
	}
	syscall.Sync()
	for _, w := range r.written {
		r.changes["writtenBytes"] += float64(w.size)
	}
	r.changes["writtenFiles"] = float64(len(r.written))
	// What conversion changed on B: the agent binary and Lifeboat's own files.
	r.changes["agentBinaryBytes"] = float64(treeBytes(filepath.Join(r.mntB.dir, "usr", "local", "sbin", "lifeboat")))
	r.changes["conversionFilesBytes"] = float64(treeBytes(filepath.Join(r.mntB.dir, "etc", "lifeboat")) +
		treeBytes(filepath.Join(r.mntB.dir, "var", "lib", "lifeboat")))
	logf("wrote %d files (%.1f MiB) on B; conversion installed a %.1f MiB agent binary and %.2f MiB of Lifeboat files",
		len(r.written), r.changes["writtenBytes"]/(1<<20), r.changes["agentBinaryBytes"]/(1<<20), r.changes["conversionFilesBytes"]/(1<<20))
	n, err := differingBlocks(ctx, r.b.dev, filepath.Join(r.revDir, "seed", "seed-0.hashes"))
	if err != nil {
		return err
	}
	r.changes["differingBlocks"] = float64(n)
	logf("%d blocks of B differ from the PIT it was recovered from", n)
	return nil
}

// differingBlocks reads dev (page cache dropped first) and counts its blocks whose
// hash is not the one the seed hash table (the PIT's) has: the blocks reverse
// replication has to send, at least.
func differingBlocks(ctx context.Context, dev, seedFile string) (int64, error) {
	data, err := os.ReadFile(seedFile)
	if err != nil {
		return 0, err
	}
	seed, err := tracker.DecodeHashTable(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", seedFile, err)
	}
	dropCaches()
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bs := seed.BlockSize()
	br := bufio.NewReaderSize(f, 4<<20)
	buf := make([]byte, bs)
	var n int64
	for block := uint64(0); ; block++ {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		k, err := io.ReadFull(br, buf)
		if k > 0 && !seed.Matches(block, xxh3.Hash(buf[:k])) {
			n++
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("read %s: %w", dev, err)
		}
	}
}

// reverse starts the instance's agent, then times `recovery-instances
// reverse-replication` to the reversed source server's CONTINUOUS.
func (r *fbRun) reverse(ctx context.Context) error {
	d := r.revDir
	p, err := startProc("reversed agent", filepath.Join(r.cl.dir, "reversed-agent.log"), nil, r.f.bin, "agent", "run",
		"--config", filepath.Join(d, "agent.yaml"), "--state-dir", filepath.Join(d, "state"),
		"--recovery-info", filepath.Join(d, "recovery-instance.json"), "--reverse-seed-dir", filepath.Join(d, "seed"),
		"--reverse-interval", "1s", "--log-level", "debug")
	if err != nil {
		return err
	}
	r.u.push(p.stop)
	r.rev = &agentProc{c: r.cl, name: "reversed", config: filepath.Join(d, "agent.yaml"), state: filepath.Join(d, "state"), p: p}
	if err := waitLog(ctx, p, "waiting for reversed replication", time.Minute); err != nil {
		return err
	}
	r.quietWait(ctx)
	load := startLoad()
	dropCaches()
	t0 := time.Now()
	out, err := r.cl.cli(ctx, "recovery-instances", "reverse-replication", r.ri.ID, "-o", "json")
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), &r.rr); err != nil || r.rr.SourceServerID == "" {
		return fmt.Errorf("reverse-replication printed %q: %v", out, err)
	}
	r.rev.id = r.rr.SourceServerID
	st, err := r.rev.waitState(ctx, 25*time.Minute, isContinuous(t0))
	if err != nil {
		return err
	}
	tCont := time.Since(t0)
	tReady, err := r.waitFailbackState(ctx, api.FailbackReadyForLaunch, 10*time.Minute)
	if err != nil {
		return err
	}
	// B again, once replicated: blocks that changed after the count above (the
	// filesystem's own writes, a freeze's) are changes the agent had to send too.
	n, err := differingBlocks(ctx, r.b.dev, filepath.Join(r.revDir, "seed", "seed-0.hashes"))
	if err != nil {
		return err
	}
	r.changes["differingBlocksAtContinuous"] = float64(n)
	r.addReverse(st, tCont, tReady.Sub(t0), load)
	return nil
}

func (r *fbRun) addReverse(st agent.Status, tCont, tReady time.Duration, load string) {
	changed := r.changes["writtenBytes"] + r.changes["agentBinaryBytes"] + r.changes["conversionFilesBytes"]
	ex := map[string]float64{"sentBytes": float64(st.SentBytes), "sentBlocks": float64(st.SentBlocks), "sentZeroBlocks": float64(st.SentZeroBlocks),
		"scanBytes": float64(st.ScanDoneBytes), "changedBytes": changed, "readyForLaunchSeconds": tReady.Seconds()}
	for k, v := range r.changes {
		ex[k] = v
	}
	r.add(result{Phase: "failback-reverse", Name: "lifeboat", Data: r.data, Seconds: tCont.Seconds(), Bytes: r.size, Load: load, Extra: ex,
		Cmd: "lifeboat recovery-instances reverse-replication " + r.ri.ID + " -o json",
		Note: fmt.Sprintf("from the command to the reversed source server %s CONTINUOUS (its agent's status file, written within 200 ms of a change, polled every 100 ms; the agent asked for its identity every 1 s, --reverse-interval 1s); tracker %s",
			r.rr.SourceServerID, st.Tracker)})
}

// waitFailbackState polls the recovery instance until its failback state is want; it
// returns when it saw it.
func (r *fbRun) waitFailbackState(ctx context.Context, want string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		ri, err := r.cl.admin.RecoveryInstance(ctx, r.ri.ID)
		if err == nil && ri.FailbackState == want {
			return time.Now(), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Now(), fmt.Errorf("recovery instance %s: failback state %q, not %s, after %s (%v)", r.ri.ID, ri.FailbackState, want, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// failback registers A as the origin's machine and times the planned failback into it;
// a marker is written on B (and synced) right before.
func (r *fbRun) failback(ctx context.Context) error {
	if err := r.mntA.umount(); err != nil {
		return err
	}
	// What A changed itself after the PIT (it stayed mounted, then was unmounted): the
	// failback has to write those blocks back too.
	aChanged, err := differingBlocks(ctx, r.a.dev, filepath.Join(r.revDir, "seed", "seed-0.hashes"))
	if err != nil {
		return err
	}
	out, err := r.cl.cli(ctx, "instances", "add", "--name", "origin", "--disk", r.a.dev, "--tag", "AWSDRS=AllowLaunchingIntoThisInstance")
	if err != nil {
		return err
	}
	inst := strings.TrimSpace(out)
	r.quietWait(ctx)
	load := startLoad()
	dropCaches()
	markerAt := time.Now()
	if r.marker, err = writeFile(r.mntB.dir, "failback-marker", []byte("written just before the failback at "+markerAt.Format(time.RFC3339Nano)+"\n")); err != nil {
		return err
	}
	syscall.Sync()
	t0 := time.Now()
	out, err = r.cl.cli(ctx, "failback", "launch", r.ri.ID, "--into", inst, "--no-start", "--wait")
	el := time.Since(t0)
	if err != nil {
		return err
	}
	logf("failback launch --wait took %.1f s:\n%s", el.Seconds(), out)
	jobID, _, _ := strings.Cut(out, "\n")
	ex, note, err := r.failbackJob(ctx, strings.TrimSpace(jobID), markerAt)
	if err != nil {
		return err
	}
	if _, err := r.waitFailbackState(ctx, api.FailbackCompleted, time.Minute); err != nil {
		return err
	}
	ex["originChangedBlocks"] = float64(aChanged)
	r.add(result{Phase: "failback-launch", Name: "lifeboat", Data: r.data, Seconds: el.Seconds(), Bytes: r.size, Load: load, Extra: ex,
		Cmd: "lifeboat failback launch " + r.ri.ID + " --into " + inst + " --no-start --wait", Note: note})
	return nil
}

// failbackJob reads the FAILBACK job's log: the steps' times, the blocks written and
// already equal, the final point.
func (r *fbRun) failbackJob(ctx context.Context, id string, markerAt time.Time) (map[string]float64, string, error) {
	j, err := r.cl.admin.Job(ctx, id)
	if err != nil {
		return nil, "", err
	}
	ev := map[string]api.JobLogEvent{}
	if _, err := api.EachPage(ctx, "", r.cl.admin.JobLogPages(id), func(e api.JobLogEvent) (bool, error) {
		ev[e.Type] = e
		return false, nil
	}); err != nil {
		return nil, "", err
	}
	span := func(a, b string) float64 {
		ea, oka := ev[a]
		eb, okb := ev[b]
		if !oka || !okb {
			return -1
		}
		return eb.Time.Sub(ea.Time).Seconds()
	}
	ex := map[string]float64{"finalPointSeconds": span(api.EventFinalPointStart, api.EventFinalPointEnd),
		"snapshotSeconds": span(api.EventSnapshotStart, api.EventSnapshotEnd), "conversionSeconds": span(api.EventConversionStart, api.EventConversionEnd),
		"launchSeconds": span(api.EventLaunchStart, api.EventLaunchEnd)}
	if j.EndedAt != nil {
		ex["jobSeconds"] = j.EndedAt.Sub(j.CreatedAt).Seconds()
	}
	snap := ev[api.EventSnapshotEnd]
	for _, k := range []string{"writtenBlocks", "sameBlocks", "zeroBlocks", "writtenBytes", "bytes"} {
		if v, ok := snap.Detail[k].(float64); ok {
			ex[k] = v
		}
	}
	fp := ev[api.EventFinalPointEnd]
	if s, ok := fp.Detail["time"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			ex["markerToPointSeconds"] = t.Sub(markerAt).Seconds()
		}
	}
	if fp.Type == "" || snap.Type == "" {
		return nil, "", fmt.Errorf("job %s logged no %s or %s", id, api.EventFinalPointEnd, api.EventSnapshotEnd)
	}
	return ex, fmt.Sprintf("job %s. FINAL_POINT_END: %s. SNAPSHOT_END: %s", id, fp.Message, snap.Message), nil
}

// checkLoss mounts A read-only and reads back every file written on B and the marker;
// it also compares every file of both filesystems, to list what differs.
func (r *fbRun) checkLoss(ctx context.Context) error {
	m, err := mountDir(ctx, r.u, r.a.dev, r.path("mntA-check"), "-o", "ro")
	if err != nil {
		return err
	}
	var checked, lostBytes int64
	var lost []string
	for _, w := range append(slices.Clone(r.written), r.marker) {
		sum, err := fileSum(filepath.Join(m.dir, w.rel))
		checked += w.size
		if err != nil || sum != w.sum {
			lost = append(lost, w.rel)
			lostBytes += w.size
		}
	}
	onB, err := treeHashes(ctx, r.mntB.dir)
	if err != nil {
		return err
	}
	onA, err := treeHashes(ctx, m.dir)
	if err != nil {
		return err
	}
	if err := m.umount(); err != nil {
		return err
	}
	differ := diffTrees(onB, onA)
	r.add(result{Phase: "failback-loss", Name: "lifeboat", Data: r.data, Bytes: r.size, Load: loadAvg(),
		Extra: map[string]float64{"filesChecked": float64(len(r.written) + 1), "bytesChecked": float64(checked), "filesLost": float64(len(lost)),
			"bytesLost": float64(lostBytes), "treeFilesB": float64(len(onB)), "treeFilesA": float64(len(onA)), "treeDiffer": float64(len(differ))},
		Note: fmt.Sprintf("lost: [%s]; files of B and A that differ after the failback (absent on one side, or other content): [%s]",
			strings.Join(lost, " "), strings.Join(differ, " "))})
	if len(lost) > 0 {
		logf("DATA LOST: %d files (%d bytes) written on B are not on A as written: %v", len(lost), lostBytes, lost)
	}
	return nil
}

// diffTrees lists the paths whose content differs between a and b (or exist in one only).
func diffTrees(a, b map[string]string) []string {
	var out []string
	for p, h := range a {
		if b[p] != h {
			out = append(out, p)
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// reprotect stops the instance's agent and runs the origin's, with the configuration and
// hash table the failback put on A, on A mounted as the booted machine has it.
func (r *fbRun) reprotect(ctx context.Context) error {
	r.rev.stop()
	dir := r.path("origin-back")
	table := "hashes-" + filepath.Base(r.a.dev)
	if err := debugfsDump(ctx, r.a.dev, api.DefaultAgentConfig, filepath.Join(dir, "agent.yaml")); err != nil {
		return err
	}
	if err := debugfsDump(ctx, r.a.dev, "/var/lib/lifeboat/agent/"+table, filepath.Join(dir, "state", table)); err != nil {
		return err
	}
	m, err := mountDir(ctx, r.u, r.a.dev, r.path("mntA-back"))
	if err != nil {
		return err
	}
	back := &agentProc{c: r.cl, name: "origin-back", id: r.origin.id, config: filepath.Join(dir, "agent.yaml"), state: filepath.Join(dir, "state")}
	r.quietWait(ctx)
	load := startLoad()
	dropCaches()
	t0 := time.Now()
	if err := back.start(r.u); err != nil {
		return err
	}
	st, err := back.waitState(ctx, 25*time.Minute, isContinuous(t0))
	if err != nil {
		return err
	}
	el := time.Since(t0)
	note, err := r.afterReprotect(ctx)
	if err != nil {
		return err
	}
	back.stop()
	r.add(result{Phase: "failback-reprotect", Name: "lifeboat", Data: r.data, Seconds: el.Seconds(), Bytes: r.size, Load: load,
		Extra: map[string]float64{"sentBytes": float64(st.SentBytes), "sentBlocks": float64(st.SentBlocks), "sentZeroBlocks": float64(st.SentZeroBlocks),
			"scanBytes": float64(st.ScanDoneBytes)},
		Note: "the origin's agent started on A (mounted read-write) with the configuration and hash table the failback put there, to CONTINUOUS (its status file); " + note})
	return m.umount()
}

// afterReprotect takes a PIT of the re-protected origin and checks that its PIT from
// before the disaster is still listed.
func (r *fbRun) afterReprotect(ctx context.Context) (string, error) {
	out, err := r.cl.cli(ctx, "snapshots", "create", r.origin.id, "--wait", "-o", "json")
	if err != nil {
		return "", err
	}
	var p api.RecoverySnapshot
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return "", fmt.Errorf("snapshots create printed %q: %w", out, err)
	}
	page, err := r.cl.admin.RecoverySnapshots(ctx, r.origin.id, 1000, "")
	if err != nil {
		return "", err
	}
	kept := slices.ContainsFunc(page.Items, func(x api.RecoverySnapshot) bool { return x.ID == r.pit.ID })
	return fmt.Sprintf("new PIT %s (%s); the PIT from before the disaster (%s) still listed: %v", p.ID, p.Level, r.pit.ID, kept), nil
}

// complete runs `lifeboat failback complete --wait` (the reversed agent is stopped).
func (r *fbRun) complete(ctx context.Context) error {
	t0 := time.Now()
	_, err := r.cl.cli(ctx, "failback", "complete", r.ri.ID, "--wait")
	note := "completed"
	if err != nil {
		note = "FAILED: " + err.Error()
		logf("failback complete: %v", err)
	}
	left, lerr := r.cl.admin.RecoveryInstances(ctx, api.RecoveryInstanceFilter{})
	note += fmt.Sprintf("; recovery instances left: %d (%v)", len(left.Items), lerr)
	r.add(result{Phase: "failback-complete", Name: "lifeboat failback complete --wait", Data: r.data, Seconds: time.Since(t0).Seconds(),
		Bytes: r.size, Load: loadAvg(), Note: note})
	return nil
}

// anchors time the naive failback: a full copy of B onto A, and of B's image file.
func (r *fbRun) anchors(ctx context.Context) error {
	if err := r.mntB.umount(); err != nil {
		return err
	}
	copyFile := r.path("copy.img")
	for _, a := range []struct{ name, script string }{
		{"dd", fmt.Sprintf("dd if=%s of=%s bs=4M oflag=direct conv=fsync status=none", r.b.dev, r.a.dev)},
		{"cp --sparse=never", fmt.Sprintf("cp --sparse=never %s %s", r.b.file, copyFile)},
	} {
		r.quietWait(ctx)
		load := startLoad()
		el, cpu, err := timeShell(ctx, nil, a.script)
		if err != nil {
			return err
		}
		r.add(result{Phase: "failback-anchor", Name: a.name, Cmd: a.script + " && sync", Data: r.data, Seconds: el.Seconds(), Bytes: r.size,
			Load: load, Extra: map[string]float64{"cpuSeconds": cpu.Seconds()}})
	}
	return os.Remove(copyFile)
}

// ---- helpers

// cli runs a lifeboat command against the control plane and returns its stdout.
func (c *cluster) cli(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(os.Environ(), c.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("lifeboat %s: %w: %s", strings.Join(args, " "), err, lastLines(stderr.String()+stdout.String(), 15))
	}
	return stdout.String(), nil
}

// mnt is a filesystem this program mounted; umount is idempotent and runs at the end
// of the run if it was not called before.
type mnt struct {
	dir     string
	mounted bool
}

func mountDir(ctx context.Context, u *undo, dev, dir string, opts ...string) (*mnt, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "mount", append(opts, dev, dir)...); err != nil {
		return nil, err
	}
	m := &mnt{dir: dir, mounted: true}
	u.push(func() {
		if err := m.umount(); err != nil {
			logf("%v", err)
		}
	})
	return m, nil
}

func (m *mnt) umount() error {
	if !m.mounted {
		return nil
	}
	var err error
	for i := 0; i < 20; i++ {
		if _, err = run(context.Background(), "umount", m.dir); err == nil {
			m.mounted = false
			_ = os.Remove(m.dir)
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("umount %s: %w", m.dir, err)
}

// fillFromImage copies regular files of the image (mounted read-only, in path order,
// leaving out those larger than what is left) to dst, up to budget bytes; it returns
// how many files and bytes.
func fillFromImage(ctx context.Context, image, mntDir, dst string, budget int64) (int, int64, error) {
	u := &undo{}
	defer u.run()
	src, err := mountDir(ctx, u, image, mntDir, "-o", "loop,ro,noload")
	if err != nil {
		return 0, 0, fmt.Errorf("%w (make the image with bench/data.sh)", err)
	}
	var list []string
	var total int64
	full := errors.New("full")
	err = filepath.WalkDir(src.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if total+info.Size() > budget {
			if total > budget-budget/100 {
				return full
			}
			return nil // too large for what is left: smaller files follow
		}
		total += info.Size()
		rel, _ := filepath.Rel(src.dir, p)
		list = append(list, rel)
		return nil
	})
	if err != nil && !errors.Is(err, full) {
		return 0, 0, err
	}
	listFile := mntDir + ".list"
	if err := os.WriteFile(listFile, []byte(strings.Join(list, "\n")+"\n"), 0o644); err != nil {
		return 0, 0, err
	}
	defer os.Remove(listFile)
	script := fmt.Sprintf("set -o pipefail; tar -C %s -cf - --verbatim-files-from -T %s | tar -C %s -xf -", src.dir, listFile, dst)
	if _, err := run(ctx, "bash", "-c", script); err != nil {
		return 0, 0, err
	}
	syscall.Sync()
	return len(list), total, src.umount()
}

// writeRandomFiles writes new files of random bytes (1 to 8 MiB each) under root/dir
// until total bytes.
func writeRandomFiles(ctx context.Context, root, dir string, total int64, seed uint64) ([]writtenFile, error) {
	rng := rand.New(rand.NewPCG(seed, 1))
	src := rand.NewChaCha8([32]byte{byte(seed), 'f', 'b'})
	var out []writtenFile
	buf := make([]byte, 8<<20)
	for n, i := int64(0), 0; n < total; i++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		size := min(int64(1<<20+rng.IntN(7<<20)), total-n)
		b := buf[:size]
		_, _ = src.Read(b)
		w, err := writeFile(root, filepath.Join(dir, fmt.Sprintf("d%02d", i%10), fmt.Sprintf("f%04d", i)), b)
		if err != nil {
			return out, err
		}
		out = append(out, w)
		n += size
	}
	return out, nil
}

// writeFile writes a new file (and its directories) under root and returns its sum.
func writeFile(root, rel string, b []byte) (writtenFile, error) {
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return writtenFile{}, err
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return writtenFile{}, err
	}
	sum := sha256.Sum256(b)
	return writtenFile{rel: rel, size: int64(len(b)), sum: hex.EncodeToString(sum[:])}, nil
}

func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// treeHashes returns the sha256 of every regular file under root (lost+found left out).
func treeHashes(ctx context.Context, root string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.Name() == "lost+found" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		sum, err := fileSum(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = sum
		return nil
	})
	return out, err
}

// treeBytes is the size of the regular files under p (or of the file p); 0 if absent.
func treeBytes(p string) int64 {
	var n int64
	_ = filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// debugfsDump copies a file out of the ext4 filesystem on dev (not mounted) to local.
// debugfs exits 0 when a command fails: anything on its stderr but its banner is an error.
func debugfsDump(ctx context.Context, dev, p, local string) error {
	if err := os.MkdirAll(filepath.Dir(local), 0o700); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "debugfs", "-R", fmt.Sprintf("dump %q %q", p, local), dev)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	for _, line := range strings.Split(stderr.String(), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !(strings.HasPrefix(line, "debugfs ") && strings.HasSuffix(line, ")")) {
			return fmt.Errorf("debugfs dump %s from %s: %v: %s", p, dev, err, line)
		}
	}
	if err != nil {
		return fmt.Errorf("debugfs dump %s from %s: %w", p, dev, err)
	}
	if _, err := os.Stat(local); err != nil {
		return fmt.Errorf("debugfs dump %s from %s: %w", p, dev, err)
	}
	return os.Chmod(local, 0o600)
}

// waitLog waits until a process's log holds text.
func waitLog(ctx context.Context, p *proc, text string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if b, _ := os.ReadFile(p.log); strings.Contains(string(b), text) {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("%s exited before saying %q:\n%s", p.name, text, p.tail(20))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not say %q within %s (%w):\n%s", p.name, text, timeout, errTimeout, p.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// parseSize reads 1G, 4G, 512M (binary units).
func parseSize(s string) (int64, error) {
	s = strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n*mult < 64<<20 {
		return 0, fmt.Errorf("-size %q: give 1G, 4G or a size of at least 64M", s)
	}
	return n * mult, nil
}

func sizeLabel(n int64) string {
	if n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// ---- report

// cmdFailbackReport prints the failback results as markdown: a column per run (disk
// size and repetition), then the goals with the median of the runs of each size.
func cmdFailbackReport(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: replbench failback report results.jsonl")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var rs []result
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var x result
		if err := json.Unmarshal([]byte(line), &x); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		rs = append(rs, x)
	}
	fr := &fbReport{rs: rs}
	for _, x := range rs {
		c := fbCol{size: x.Bytes, rep: x.Rep}
		if strings.HasPrefix(x.Phase, "failback-") && !slices.Contains(fr.cols, c) {
			fr.cols = append(fr.cols, c)
		}
	}
	slices.SortFunc(fr.cols, func(a, b fbCol) int {
		if a.size != b.size {
			return int((a.size - b.size) >> 20)
		}
		return a.rep - b.rep
	})
	fr.write(os.Stdout)
	return nil
}

// fbCol is one run: a disk size and a repetition.
type fbCol struct {
	size int64
	rep  int
}

func (c fbCol) label() string {
	if c.rep == 0 {
		return sizeLabel(c.size)
	}
	return fmt.Sprintf("%s, run %d", sizeLabel(c.size), c.rep)
}

type fbReport struct {
	rs   []result
	cols []fbCol
}

// get is the last result of phase (and name, if given) of a run.
func (fr *fbReport) get(c fbCol, phase, name string) (result, bool) {
	for i := len(fr.rs) - 1; i >= 0; i-- {
		x := fr.rs[i]
		if x.Bytes == c.size && x.Rep == c.rep && x.Phase == phase && (name == "" || x.Name == name) {
			return x, true
		}
	}
	return result{}, false
}

// ex is a figure of a run's result ("seconds": its time), NaN when absent.
func (fr *fbReport) ex(c fbCol, phase, name, key string) float64 {
	x, ok := fr.get(c, phase, name)
	if !ok {
		return math.NaN()
	}
	if key == "seconds" {
		return x.Seconds
	}
	return get(x.Extra, key)
}

// row prints a table row: a label, then cell(run) for each run.
func (fr *fbReport) row(w io.Writer, label string, cell func(c fbCol) string) {
	fmt.Fprintf(w, "| %s |", label)
	for _, c := range fr.cols {
		fmt.Fprintf(w, " %s |", cell(c))
	}
	fmt.Fprintln(w)
}

func (fr *fbReport) write(w io.Writer) {
	head, sep := "| |", "|---|"
	for _, c := range fr.cols {
		head += " " + c.label() + " |"
		sep += "---:|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, sep)
	fr.reverseRows(w)
	fr.failbackRows(w)
	fr.afterRows(w)
	fmt.Fprintln(w)
	fr.goals(w)
	fr.notes(w)
}

func (fr *fbReport) reverseRows(w io.Writer) {
	rv := func(c fbCol, k string) float64 { return fr.ex(c, "failback-reverse", "", k) }
	fr.row(w, "source disk A", func(c fbCol) string {
		x, _ := fr.get(c, "failback-reverse", "")
		_, d, _ := strings.Cut(x.Data, ": ")
		return d
	})
	fr.row(w, "written on the recovery instance B since recovery (new random files)", func(c fbCol) string {
		return fmt.Sprintf("%s MiB (%s files)", mib(rv(c, "writtenBytes")), n0(rv(c, "writtenFiles")))
	})
	fr.row(w, "changed by recovery's conversion (agent binary + Lifeboat's files)", func(c fbCol) string {
		return fmt.Sprintf("%s + %s MiB", mib(rv(c, "agentBinaryBytes")), fx(rv(c, "conversionFilesBytes")/(1<<20), 2))
	})
	fr.row(w, "64 KiB blocks of B that differ from the PIT it was recovered from (B read, against the seed hash table)", func(c fbCol) string {
		return fmt.Sprintf("%s (%s MiB)", n0(rv(c, "differingBlocks")), mib(rv(c, "differingBlocks")*blockSize))
	})
	fr.row(w, "**reverse replication sent** (raw bytes of blocks; all-zero blocks among them)", func(c fbCol) string {
		return fmt.Sprintf("**%s MiB** (%s blocks; %s zero)", mib(rv(c, "sentBytes")), n0(rv(c, "sentBlocks")), n0(rv(c, "sentZeroBlocks")))
	})
	fr.row(w, "sent / disk size", func(c fbCol) string { return fx(100*rv(c, "sentBytes")/float64(c.size), 1) + "%" })
	fr.row(w, "**sent / changed bytes** (written + conversion)", func(c fbCol) string {
		return "**" + fx(rv(c, "sentBytes")/rv(c, "changedBytes"), 2) + "×**"
	})
	fr.row(w, "the same count once reverse replication was CONTINUOUS (B read again)", func(c fbCol) string {
		return fmt.Sprintf("%s (%s MiB)", n0(rv(c, "differingBlocksAtContinuous")), mib(rv(c, "differingBlocksAtContinuous")*blockSize))
	})
	fr.row(w, "sent blocks / differing blocks (before; at CONTINUOUS)", func(c fbCol) string {
		return fmt.Sprintf("%s×; %s×", fx(rv(c, "sentBlocks")/rv(c, "differingBlocks"), 3), fx(rv(c, "sentBlocks")/rv(c, "differingBlocksAtContinuous"), 3))
	})
	fr.row(w, "`reverse-replication` → reversed server CONTINUOUS / → READY_FOR_LAUNCH", func(c fbCol) string {
		return fmt.Sprintf("%s s / %s s (read %s MiB)", fx(rv(c, "seconds"), 1), fx(rv(c, "readyForLaunchSeconds"), 1), mib(rv(c, "scanBytes")))
	})
}

func (fr *fbReport) failbackRows(w io.Writer) {
	fl := func(c fbCol, k string) float64 { return fr.ex(c, "failback-launch", "", k) }
	an := func(c fbCol, name string) float64 { return fr.ex(c, "failback-anchor", name, "seconds") }
	fr.row(w, "**planned failback**: `failback launch --into A --no-start --wait`", func(c fbCol) string {
		return fmt.Sprintf("**%s s** (job %s s)", fx(fl(c, "seconds"), 1), fx(fl(c, "jobSeconds"), 1))
	})
	fr.row(w, "job steps: final point / write (SNAPSHOT) / conversion / launch", func(c fbCol) string {
		return fmt.Sprintf("%s / %s / %s / %s s", fx(fl(c, "finalPointSeconds"), 1), fx(fl(c, "snapshotSeconds"), 1),
			fx(fl(c, "conversionSeconds"), 1), fx(fl(c, "launchSeconds"), 1))
	})
	fr.row(w, "full copy B → A: `dd bs=4M oflag=direct conv=fsync` / `cp --sparse=never` of B's image", func(c fbCol) string {
		return fmt.Sprintf("%s s / %s s", fx(an(c, "dd"), 1), fx(an(c, "cp --sparse=never"), 1))
	})
	fr.row(w, "**failback time / full copy time** (dd; cp)", func(c fbCol) string {
		return fmt.Sprintf("**%s×**; %s× (the job alone: %s×)", fx(fl(c, "seconds")/an(c, "dd"), 2), fx(fl(c, "seconds")/an(c, "cp --sparse=never"), 2),
			fx(fl(c, "jobSeconds")/an(c, "dd"), 2))
	})
	fr.row(w, "reverse replication + failback launch / `dd`", func(c fbCol) string {
		return fx((fr.ex(c, "failback-reverse", "", "seconds")+fl(c, "seconds"))/an(c, "dd"), 2) + "×"
	})
	fr.row(w, "blocks written / already equal (of the disk's 64 KiB blocks)", func(c fbCol) string {
		return fmt.Sprintf("%s / %s (of %d); %s MiB written", n0(fl(c, "writtenBlocks")), n0(fl(c, "sameBlocks")), c.size/blockSize, mib(fl(c, "writtenBytes")))
	})
	fr.row(w, "blocks of A that differ from the PIT when the failback starts (A changed them itself after the PIT)", func(c fbCol) string {
		return n0(fl(c, "originChangedBlocks"))
	})
	fr.row(w, "marker written on B → final consistency point", func(c fbCol) string { return fx(fl(c, "markerToPointSeconds"), 2) + " s" })
}

func (fr *fbReport) afterRows(w io.Writer) {
	lo := func(c fbCol, k string) float64 { return fr.ex(c, "failback-loss", "", k) }
	rp := func(c fbCol, k string) float64 { return fr.ex(c, "failback-reprotect", "", k) }
	fr.row(w, "**data lost** by the planned failback (files written on B + marker, read back from A)", func(c fbCol) string {
		return fmt.Sprintf("**%s bytes** of %s MiB checked (%s of %s files lost)", n0(lo(c, "bytesLost")), mib(lo(c, "bytesChecked")), n0(lo(c, "filesLost")), n0(lo(c, "filesChecked")))
	})
	fr.row(w, "files of B and A that differ after the failback (all files compared)", func(c fbCol) string {
		return fmt.Sprintf("%s of %s", n0(lo(c, "treeDiffer")), n0(lo(c, "treeFilesB")))
	})
	fr.row(w, "**re-protection**: the origin's agent sent, to CONTINUOUS", func(c fbCol) string {
		return fmt.Sprintf("**%s MiB** (%s blocks) in %s s, read %s MiB", mib(rp(c, "sentBytes")), n0(rp(c, "sentBlocks")), fx(rp(c, "seconds"), 1), mib(rp(c, "scanBytes")))
	})
	fr.row(w, "(for reference) `recover --wait` onto B", func(c fbCol) string { return fx(fr.ex(c, "failback-recover", "", "seconds"), 1) + " s" })
}

// goals prints, per disk size, the median (and range) of the runs' figures.
func (fr *fbReport) goals(w io.Writer) {
	fmt.Fprintln(w, "| goal (issue 14) | measured: median (range) of the runs | |")
	fmt.Fprintln(w, "|---|---|---|")
	var sizes []int64
	for _, c := range fr.cols {
		if !slices.Contains(sizes, c.size) {
			sizes = append(sizes, c.size)
		}
	}
	for _, s := range sizes {
		f := func(prec int, fn func(c fbCol) float64) ([]float64, string) {
			var xs []float64
			for _, c := range fr.cols {
				if v := fn(c); c.size == s && !math.IsNaN(v) {
					xs = append(xs, v)
				}
			}
			switch len(xs) {
			case 0:
				return []float64{math.NaN()}, "–"
			case 1:
				return xs, fx(xs[0], prec)
			}
			return xs, fmt.Sprintf("%s (%s–%s, %d runs)", fx(median(xs), prec), fx(slices.Min(xs), prec), fx(slices.Max(xs), prec), len(xs))
		}
		l := sizeLabel(s)
		ratio, rt := f(2, func(c fbCol) float64 {
			return fr.ex(c, "failback-reverse", "", "sentBytes") / fr.ex(c, "failback-reverse", "", "changedBytes")
		})
		_, dt := f(1, func(c fbCol) float64 { return 100 * fr.ex(c, "failback-reverse", "", "sentBytes") / float64(c.size) })
		fmt.Fprintf(w, "| %s: reverse replication sends the changes only | %s× the changed bytes; %s%% of the disk | %s |\n", l, rt, dt, metText(median(ratio) <= 1.25))
		lost, lt := f(0, func(c fbCol) float64 { return fr.ex(c, "failback-loss", "", "bytesLost") })
		fmt.Fprintf(w, "| %s: a planned failback loses nothing | %s bytes lost | %s |\n", l, lt, metText(slices.Max(lost) == 0))
		_, ft := f(1, func(c fbCol) float64 { return fr.ex(c, "failback-launch", "", "seconds") })
		_, ddt := f(1, func(c fbCol) float64 { return fr.ex(c, "failback-anchor", "dd", "seconds") })
		_, rat := f(2, func(c fbCol) float64 {
			return fr.ex(c, "failback-launch", "", "seconds") / fr.ex(c, "failback-anchor", "dd", "seconds")
		})
		fmt.Fprintf(w, "| %s: failback time against a full copy of the disk (no goal set) | %s s against `dd` %s s: %s× | – |\n", l, ft, ddt, rat)
		_, rpt := f(1, func(c fbCol) float64 { return fr.ex(c, "failback-reprotect", "", "sentBytes") / (1 << 20) })
		fmt.Fprintf(w, "| %s: re-protection sends ~nothing | %s MiB | – |\n", l, rpt)
	}
	fmt.Fprintln(w)
}

func n0(v float64) string { return fx(v, 0) }

func metText(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func (fr *fbReport) notes(w io.Writer) {
	for _, c := range fr.cols {
		fmt.Fprintf(w, "**%s**:\n\n", c.label())
		for _, ph := range []string{"failback-reverse", "failback-launch", "failback-anchor", "failback-loss", "failback-reprotect", "failback-complete", "failback-recover"} {
			for _, x := range fr.rs {
				if x.Bytes != c.size || x.Rep != c.rep || x.Phase != ph {
					continue
				}
				var parts []string
				if x.Cmd != "" {
					parts = append(parts, "`"+x.Cmd+"`")
				}
				if x.Note != "" {
					parts = append(parts, x.Note)
				}
				parts = append(parts, "load at start: "+x.Load)
				fmt.Fprintf(w, "- %s (%s): %s.\n", strings.TrimPrefix(ph, "failback-"), x.Name, strings.Join(parts, "; "))
			}
		}
		fmt.Fprintln(w)
	}
}
