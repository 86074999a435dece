// Package qemu is the qemu launch provider's engine: it runs one recovered server as a
// QEMU VM and controls it through QMP, the QEMU Machine Protocol (a small client is in
// qmp.go).
//
// A VM is its own long-lived process: QEMU is started with -daemonize, so it is not a
// child of the Lifeboat process, is in its own session, and keeps running when the
// control plane stops or restarts. Everything needed to find it again is in its state
// directory (Config.Dir), which Attach reads. One caveat outside this package: under
// systemd, a service's processes are all killed when it stops unless its unit says
// KillMode=process (or the VM is started in its own scope, e.g. systemd-run --scope).
//
// The guest's console is a serial port written to serial.log in the state directory.
// Networking is QEMU user-mode (slirp): no privileges, host port forwards, and an
// isolated mode (restrict=on) in which the guest reaches nothing while forwards still
// reach it — the network a drill runs in.
//
// Direct kernel boot (Boot.Mode "kernel") starts a recovered disk's own kernel without
// a bootloader; ExtractBoot reads it out of the disk image.
package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// ErrNotRunning is returned by Attach (and matched by errors.Is) when no VM runs from a
// state directory.
var ErrNotRunning = errors.New("no VM is running")

// State is the QMP run state of a VM, or StateStopped when its process is gone.
const (
	StateStopped   = "stopped"   // the QEMU process is gone
	StateRunning   = "running"   // CPUs run
	StatePaused    = "paused"    // stopped by QMP stop
	StatePrelaunch = "prelaunch" // started paused (Config.StartPaused), never run yet
)

// VM is a running (or once running) QEMU VM. Its methods are safe for concurrent use;
// several VM values (one from Start, others from Attach) may control the same VM.
type VM struct {
	dir   string
	files stateFiles
	st    vmState
	log   *slog.Logger
}

// vmState is vm.json: what Attach needs to find and control the VM again.
type vmState struct {
	Name        string        `json:"name"`
	Pid         int           `json:"pid"`
	StartTicks  uint64        `json:"start_ticks"` // /proc/PID/stat field 22: tells a reused pid apart
	Binary      string        `json:"binary"`
	Ports       []PortForward `json:"ports"`
	StopTimeout time.Duration `json:"stop_timeout_ns"`
	Started     time.Time     `json:"started"`
	Args        []string      `json:"args"`
}

