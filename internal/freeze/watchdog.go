package freeze

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchdogArg is the hidden argument that makes the lifeboat binary (or a test binary)
// run as a thaw watchdog; see IsWatchdog.
const watchdogArg = "__thaw-watchdog"

// replyTimeout bounds how long the agent waits for the watchdog to answer.
const replyTimeout = 5 * time.Second

// IsWatchdog reports whether the process was started as a thaw watchdog. The binary's
// main (and the TestMain of tests that start one) dispatches on it first:
//
//	if freeze.IsWatchdog(os.Args) { os.Exit(freeze.RunWatchdog(os.Args)) }
func IsWatchdog(args []string) bool { return len(args) > 1 && args[1] == watchdogArg }

// wdMsg is one line of the protocol between the agent and its watchdog (JSON lines:
// commands on the watchdog's stdin, replies on its stdout).
//
//	watchdog → agent  {"op":"ready","pid":N}
//	agent → watchdog  {"op":"arm","seq":N,"deadline":UNIX_NANO,"mounts":[...],"rcu":true}
//	watchdog → agent  {"op":"armed","seq":N}
//	agent → watchdog  {"op":"disarm","seq":N}
//	watchdog → agent  {"op":"disarmed","seq":N,"thawed":[...]}   thawed: what it thawed itself
//
// While armed, the watchdog thaws the mounts when the deadline passes, when its stdin
// closes (the agent died: the kernel closes the agent's end of the pipe), or when it is
// asked to terminate; with "rcu" it then also turns expedited RCU grace periods off
// (the agent turned them on for the freeze, see rcuExpeditedFile).
type wdMsg struct {
	Op       string   `json:"op"`
	Seq      uint64   `json:"seq,omitempty"`
	Deadline int64    `json:"deadline,omitempty"`
	Mounts   []string `json:"mounts,omitempty"`
	Thawed   []string `json:"thawed,omitempty"`
	Pid      int      `json:"pid,omitempty"`
	RCU      bool     `json:"rcu,omitempty"`
}

// Watchdog is a long-lived child process that thaws the filesystems of a freeze if the
// agent dies (even by SIGKILL) or stops without thawing them by the bound. Start it
// once, when the agent starts, and freeze through it: starting a process inside the
// freeze window would make the window long.
type Watchdog struct {
	log *slog.Logger
	// NormalRCU, set before the first freeze, keeps the freezes from switching the
	// kernel to expedited RCU grace periods (see rcuExpeditedFile): longer windows,
	// no change to a system-wide setting.
	NormalRCU bool

	mu     sync.Mutex
	proc   *wdProc
	seq    uint64
	armed  bool
	closed bool
}

type wdProc struct {
	cmd    *exec.Cmd
	in     *os.File // commands to the watchdog
	out    *os.File // its replies
	rd     *bufio.Reader
	exited chan struct{}
}

// StartWatchdog starts the watchdog process: the running executable re-executed with
// the hidden argument that IsWatchdog recognises.
func StartWatchdog(ctx context.Context, log *slog.Logger) (*Watchdog, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watchdog{log: log}
	p, err := startProc(ctx)
	if err != nil {
		return nil, err
	}
	w.proc = p
	return w, nil
}

func startProc(ctx context.Context) (*wdProc, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("thaw watchdog: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("thaw watchdog: %w", err)
	}
	// /proc/self/exe is this very binary, even if its file was replaced by an upgrade.
	cmd := exec.Command("/proc/self/exe", watchdogArg)
	cmd.Args[0] = os.Args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	// Its own process group: a signal to the agent's group does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("thaw watchdog: start %s %s: %w", os.Args[0], watchdogArg, err)
	}
	p := &wdProc{cmd: cmd, in: inW, out: outR, rd: bufio.NewReader(outR), exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(replyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	m, err := p.read(deadline)
	if err == nil && m.Op != "ready" {
		err = fmt.Errorf("unexpected first message %q", m.Op)
	}
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("thaw watchdog did not start (does main dispatch on freeze.IsWatchdog?): %w", err)
	}
	return p, nil
}

