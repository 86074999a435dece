package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// A fleet run (issue 19): several replicators of one site share one staging store (a
// directory, or a bucket on versitygw), the control plane spreads the agents over them,
// and one of them may be killed with SIGKILL mid-window. The control plane moves a lost
// replicator's servers to the site's other live replicators once it has not beaten for
// the control plane's replicator timeout; its agents find out as the real agent does
// (simagent.go). Measured across the whole window, kill included:
//
//   - ack latency (written → acknowledged), of every agent and of the steady part
//     (every ack but those of the killed replicator's agents after the kill);
//   - lag, every second: each agent's oldest unacknowledged write's age;
//   - per agent of the killed replicator, resume time: kill → first Ack from another
//     replicator; and whether a new session asked for every block again (a Welcome
//     whose replica does not exist or must be rescanned), which would be a full resync;
//   - at the end, with the writers and replicators stopped, `lifeboat store verify
//     --read-data` on the staging store.

// window is what the measurement saw.
type window struct {
	wall            float64
	load            string
	rss             []float64 // MiB, of every live replicator each second
	rssMax, hwm     int64     // KiB, of the largest
	repCPU, selfCPU time.Duration
	lag, lagSteady  []float64 // ms; steady: not an agent of the killed replicator after the kill
	kill            *killEvent
	reassign        []float64 // s, kill → the control plane's assignment of each moved agent elsewhere
	verify          verifyResult
}

type killEvent struct {
	name, addr string
	at         time.Duration // into the window
	when       time.Time
	agents     int
}

type verifyResult struct {
	ran, clean bool
	seconds    float64
	summary    string
}

// startSimCluster starts the store (S3: versitygw), the control plane and the replicators.
func startSimCluster(ctx context.Context, u *undo, f *simFlags) (*cluster, error) {
	dir := filepath.Join(f.out, fmt.Sprintf("sim-%d-%s", f.agents, f.mode))
	_ = os.RemoveAll(dir)
	u.push(func() { _ = os.RemoveAll(dir) })
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	opts := clusterOptions{replicators: f.replicators, serverArgs: strings.Fields(f.serverArgs), replicatorArgs: strings.Fields(f.replicatorArgs)}
	if f.store == "s3" {
		s3, err := startS3(u, dir, f.versitygw)
		if err != nil {
			return nil, err
		}
		opts.storeURL, opts.storeEnv = s3.url, s3.env
		logf("staging store %s", s3.url)
	}
	return newClusterWith(ctx, u, f.bin, dir, opts)
}

// measure samples the replicators and the agents' lag every second for the window, and
// kills a replicator when -kill-after says.
func measure(ctx context.Context, cl *cluster, agents []*simAgent, f *simFlags, st *simState) *window {
	w := &window{load: loadAvg()}
	cpu0 := make([]time.Duration, len(cl.reps))
	cpu := make([]time.Duration, len(cl.reps))
	for i, p := range cl.reps {
		cpu0[i] = cpuTime(p.pid())
	}
	self0 := cpuTime(os.Getpid())
	st.measuring.Store(true)
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(start) < f.duration && ctx.Err() == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
		if f.killAfter > 0 && w.kill == nil && time.Since(start) >= f.killAfter {
			w.kill = killOne(cl, agents, time.Since(start))
		}
		w.sampleLag(agents)
		for i, p := range cl.reps {
			if !p.running() {
				continue
			}
			r := memKiB(p.pid(), "VmRSS")
			if f.heap != "" && r > w.rssMax*6/5 {
				writeHeap(f.heap + ".peak") // the heap at the highest RSS so far
			}
			w.rssMax = max(w.rssMax, r)
			w.rss = append(w.rss, float64(r)/1024)
			cpu[i] = max(cpu[i], cpuTime(p.pid()))
		}
	}
	if f.heap != "" {
		runtime.GC()
		writeHeap(f.heap)
	}
	st.measuring.Store(false)
	w.wall = time.Since(start).Seconds()
	w.selfCPU = cpuTime(os.Getpid()) - self0
	for i, p := range cl.reps {
		if p.running() {
			w.hwm = max(w.hwm, memKiB(p.pid(), "VmHWM"))
		}
		w.repCPU += max(cpu[i]-cpu0[i], 0)
	}
	return w
}

func writeHeap(path string) {
	if hf, err := os.Create(path); err == nil {
		_ = pprof.WriteHeapProfile(hf)
		hf.Close()
	}
}