// Start launches a VM and returns once QEMU runs (the guest is still booting; wait for
// its service, or read SerialLogPath). The VM outlives the calling process.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	binary, err := exec.LookPath(cfg.Binary)
	if err != nil {
		if cfg.Binary == DefaultBinary {
			return nil, fmt.Errorf("QEMU (%s) is not installed: apt-get install qemu-system-x86", cfg.Binary)
		}
		return nil, fmt.Errorf("QEMU binary %s not found (Debian: apt-get install qemu-system-x86): %w", cfg.Binary, err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the VM's state directory: %w", err)
	}
	files := cfg.files()
	if old, err := Attach(cfg.Dir); err == nil {
		return nil, fmt.Errorf("VM %s already runs from %s (pid %d): stop it first, or Attach to it", old.st.Name, cfg.Dir, old.st.Pid)
	}
	for _, p := range []string{files.state, files.pid, files.qmp} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("clear the previous run's %s: %w", p, err)
		}
	}
	if err := os.WriteFile(files.serial, nil, 0o600); err != nil {
		return nil, fmt.Errorf("create the console log: %w", err)
	}
	var fw firmware
	if cfg.Boot.Mode == BootDisk && cfg.Boot.Firmware == FirmwareUEFI {
		code, vars, err := findOVMF(ovmfCandidates())
		if err != nil {
			return nil, err
		}
		// The variables (boot entries) are the VM's own and kept across relaunches.
		if !fileExists(files.vars) {
			if err := copyFile(vars, files.vars); err != nil {
				return nil, fmt.Errorf("UEFI variables: %w", err)
			}
		}
		fw = firmware{code: code, vars: files.vars}
	}

	args := cfg.args(fw)
	log := cfg.Logger.With("vm", cfg.Name, "dir", cfg.Dir)
	log.Info("starting VM", "binary", binary, "accel", cfg.Accel, "boot", cfg.Boot.Mode, "network", cfg.Network.Mode, "isolated", cfg.Network.Isolated)
	qlog, err := os.OpenFile(files.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open QEMU's log: %w", err)
	}
	mark, _ := qlog.Seek(0, io.SeekEnd)
	fmt.Fprintf(qlog, "=== %s starting %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(append([]string{binary}, args...), " "))
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Stdout, cmd.Stderr = qlog, qlog // a file, not a pipe: the daemon keeps it open
	cmd.Dir = cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	runErr := cmd.Run() // returns when QEMU has daemonized, or failed
	qlog.Close()
	if runErr != nil {
		// A start cancelled after the fork may have left a daemon behind.
		if pid, err := readPidFile(files.pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return nil, startError(cfg, files.log, mark, runErr)
	}
	pid, err := readPidFile(files.pid)
	if err != nil {
		return nil, fmt.Errorf("QEMU started but its pid file is unreadable: %w", err)
	}
	ticks, alive := procStart(pid)
	if !alive {
		return nil, fmt.Errorf("QEMU (pid %d) exited right after it started: see %s", pid, files.log)
	}
	v := &VM{dir: cfg.Dir, files: files, log: log, st: vmState{
		Name: cfg.Name, Pid: pid, StartTicks: ticks, Binary: binary,
		Ports: cfg.Network.PortForwards, StopTimeout: cfg.StopTimeout,
		Started: time.Now().UTC(), Args: args,
	}}
	if err := v.resolvePorts(ctx); err != nil {
		_ = v.Kill()
		return nil, err
	}
	if err := writeState(files.state, v.st); err != nil {
		_ = v.Kill()
		return nil, err
	}
	log.Info("VM started", "pid", pid, "ports", v.portsText())
	return v, nil
}

// startError explains why QEMU did not start, with what it printed.
func startError(cfg Config, logPath string, mark int64, runErr error) error {
	out := readFrom(logPath, mark)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) > 0 && strings.HasPrefix(lines[0], "=== ") {
		lines = lines[1:] // the command line written before the start
	}
	msg := strings.TrimSpace(strings.Join(lines, "\n"))
	if len(msg) > 2000 {
		msg = msg[len(msg)-2000:]
	}
	switch {
	case strings.Contains(msg, "Could not set up host forwarding rule"):
		return fmt.Errorf("QEMU could not listen on a forwarded host port (in use, or the address is not on this host): choose another port, or 0 for a free one: %s", msg)
	case cfg.Accel == "kvm" && strings.Contains(strings.ToLower(msg), "kvm"):
		return fmt.Errorf("QEMU could not use KVM (is /dev/kvm there and usable?): use Accel tcg: %s", msg)
	case msg == "":
		return fmt.Errorf("QEMU did not start: %w (see %s)", runErr, logPath)
	}
	return fmt.Errorf("QEMU did not start: %w: %s", runErr, msg)
}

func readFrom(path string, off int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(b)
}

// resolvePorts asks QEMU which host ports it bound for forwards given as port 0.
func (v *VM) resolvePorts(ctx context.Context) error {
	need := false
	for _, p := range v.st.Ports {
		need = need || p.HostPort == 0
	}
	if !need {
		return nil
	}
	var out string
	err := v.qmp(ctx, func(c *QMPClient) error {
		return c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info usernet"}, &out)
	})
	if err != nil {
		return fmt.Errorf("find the host ports QEMU chose: %w", err)
	}
	ports, err := assignPorts(v.st.Ports, parseUsernet(out))
	if err != nil {
		return err
	}
	v.st.Ports = ports
	return nil
}

// Attach finds the VM running from a state directory, as Start left it, for instance
// after the control plane restarted. If none runs, the error matches ErrNotRunning.
func Attach(dir string) (*VM, error) {
	files := filesIn(dir)
	data, err := os.ReadFile(files.state)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w from %s: it has no vm.json (was a VM ever started there?)", ErrNotRunning, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read the VM's state: %w", err)
	}
	var st vmState
	if err := json.Unmarshal(data, &st); err != nil || st.Pid <= 0 {
		return nil, fmt.Errorf("the VM's state file %s is damaged (%v): stop the VM by hand (pid file %s) and start it again", files.state, err, files.pid)
	}
	v := &VM{dir: dir, files: files, st: st, log: slog.New(slog.DiscardHandler)}
	if !v.alive() {
		return nil, fmt.Errorf("%w from %s: VM %s (pid %d) has stopped", ErrNotRunning, dir, st.Name, st.Pid)
	}
	return v, nil
}

