package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// undo is a stack of cleanups, run in reverse order (also after a failure).
type undo struct{ fns []func() }

func (u *undo) push(fn func()) { u.fns = append(u.fns, fn) }

func (u *undo) run() {
	for i := len(u.fns) - 1; i >= 0; i-- {
		u.fns[i]()
	}
	u.fns = nil
}

// proc is a process this program started; it is stopped by its pid only.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
	// In this process instead (diagnosis only): its stop function.
	inproc func()
}

// startProc starts bin args with its output in logPath.
func startProc(name, logPath string, env []string, bin string, args ...string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int {
	if p.inproc != nil {
		return os.Getpid()
	}
	return p.cmd.Process.Pid
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM, and SIGKILL after 30 s.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	if p.inproc != nil {
		p.inproc()
		<-p.done
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		log.Printf("%s (pid %d) did not stop in 30 s: killing it", p.name, p.pid())
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last lines of the process's log.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run runs a command and returns its combined output, failing with it.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(lastLines(out.String(), 5)))
	}
	return out.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// timeShell runs script with sh -c, followed by sync, after dropping the page cache,
// and returns the elapsed wall time and the CPU time of the children.
func timeShell(ctx context.Context, env []string, script string) (time.Duration, time.Duration, error) {
	dropCaches()
	cmd := exec.CommandContext(ctx, "sh", "-c", script+" && sync")
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	el := time.Since(t0)
	if err != nil {
		return el, 0, fmt.Errorf("%s: %v: %s", script, err, lastLines(out.String(), 5))
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return el, cpu, nil
}

// dropCaches writes dirty data and drops the page cache, so a timed step reads from disk.
func dropCaches() {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		log.Printf("cannot drop the page cache: %v", err)
	}
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// cpuBusy is the busy fraction of all CPUs over d, from /proc/stat.
func cpuBusy(ctx context.Context, d time.Duration) float64 {
	read := func() (busy, total float64) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		for i, v := range f[1:] {
			x, _ := strconv.ParseFloat(v, 64)
			if i >= 8 { // guest times are counted in user already
				break
			}
			total += x
			if i != 3 && i != 4 { // idle, iowait
				busy += x
			}
		}
		return busy, total
	}
	b0, t0 := read()
	sleepCtx(ctx, d)
	b1, t1 := read()
	if t1 <= t0 {
		return 0
	}
	return (b1 - b0) / (t1 - t0)
}

// lastBusy is the CPUs' busy fraction waitQuiet last measured.
var lastBusy float64

// waitQuiet waits, at most max, until the CPUs were less than limit busy for 3 s: the
// load average lags a minute behind (and counts this program's own last step), this
// says whether someone else is using the machine now.
func waitQuiet(ctx context.Context, limit float64, max time.Duration) {
	deadline := time.Now().Add(max)
	for ctx.Err() == nil {
		lastBusy = cpuBusy(ctx, 3*time.Second)
		if lastBusy < limit || time.Now().After(deadline) {
			return
		}
		log.Printf("CPUs %.0f%% busy (load average %s): waiting for the machine to be quieter", 100*lastBusy, loadAvg())
		sleepCtx(ctx, 5*time.Second)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// cpuTime is the user+system CPU time of a process.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// memKiB reads a field of /proc/PID/status in KiB (VmRSS, VmHWM).
func memKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				return v
			}
		}
	}
	return 0
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitTCP(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("nothing listens on %s after %s", addr, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loop is a loop device this program attached.
type loop struct{ dev, file string }

// attachLoop attaches file to a free loop device, with direct I/O: like a real disk,
// its reads and writes then go to the disk under the image, without a CPU copy through
// the image file's page cache (which would charge a real source server's agent, and
// the dd anchor, for a cost it does not have).
func attachLoop(ctx context.Context, u *undo, file string) (*loop, error) {
	out, err := run(ctx, "losetup", "--direct-io=on", "--find", "--show", file)
	if err != nil {
		return nil, err
	}
	l := &loop{dev: strings.TrimSpace(out), file: file}
	u.push(func() {
		if _, err := run(context.Background(), "losetup", "--detach", l.dev); err != nil {
			log.Printf("detach %s: %v", l.dev, err)
		}
	})
	return l, nil
}

// mount mounts dev at a new directory under parent.
func mount(ctx context.Context, u *undo, dev, dir string, opts ...string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := append(opts, dev, dir)
	if _, err := run(ctx, "mount", args...); err != nil {
		return err
	}
	u.push(func() {
		for i := 0; i < 20; i++ {
			if _, err := run(context.Background(), "umount", dir); err == nil {
				break
			} else if i == 19 {
				log.Printf("umount %s: %v", dir, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		_ = os.Remove(dir)
	})
	return nil
}

var errTimeout = errors.New("timed out")

// perfRecord samples the processes' stacks with perf (499 Hz) into out until the
// returned function is called.
func perfRecord(ctx context.Context, out string, pids ...int) (func(), error) {
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	return startPerf(ctx, "record", "-F", "499", "-g", "-o", out, "-p", strings.Join(ps, ","))
}

// startPerf runs perf with args until the returned function is called (SIGINT, then
// SIGKILL after 30 s).
func startPerf(ctx context.Context, args ...string) (func(), error) {
	cmd := exec.CommandContext(ctx, "perf", args...)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf record: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}, nil
}

// freshWork empties (and makes) out/work, removed again when u runs.
func freshWork(out string, u *undo) (string, error) {
	work := filepath.Join(out, "work")
	if err := os.RemoveAll(work); err != nil {
		return "", err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", err
	}
	u.push(func() { _ = os.RemoveAll(work) })
	return work, nil
}