// sampleLag records each agent's oldest unacknowledged write's age.
func (w *window) sampleLag(agents []*simAgent) {
	now := time.Now()
	for _, a := range agents {
		a.mu.Lock()
		age := 0.0
		if len(a.pending) > 0 {
			age = float64(now.Sub(a.pending[0].at).Microseconds()) / 1000
		}
		moved := a.movedFrom != ""
		a.mu.Unlock()
		w.lag = append(w.lag, age)
		if !moved {
			w.lagSteady = append(w.lagSteady, age)
		}
	}
}

// killOne marks the agents of a replicator chosen at random as moved and kills it
// with SIGKILL, by its pid.
func killOne(cl *cluster, agents []*simAgent, at time.Duration) *killEvent {
	i := rand.IntN(len(cl.reps))
	p, addr := cl.reps[i], cl.addrs[i]
	k := &killEvent{name: p.name, addr: addr, at: at, when: time.Now()}
	for _, a := range agents {
		a.mu.Lock()
		if a.rep != nil && a.rep.Address == addr {
			a.movedFrom, a.killAt = addr, k.when
			k.agents++
		}
		a.mu.Unlock()
	}
	if err := p.cmd.Process.Kill(); err != nil {
		logf("kill %s (pid %d): %v", p.name, p.pid(), err)
	}
	logf("killed %s (pid %d, %s) with SIGKILL %s into the window: %d agents were on it", p.name, p.pid(), addr, at.Round(time.Second), k.agents)
	return k
}

// reassignTimes reads from the control plane's audit when it moved each agent of the
// killed replicator (source-server.assign entries after the kill), newest first.
func (w *window) reassignTimes(ctx context.Context, cl *cluster, agents []*simAgent) error {
	if w.kill == nil {
		return nil
	}
	moved := map[string]bool{}
	for _, a := range agents {
		a.mu.Lock()
		if a.movedFrom != "" {
			moved[a.id] = true
		}
		a.mu.Unlock()
	}
	token := ""
	for range 100 {
		page, err := cl.admin.Audit(ctx, api.AuditFilter{Action: "source-server.assign", Limit: 500, PageToken: token})
		if err != nil {
			return fmt.Errorf("read the audit: %w", err)
		}
		for _, e := range page.Items {
			if moved[e.TargetID] && e.Time.After(w.kill.when.Add(-time.Second)) {
				w.reassign = append(w.reassign, e.Time.Sub(w.kill.when).Seconds())
				delete(moved, e.TargetID)
			}
		}
		if token = page.NextPageToken; token == "" || len(moved) == 0 {
			return nil
		}
	}
	return nil
}

// verifyStore stops the replicators (the writers have stopped) and runs lifeboat store
// verify --read-data on the staging store with the control plane's master key.
func verifyStore(ctx context.Context, cl *cluster, timeout time.Duration) verifyResult {
	for _, p := range cl.reps {
		p.stop()
	}
	url := cl.opts.storeURL
	if url == "" {
		url = "file://" + filepath.Join(cl.dir, "staging")
	}
	vctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(vctx, cl.bin, "store", "verify", "--read-data", "--store", url,
		"--key", filepath.Join(cl.dir, "cp", "staging.key"))
	cmd.Env = append(os.Environ(), cl.opts.storeEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	logf("verifying the staging store (store verify --read-data)")
	t0 := time.Now()
	err := cmd.Run()
	v := verifyResult{ran: true, clean: err == nil, seconds: time.Since(t0).Seconds(), summary: lastLines(out.String(), 12)}
	_ = os.WriteFile(filepath.Join(cl.dir, "verify.txt"), out.Bytes(), 0o644)
	var ee *exec.ExitError
	switch {
	case vctx.Err() != nil && ctx.Err() == nil:
		v.summary = fmt.Sprintf("timed out after %s\n%s", timeout, v.summary)
	case err != nil && !errors.As(err, &ee):
		v.summary = err.Error() + "\n" + v.summary
	}
	logf("store verify: clean %v in %.0f s\n%s", v.clean, v.seconds, v.summary)
	return v
}

// stopAll stops the replicators and the control plane, by pid.
func (c *cluster) stopAll() {
	for _, p := range c.reps {
		p.stop()
	}
	c.cp.stop()
}

// keepLogs copies the replicators' and control plane's logs out of the run's directory.
func keepLogs(cl *cluster, out string) {
	base := filepath.Base(cl.dir)
	for _, p := range append([]*proc{cl.cp}, cl.reps...) {
		if b, err := os.ReadFile(p.log); err == nil {
			_ = os.WriteFile(filepath.Join(out, base+"-"+filepath.Base(p.log)), b, 0o644)
		}
	}
	if b, err := os.ReadFile(filepath.Join(cl.dir, "verify.txt")); err == nil {
		_ = os.WriteFile(filepath.Join(out, base+"-verify.txt"), b, 0o644)
	}
}
