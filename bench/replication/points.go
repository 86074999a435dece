package main

import (
	"bufio"
	"context"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// lagSampler reads the agent's status at each report (every 2 s) in the background.
type lagSampler struct {
	a       *agentProc
	samples []lagSample
	done    chan struct{}
	stopped chan struct{}
}

type lagSample struct {
	at  time.Time
	lag float64
}

// startLagSampler polls the agent's status every 100 ms (at most 30 min) and keeps one
// sample per report.
func startLagSampler(a *agentProc) *lagSampler {
	s := &lagSampler{a: a, done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(s.stopped)
		var last time.Time
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		limit := time.After(30 * time.Minute)
		for {
			select {
			case <-s.done:
				return
			case <-limit:
				return
			case <-t.C:
			}
			st, err := a.status()
			if err != nil || !st.UpdatedAt.After(last) {
				continue
			}
			last = st.UpdatedAt
			l := math.NaN()
			if st.LagSeconds != nil {
				l = *st.LagSeconds
			}
			s.samples = append(s.samples, lagSample{at: st.UpdatedAt, lag: l})
		}
	}()
	return s
}

// stop ends the sampling and returns the lags reported in [from, to].
func (s *lagSampler) stop(from, to time.Time) []float64 {
	close(s.done)
	<-s.stopped
	var out []float64
	for _, x := range s.samples {
		if x.at.After(from) && !x.at.After(to) && !math.IsNaN(x.lag) {
			out = append(out, x.lag)
		}
	}
	return out
}

func fileSizeOf(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func sum(xs []float64) float64 {
	t := 0.0
	for _, x := range xs {
		t += x
	}
	return t
}

// logKV matches the key=value pairs of a log/slog text line.
var logKV = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

// pointStepKeys are the steps of a consistency point the agent logs at debug level
// (internal/agent point.go): the whole freeze window, the FIFREEZE ioctls in it, the
// wait for the tracker's completions and the reading of the dirty blocks, and the
// blocks read.
var pointStepKeys = []struct{ log, name string }{
	{"freeze_ms", "stepFreezeMs"}, {"fifreeze_ms", "stepFifreezeMs"}, {"tracker_sync_ms", "stepTrackerSyncMs"},
	{"read_ms", "stepReadMs"}, {"blocks", "stepBlocks"},
}

// pointSteps reads the agent's "consistency point" debug lines logged in [from, to]
// from its log (from offset on) and returns each step's p50 and p99 (stepReadMsP50, …)
// and the mean blocks read per point.
func pointSteps(logPath string, off int64, from, to time.Time) map[string]float64 {
	f, err := os.Open(logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil
	}
	vals := map[string][]float64{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 0; sc.Scan() && n < 10_000_000; n++ {
		line := sc.Text()
		if !strings.Contains(line, `msg="consistency point"`) {
			continue
		}
		kv := map[string]string{}
		for _, m := range logKV.FindAllStringSubmatch(line, -1) {
			if _, dup := kv[m[1]]; !dup {
				kv[m[1]] = m[2]
			}
		}
		at, err := time.Parse(time.RFC3339Nano, kv["time"])
		if err != nil || at.Before(from) || at.After(to) {
			continue
		}
		for _, k := range pointStepKeys {
			if v, err := strconv.ParseFloat(kv[k.log], 64); err == nil {
				vals[k.name] = append(vals[k.name], v)
			}
		}
	}
	out := map[string]float64{}
	for _, k := range pointStepKeys {
		xs := vals[k.name]
		if len(xs) == 0 {
			continue
		}
		if k.log == "blocks" {
			out[k.name+"Mean"] = sum(xs) / float64(len(xs))
			continue
		}
		out[k.name+"P50"], out[k.name+"P99"] = pct(xs, 50), pct(xs, 99)
	}
	out["stepLines"] = float64(len(vals["stepFreezeMs"]))
	return out
}

// freezeTraceEvents are the kernel's tracepoints that split a FIFREEZE (-trace-freeze):
// the ioctls themselves (FIFREEZE 0xc0045877, FITHAW 0xc0045878), the filesystem sync and
// ext4's journal commit and checkpoint, which FIFREEZE waits for.
var freezeTraceEvents = []string{
	"syscalls:sys_enter_ioctl", "syscalls:sys_exit_ioctl", "ext4:ext4_sync_fs", "jbd2:jbd2_start_commit",
	"jbd2:jbd2_commit_flushing", "jbd2:jbd2_commit_logging", "jbd2:jbd2_end_commit", "jbd2:jbd2_checkpoint",
	"jbd2:jbd2_write_superblock",
}

// perfTrace records freezeTraceEvents on every CPU into out until the returned function
// is called (perf script out | … reads them).
func perfTrace(ctx context.Context, out string) (func(), error) {
	args := []string{"record", "-a", "-o", out, "-e", freezeTraceEvents[0], "--filter", "cmd == 0xc0045877 || cmd == 0xc0045878"}
	for _, e := range freezeTraceEvents[1:] {
		args = append(args, "-e", e)
	}
	return startPerf(ctx, args...)
}