// WithLogger returns a VM value that logs to l (Attach logs nothing).
func (v *VM) WithLogger(l *slog.Logger) *VM {
	c := *v
	c.log = l.With("vm", v.st.Name, "dir", v.dir)
	return &c
}

// Name is the VM's name.
func (v *VM) Name() string { return v.st.Name }

// Dir is the VM's state directory.
func (v *VM) Dir() string { return v.dir }

// Pid is the QEMU process id.
func (v *VM) Pid() int { return v.st.Pid }

// Ports are the port forwards with the host ports QEMU bound (a 0 in Config is replaced
// by the port chosen).
func (v *VM) Ports() []PortForward { return append([]PortForward(nil), v.st.Ports...) }

// SerialLogPath is the file the guest's serial console (ttyS0) is written to.
func (v *VM) SerialLogPath() string { return v.files.serial }

// LogPath is the file QEMU's own messages are written to.
func (v *VM) LogPath() string { return v.files.log }

func (v *VM) portsText() string {
	var parts []string
	for _, p := range v.st.Ports {
		parts = append(parts, fmt.Sprintf("%s/%s→%d", p.Addr(), p.Proto, p.GuestPort))
	}
	return strings.Join(parts, " ")
}

// alive reports whether the VM's process still runs (and is the same process: a reused
// pid has another start time).
func (v *VM) alive() bool {
	ticks, ok := procStart(v.st.Pid)
	return ok && ticks == v.st.StartTicks
}

// qmp runs fn on a fresh monitor connection, closed afterwards. Connections are short
// because QEMU serves one client at a time.
func (v *VM) qmp(ctx context.Context, fn func(*QMPClient) error) error {
	c, err := DialQMP(ctx, v.files.qmp)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// Status returns the VM's QMP run state ("running", "paused", "prelaunch", "shutdown",
// …), or StateStopped once its process is gone.
func (v *VM) Status(ctx context.Context) (string, error) {
	if !v.alive() {
		return StateStopped, nil
	}
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	err := v.qmp(ctx, func(c *QMPClient) error { return c.Execute(ctx, "query-status", nil, &st) })
	if err != nil {
		if !v.alive() {
			return StateStopped, nil
		}
		return "", fmt.Errorf("status of VM %s: %w", v.st.Name, err)
	}
	return st.Status, nil
}

// Continue runs a VM started paused (or paused by QMP stop).
func (v *VM) Continue(ctx context.Context) error {
	if !v.alive() {
		return fmt.Errorf("continue VM %s: %w", v.st.Name, ErrNotRunning)
	}
	if err := v.qmp(ctx, func(c *QMPClient) error { return c.Execute(ctx, "cont", nil, nil) }); err != nil {
		return fmt.Errorf("continue VM %s: %w", v.st.Name, err)
	}
	return nil
}

// Stop shuts the VM down: the ACPI power button first (system_powerdown), so the guest
// shuts down cleanly; if it has not powered off within the stop timeout
// (Config.StopTimeout), QEMU is told to quit, and killed if it still runs. A paused VM
// cannot see the power button and is quit at once. When ctx ends first, the VM is
// killed and ctx's error returned. Stopping a stopped VM does nothing.
func (v *VM) Stop(ctx context.Context) error {
	if !v.alive() {
		return nil
	}
	status, err := v.Status(ctx)
	if err == nil && status == StateRunning {
		v.log.Info("pressing the VM's power button", "grace", v.st.StopTimeout)
		err = v.qmp(ctx, func(c *QMPClient) error { return c.Execute(ctx, "system_powerdown", nil, nil) })
		if err == nil {
			if v.waitFor(ctx, v.st.StopTimeout) {
				v.log.Info("VM powered off")
				return nil
			}
			if ctx.Err() != nil {
				return v.killAfter(ctx)
			}
			v.log.Warn("the guest did not power off in time: quitting QEMU", "grace", v.st.StopTimeout)
		}
	}
	if err != nil && ctx.Err() != nil {
		return v.killAfter(ctx)
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := v.qmp(qctx, func(c *QMPClient) error { return c.Execute(qctx, "quit", nil, nil) }); err == nil {
		if v.waitFor(ctx, 10*time.Second) {
			v.log.Info("QEMU quit")
			return nil
		}
	}
	if ctx.Err() != nil {
		return v.killAfter(ctx)
	}
	v.log.Warn("QEMU did not quit: killing it", "pid", v.st.Pid)
	if err := v.Kill(); err != nil {
		return err
	}
	if !v.waitFor(ctx, 10*time.Second) {
		return fmt.Errorf("VM %s (pid %d) still runs after SIGKILL: look at the process by hand", v.st.Name, v.st.Pid)
	}
	return nil
}

func (v *VM) killAfter(ctx context.Context) error {
	_ = v.Kill()
	return fmt.Errorf("stop VM %s: gave up waiting and killed it: %w", v.st.Name, ctx.Err())
}

// Kill ends the QEMU process at once (SIGKILL): a power cut for the guest.
func (v *VM) Kill() error {
	if !v.alive() {
		return nil
	}
	if err := syscall.Kill(v.st.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill VM %s (pid %d): %w", v.st.Name, v.st.Pid, err)
	}
	v.log.Info("VM killed", "pid", v.st.Pid)
	return nil
}

// Wait returns when the VM's process has ended, or with ctx's error.
func (v *VM) Wait(ctx context.Context) error {
	for {
		if !v.alive() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for VM %s to end: %w", v.st.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitFor waits up to d for the process to end; it reports whether it did.
func (v *VM) waitFor(ctx context.Context, d time.Duration) bool {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return v.Wait(wctx) == nil
}

// procStart returns a process's start time in clock ticks since boot (field 22 of
// /proc/PID/stat) and whether it is alive (a zombie is not).
func procStart(pid int) (uint64, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseProcStat(data)
}

// parseProcStat reads the state and start time from /proc/PID/stat. The command name
// (field 2) is in parentheses and may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseProcStat(data []byte) (uint64, bool) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); the start time is field 22.
	if len(fields) < 20 || fields[0] == "Z" || fields[0] == "X" {
		return 0, false
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, false
	}
	return ticks, true
}

func readPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid", path, data)
	}
	return pid, nil
}

// writeState writes vm.json atomically.
func writeState(path string, st vmState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write the VM's state: %w", err)
	}
	return nil
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o600)
}