func (p *wdProc) send(m wdMsg) error {
	line, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := p.in.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write to thaw watchdog: %w", err)
	}
	return nil
}

func (p *wdProc) read(deadline time.Time) (wdMsg, error) {
	var m wdMsg
	_ = p.out.SetReadDeadline(deadline)
	line, err := p.rd.ReadBytes('\n')
	if err != nil {
		return m, fmt.Errorf("read from thaw watchdog: %w", err)
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return m, fmt.Errorf("thaw watchdog sent %q: %w", line, err)
	}
	return m, nil
}

// kill stops the watchdog by its pid and releases the pipes.
func (p *wdProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.in.Close()
	p.out.Close()
}

func (p *wdProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Pid returns the watchdog's process id, or 0 if it is not running.
func (w *Watchdog) Pid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc == nil || !w.proc.alive() {
		return 0
	}
	return w.proc.cmd.Process.Pid
}

// Freeze is the package's Freeze guarded by the watchdog process: from before the first
// FIFREEZE until Thaw, the watchdog thaws the filesystems if the agent dies or the bound
// passes. One freeze at a time.
func (w *Watchdog) Freeze(ctx context.Context, mountpoints []string, bound time.Duration) (*Frozen, error) {
	return freeze(ctx, w.log, w, !w.NormalRCU, mountpoints, bound)
}

// arm tells the watchdog what to thaw and by when, and waits for its answer; it runs
// before the freeze window opens. It restarts a watchdog that has exited.
func (w *Watchdog) arm(ctx context.Context, mounts []string, deadline time.Time, rcu bool) (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errors.New("freeze: the thaw watchdog is closed")
	}
	if w.armed {
		return 0, errors.New("freeze: another freeze is in progress; thaw it first")
	}
	if w.proc == nil || !w.proc.alive() {
		if w.proc != nil {
			w.proc.kill()
		}
		w.proc = nil
		p, err := startProc(ctx)
		if err != nil {
			return 0, fmt.Errorf("freeze: the thaw watchdog had stopped and could not be restarted, so nothing would thaw the filesystems if the agent died: %w", err)
		}
		w.log.Warn("freeze: the thaw watchdog had stopped; restarted it", "pid", p.cmd.Process.Pid)
		w.proc = p
	}
	w.seq++
	err := w.proc.send(wdMsg{Op: "arm", Seq: w.seq, Deadline: deadline.UnixNano(), Mounts: mounts, RCU: rcu})
	var m wdMsg
	if err == nil {
		m, err = w.proc.read(time.Now().Add(replyTimeout))
	}
	if err == nil && (m.Op != "armed" || m.Seq != w.seq) {
		err = fmt.Errorf("unexpected answer %q %d to arm %d", m.Op, m.Seq, w.seq)
	}
	if err != nil {
		w.proc.kill()
		w.proc = nil
		return 0, fmt.Errorf("freeze: the thaw watchdog did not accept the freeze, so it was not started: %w", err)
	}
	w.armed = true
	return w.seq, nil
}

// disarm tells the watchdog the filesystems are thawed; it returns the mounts the
// watchdog had thawed itself (the bound passed).
func (w *Watchdog) disarm(seq uint64) ([]string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = false
	if w.proc == nil {
		return nil, errors.New("no watchdog process")
	}
	err := w.proc.send(wdMsg{Op: "disarm", Seq: seq})
	var m wdMsg
	if err == nil {
		m, err = w.proc.read(time.Now().Add(replyTimeout))
	}
	if err == nil && (m.Op != "disarmed" || m.Seq != seq) {
		err = fmt.Errorf("unexpected answer %q %d to disarm %d", m.Op, m.Seq, seq)
	}
	if err != nil {
		// Its state is unknown: replace it before the next freeze.
		w.proc.kill()
		w.proc = nil
		return nil, err
	}
	return m.Thawed, nil
}