// usernetRow is one host forward as "info usernet" lists it.
type usernetRow struct {
	proto     string // tcp or udp
	hostAddr  string
	hostPort  int
	guestPort int
}

// parseUsernet reads the host forwards from HMP "info usernet", whose rows look like
// "  TCP[HOST_FORWARD]  12   127.0.0.1 33595   10.0.2.15    80     0     0".
func parseUsernet(out string) []usernetRow {
	var rows []usernetRow
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || !strings.HasSuffix(f[0], "[HOST_FORWARD]") {
			continue
		}
		proto := strings.ToLower(strings.TrimSuffix(f[0], "[HOST_FORWARD]"))
		if proto != "tcp" && proto != "udp" {
			continue
		}
		// The last six fields: source address and port, destination address and port,
		// receive and send queue.
		f = f[len(f)-6:]
		hp, err1 := strconv.Atoi(f[1])
		gp, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || hp < 0 || hp > 65535 || gp < 0 || gp > 65535 {
			continue
		}
		addr := f[0]
		if addr == "*" {
			addr = "0.0.0.0"
		}
		rows = append(rows, usernetRow{proto: proto, hostAddr: addr, hostPort: hp, guestPort: gp})
	}
	return rows
}

// assignPorts fills in the host port of every forward given as 0 from the rows QEMU
// listed: a row of the same protocol, address and guest port that no other forward
// claims.
func assignPorts(want []PortForward, rows []usernetRow) ([]PortForward, error) {
	out := append([]PortForward(nil), want...)
	used := make([]bool, len(rows))
	claim := func(p PortForward, port int) bool {
		for i, r := range rows {
			if !used[i] && r.proto == p.Proto && r.hostAddr == p.HostAddr && r.guestPort == p.GuestPort && (port == 0 || r.hostPort == port) {
				used[i] = true
				return true
			}
		}
		return false
	}
	for _, p := range out {
		if p.HostPort != 0 {
			claim(p, p.HostPort) // fixed ports are not candidates for the others
		}
	}
	for i, p := range out {
		if p.HostPort != 0 {
			continue
		}
		found := false
		for j, r := range rows {
			if !used[j] && r.proto == p.Proto && r.hostAddr == p.HostAddr && r.guestPort == p.GuestPort && r.hostPort != 0 {
				used[j] = true
				out[i].HostPort = r.hostPort
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("QEMU does not list the forward %s %s:0→%d it was given (info usernet): cannot tell which host port it chose", p.Proto, p.HostAddr, p.GuestPort)
		}
	}
	return out, nil
}