// Close stops the watchdog. If a freeze is still in progress, the watchdog thaws it as
// it exits.
func (w *Watchdog) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.proc == nil {
		return nil
	}
	p := w.proc
	w.proc = nil
	p.in.Close() // end of input: the watchdog exits
	select {
	case <-p.exited:
	case <-time.After(replyTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.out.Close()
		return errors.New("freeze: the thaw watchdog did not exit when told to; killed it")
	}
	p.out.Close()
	return nil
}

// RunWatchdog is the watchdog process's main; it returns the exit status. See wdMsg for
// what it does.
func RunWatchdog(args []string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("process", "lifeboat thaw watchdog", "pid", os.Getpid())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	// A write to the agent's pipe after it died must fail with EPIPE, not kill the
	// watchdog before it thaws.
	signal.Notify(make(chan os.Signal, 1), unix.SIGPIPE)

	lines := make(chan wdMsg)
	bad := make(chan error, 1)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
		for sc.Scan() {
			var m wdMsg
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				bad <- fmt.Errorf("bad command %q: %w", sc.Text(), err)
				return
			}
			lines <- m
		}
	}()
	reply := func(m wdMsg) {
		line, _ := json.Marshal(m)
		_, _ = os.Stdout.Write(append(line, '\n'))
	}
	reply(wdMsg{Op: "ready", Pid: os.Getpid()})

	var armed *wdMsg
	var timer *time.Timer
	var expiry <-chan time.Time
	thawedBy := map[uint64][]string{}
	thaw := func(why string) {
		if armed == nil {
			return
		}
		thawed, errs := thawPaths(armed.Mounts)
		if armed.RCU {
			if err := setRCUExpedited(false); err != nil {
				errs = append(errs, err)
			}
		}
		thawedBy[armed.Seq] = thawed
		// Log only once thawed: the log may go to a frozen filesystem.
		if len(thawed) > 0 || len(errs) > 0 {
			log.Warn("thawed filesystems the agent left frozen", "why", why, "thawed", thawed, "errors", errors.Join(errs...))
		}
		armed = nil
		if timer != nil {
			timer.Stop()
		}
		expiry = nil
	}
	for {
		select {
		case m, ok := <-lines:
			if !ok {
				thaw("the agent exited or died")
				return 0
			}
			switch m.Op {
			case "arm":
				thaw("a new freeze was armed before the previous one was disarmed")
				armed = &m
				timer = time.NewTimer(time.Until(time.Unix(0, m.Deadline)))
				expiry = timer.C
				reply(wdMsg{Op: "armed", Seq: m.Seq})
			case "disarm":
				if armed != nil && armed.Seq == m.Seq {
					armed = nil
					timer.Stop()
					expiry = nil
				}
				reply(wdMsg{Op: "disarmed", Seq: m.Seq, Thawed: thawedBy[m.Seq]})
				delete(thawedBy, m.Seq)
			default:
				thaw("unknown command")
				log.Error("unknown command; exiting", "op", m.Op)
				return 2
			}
		case <-expiry:
			thaw("the freeze's time bound passed before the agent thawed")
		case err := <-bad:
			thaw("bad command")
			log.Error("exiting", "err", err)
			return 2
		case s := <-sigs:
			thaw("the watchdog was told to stop (" + s.String() + ")")
			return 0
		}
	}
}

// thawPaths thaws the filesystems at paths, last first; it returns those it thawed
// (not those that were not frozen) and the errors.
func thawPaths(paths []string) ([]string, []error) {
	var thawed []string
	var errs []error
	for _, p := range slices.Backward(paths) {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", p, err))
			continue
		}
		err = ioctl(fd, ioctlFITHAW)
		unix.Close(fd)
		switch {
		case err == nil:
			thawed = append(thawed, p)
		case errors.Is(err, unix.EINVAL): // not frozen
		default:
			errs = append(errs, fmt.Errorf("thaw %s: %w", p, err))
		}
	}
	return thawed, errs
}
