package freeze

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// childEnv makes the test binary play an agent that freezes a mount through its
// watchdog and then waits to be killed.
const childEnv = "LIFEBOAT_TEST_FREEZE_CHILD"

func TestMain(m *testing.M) {
	if IsWatchdog(os.Args) {
		os.Exit(RunWatchdog(os.Args))
	}
	if mnt := os.Getenv(childEnv); mnt != "" {
		os.Exit(freezeChild(mnt))
	}
	os.Exit(m.Run())
}

// freezeChild plays an agent: it freezes mnt through a watchdog, prints
// "frozen WATCHDOG_PID" and sleeps until killed. With mode "hung" it arms the watchdog
// and freezes by itself, without the agent's own timer: an agent that hangs.
func freezeChild(mnt string) int {
	bound, err := time.ParseDuration(os.Getenv(childEnv + "_BOUND"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad bound:", err)
		return 2
	}
	ctx := context.Background()
	wd, err := StartWatchdog(ctx, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Getenv(childEnv+"_MODE") == "hung" {
		// As an agent that hangs inside its FIFREEZE, expedited RCU switched on.
		if _, err := wd.arm(ctx, []string{mnt}, time.Now().Add(bound), true); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := setRCUExpedited(true); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = ioctl(fd, ioctlFIFREEZE)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	} else if _, err := wd.Freeze(ctx, []string{mnt}, bound); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("frozen %d\n", wd.Pid())
	time.Sleep(time.Hour) // until killed
	return 0
}

// ext4Mount makes a small ext4 on a loop device, mounts it, and makes sure it is thawed
// before it is unmounted even if the test fails.
func ext4Mount(t *testing.T) (dev, mnt string) {
	t.Helper()
	dev, _ = testutil.LoopDevice(t, 64<<20)
	testutil.MkfsExt4(t, dev)
	mnt = testutil.Mount(t, dev)
	t.Cleanup(func() { forceThaw(mnt) }) // runs before the unmount
	return dev, mnt
}

func forceThaw(mnt string) {
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	_ = ioctl(fd, ioctlFITHAW)
}

// stateOf reports whether the filesystem at mnt was frozen, and thaws it.
func stateOf(t *testing.T, mnt string) string {
	t.Helper()
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// FITHAW fails with EINVAL on a filesystem that is not frozen, and thaws a frozen
	// one: so only ask it of filesystems the test is done with.
	switch err := ioctl(fd, ioctlFITHAW); {
	case err == nil:
		return "frozen"
	case errors.Is(err, unix.EINVAL):
		return "thawed"
	default:
		t.Fatalf("FITHAW %s: %v", mnt, err)
		return ""
	}
}

// writer writes a file on mnt from a goroutine locked to its thread and returns the
// thread id and a channel closed when the write (with fsync) has returned.
func writer(t *testing.T, mnt, name string) (tid int, done <-chan error) {
	t.Helper()
	ch := make(chan error, 1)
	tids := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		tids <- unix.Gettid()
		ch <- os.WriteFile(filepath.Join(mnt, name), []byte("written\n"), 0o644)
	}()
	return <-tids, ch
}

// waitBlocked waits (bounded) until thread tid sleeps uninterruptibly: the write is
// held by the freeze.
func waitBlocked(t *testing.T, tid int, done <-chan error) {
	t.Helper()
	path := fmt.Sprintf("/proc/self/task/%d/stat", tid)
	for i := 0; i < 20000; i++ {
		select {
		case err := <-done:
			t.Fatalf("the write to a frozen filesystem completed (err %v)", err)
		default:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// pid (comm) STATE ...
		if s := string(data); strings.Contains(s, ") D ") {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the writer never blocked on the frozen filesystem")
}

// waitDone waits (bounded) for the writer to finish.
func waitDone(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the filesystem stayed frozen: %s", what)
	}
}

// freezeShortBound freezes with a short bound. On a loaded machine FIFREEZE itself may
// take longer than the bound, which Freeze rightly refuses; then it retries with twice
// the bound (a few times), so the test does not depend on the machine's speed.
func freezeShortBound(t *testing.T, freeze func(time.Duration) (*Frozen, error)) *Frozen {
	t.Helper()
	bound := 100 * time.Millisecond
	for range 8 {
		f, err := freeze(bound)
		if err == nil {
			return f
		}
		if !strings.Contains(err.Error(), "longer than the bound") {
			t.Fatal(err)
		}
		bound *= 2
	}
	t.Fatalf("could not freeze within %s", bound)
	return nil
}

func TestFreezeHoldsWritesUntilThaw(t *testing.T) {
	_, mnt := ext4Mount(t)
	f, err := Freeze(context.Background(), []string{mnt}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var thawed atomic.Bool
	tid, done := writer(t, mnt, "a")
	waitBlocked(t, tid, done)
	select {
	case <-done:
		t.Fatal("write completed while frozen")
	default:
	}
	thawed.Store(true)
	if err := f.Thaw(); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	waitDone(t, done, "after Thaw")
	if !thawed.Load() {
		t.Fatal("write completed before thaw")
	}
	if f.Elapsed() <= 0 {
		t.Errorf("Elapsed() = %s", f.Elapsed())
	}
	if got := f.Mounts(); len(got) != 1 || got[0] != mnt {
		t.Errorf("Mounts() = %v", got)
	}
	if err := f.Thaw(); err != nil {
		t.Errorf("second Thaw: %v", err)
	}
	t.Logf("frozen for %s (includes waiting for the writer to block)", f.Elapsed())
}

func TestFreezeBoundThawsAnyway(t *testing.T) {
	_, mnt := ext4Mount(t)
	f := freezeShortBound(t, func(b time.Duration) (*Frozen, error) {
		return Freeze(context.Background(), []string{mnt}, b)
	})
	// The write waits for the freeze, or runs after the timer thawed: either way it
	// completes only if something thawed the filesystem.
	_, done := writer(t, mnt, "a")
	waitDone(t, done, "the bound passed without Thaw")
	err := f.Thaw()
	var nc *NotConsistentError
	if !errors.As(err, &nc) {
		t.Fatalf("Thaw after the bound = %v, want a NotConsistentError", err)
	}
	t.Logf("Thaw: %v", err)
}

func TestFreezeDurations(t *testing.T) {
	_, a := ext4Mount(t)
	_, b := ext4Mount(t)
	wd, err := StartWatchdog(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wd.Close()
	normalRCU(t)
	for _, normal := range []bool{true, false} {
		wd.NormalRCU = normal
		var worst time.Duration
		var total time.Duration
		const n = 20
		for i := range n {
			if err := os.WriteFile(filepath.Join(a, "f"), []byte(strconv.Itoa(i)), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := wd.Freeze(context.Background(), []string{b, a}, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Mounts(); len(got) != 2 || got[0] > got[1] {
				t.Fatalf("freeze order %v is not sorted", got)
			}
			if got := rcuSwitch(t); got != "0" {
				t.Fatalf("expedited RCU is %q while frozen; the freeze must switch it back off after its FIFREEZEs", got)
			}
			if err := f.Thaw(); err != nil {
				t.Fatal(err)
			}
			worst = max(worst, f.Elapsed())
			total += f.Elapsed()
		}
		t.Logf("%d freezes of 2 ext4 filesystems through the watchdog (normal RCU %v): mean %s, worst %s", n, normal, total/n, worst)
	}
}

// normalRCU makes sure expedited RCU grace periods are off for the test and puts back
// what was there after it.
func normalRCU(t *testing.T) {
	t.Helper()
	old, err := os.ReadFile(rcuExpeditedFile)
	testutil.Need(t, err == nil, fmt.Sprintf("the kernel has no %s (%v)", rcuExpeditedFile, err))
	if err := setRCUExpedited(false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(rcuExpeditedFile, old, 0o644) })
}

func rcuSwitch(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(rcuExpeditedFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestFreezeBoundDuringFreezing(t *testing.T) {
	_, a := ext4Mount(t)
	_, b := ext4Mount(t)
	_, err := Freeze(context.Background(), []string{a, b}, time.Nanosecond)
	if err == nil || !strings.Contains(err.Error(), "longer than the bound") {
		t.Fatalf("a 1ns bound: err = %v", err)
	}
	for _, m := range []string{a, b} {
		if s := stateOf(t, m); s != "thawed" {
			t.Errorf("%s is %s after a failed freeze", m, s)
		}
	}
}

func TestFreezeAlreadyFrozen(t *testing.T) {
	_, a := ext4Mount(t)
	_, b := ext4Mount(t)
	// Someone else froze b.
	fd, err := unix.Open(b, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := ioctl(fd, ioctlFIFREEZE); err != nil {
		t.Fatal(err)
	}
	// Whichever of a and b sorts first, a must be left thawed.
	_, err = Freeze(context.Background(), []string{a, b}, time.Minute)
	if err == nil {
		t.Fatal("freezing an already frozen filesystem succeeded")
	}
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "already frozen") || !strings.Contains(err.Error(), b) {
		t.Fatalf("error does not say %s is already frozen (EBUSY): %v", b, err)
	}
	t.Logf("error: %v", err)
	if s := stateOf(t, a); s != "thawed" {
		t.Errorf("%s was left %s", a, s)
	}
	if s := stateOf(t, b); s != "frozen" {
		t.Errorf("the other party's freeze of %s was undone: %s", b, s)
	}
}

func TestFreezeNotSupported(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.Run(t, "mount", "-t", "tmpfs", "tmpfs", dir)
	t.Cleanup(func() {
		if _, err := testutil.Output("umount", dir); err != nil {
			t.Errorf("umount %s: %v", dir, err)
		}
	})
	_, err := Freeze(context.Background(), []string{dir}, time.Minute)
	if err == nil || !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "cannot be frozen") {
		t.Fatalf("freezing tmpfs: %v", err)
	}
	t.Logf("error: %v", err)
}

func TestFreezeBadInput(t *testing.T) {
	if _, err := Freeze(context.Background(), nil, time.Second); err == nil {
		t.Error("no mounts: no error")
	}
	if _, err := Freeze(context.Background(), []string{"/"}, 0); err == nil {
		t.Error("zero bound: no error")
	}
	if _, err := Freeze(context.Background(), []string{filepath.Join(t.TempDir(), "missing")}, time.Second); err == nil {
		t.Error("missing mount point: no error")
	}
}

func TestWatchdogFreezeThawAndRestart(t *testing.T) {
	_, mnt := ext4Mount(t)
	wd, err := StartWatchdog(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := wd.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	pid := wd.Pid()
	if pid <= 0 {
		t.Fatalf("Pid() = %d", pid)
	}
	f, err := wd.Freeze(context.Background(), []string{mnt}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wd.Freeze(context.Background(), []string{mnt}, time.Minute); err == nil {
		t.Fatal("a second freeze while one is in progress was accepted")
	}
	if err := f.Thaw(); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	// The watchdog died: the next freeze restarts it first.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; wd.Pid() != 0; i++ {
		if i > 10000 {
			t.Fatal("the killed watchdog is still seen as running")
		}
		time.Sleep(time.Millisecond)
	}
	f, err = wd.Freeze(context.Background(), []string{mnt}, time.Minute)
	if err != nil {
		t.Fatalf("freeze after the watchdog died: %v", err)
	}
	if err := f.Thaw(); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if p := wd.Pid(); p == 0 || p == pid {
		t.Fatalf("watchdog pid after restart = %d (was %d)", p, pid)
	}
}

func TestWatchdogBoundWithWatchdog(t *testing.T) {
	_, mnt := ext4Mount(t)
	wd, err := StartWatchdog(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer wd.Close()
	f := freezeShortBound(t, func(b time.Duration) (*Frozen, error) {
		return wd.Freeze(context.Background(), []string{mnt}, b)
	})
	_, done := writer(t, mnt, "a")
	waitDone(t, done, "the bound passed")
	var nc *NotConsistentError
	if err := f.Thaw(); !errors.As(err, &nc) {
		t.Fatalf("Thaw = %v, want NotConsistentError", err)
	}
	// The watchdog is still usable afterwards.
	f, err = wd.Freeze(context.Background(), []string{mnt}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Thaw(); err != nil {
		t.Fatal(err)
	}
}

// startFrozenChild runs the test binary as an agent that freezes mnt through its
// watchdog with the given bound; it returns the child, the watchdog's pid and the file
// that collects their stderr.
func startFrozenChild(t *testing.T, mnt, mode string, bound time.Duration) (*exec.Cmd, int, string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "child.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mnt, childEnv+"_BOUND="+bound.String(), childEnv+"_MODE="+mode)
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	testutil.StartProcess(t, cmd)
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	var s string
	select {
	case s = <-line:
	case <-time.After(60 * time.Second):
		t.Fatal("the child did not freeze within 60s")
	}
	var wdPid int
	if _, err := fmt.Sscanf(s, "frozen %d", &wdPid); err != nil {
		data, _ := os.ReadFile(logPath)
		t.Fatalf("child said %q (%v); its log: %s", s, err, data)
	}
	t.Cleanup(func() {
		// Whatever happened, do not leave the watchdog behind.
		_ = syscall.Kill(wdPid, syscall.SIGKILL)
	})
	return cmd, wdPid, logPath
}

// TestWatchdogThawsWhenAgentKilled is the crucial fault: the agent is SIGKILLed while
// its filesystems are frozen. The kernel does not thaw them; the watchdog must.
func TestWatchdogThawsWhenAgentKilled(t *testing.T) {
	_, mnt := ext4Mount(t)
	child, wdPid, logPath := startFrozenChild(t, mnt, "agent", time.Hour)
	tid, done := writer(t, mnt, "a")
	waitBlocked(t, tid, done) // frozen by the child
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, "the agent was killed and nothing thawed")
	waitExited(t, wdPid)
	waitLog(t, logPath, "the agent exited or died", mnt)
}

// TestWatchdogThawsHungAgent: the agent froze and then hangs (it never thaws, and has
// no timer of its own here): the watchdog thaws at the bound.
func TestWatchdogThawsHungAgent(t *testing.T) {
	_, mnt := ext4Mount(t)
	normalRCU(t)
	child, _, logPath := startFrozenChild(t, mnt, "hung", 2*time.Second)
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	_, done := writer(t, mnt, "a")
	waitDone(t, done, "the agent hung and nothing thawed at the bound")
	waitLog(t, logPath, "time bound passed", mnt)
	if got := rcuSwitch(t); got != "0" {
		t.Fatalf("expedited RCU is %q after the watchdog thawed; it must switch off what the agent switched on", got)
	}
}

// waitLog waits (bounded) until the file at path holds every one of want: the
// watchdog thaws first and logs after, so the log can trail the thaw.
func waitLog(t *testing.T, path string, want ...string) {
	t.Helper()
	var log []byte
	for i := 0; i < 30000; i++ {
		log, _ = os.ReadFile(path)
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(string(log), w)
		}
		if ok {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("the watchdog's log does not say %q:\n%s", want, log)
}

// waitExited waits (bounded) until pid is gone or a zombie.
func waitExited(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 20000; i++ {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(data), ") Z ") {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Errorf("the watchdog (pid %d) did not exit after the agent died", pid)
}

func TestMountsOf(t *testing.T) {
	dev, mnt := ext4Mount(t)
	idle, _ := testutil.LoopDevice(t, 16<<20)
	// A bind mount of the same filesystem is not a second filesystem.
	bind := t.TempDir()
	testutil.Run(t, "mount", "--bind", mnt, bind)
	t.Cleanup(func() {
		if _, err := testutil.Output("umount", bind); err != nil {
			t.Errorf("umount %s: %v", bind, err)
		}
	})
	ms, err := MountsOf([]string{dev, idle})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("MountsOf = %+v, want the one ext4", ms)
	}
	m := ms[0]
	if m.Device != dev || m.FSType != "ext4" || m.Source != dev {
		t.Errorf("mount = %+v", m)
	}
	if m.MountPoint != mnt && m.MountPoint != bind {
		t.Errorf("mount point %s, want %s or %s", m.MountPoint, mnt, bind)
	}
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if unix.Major(st.Dev) != m.Major || unix.Minor(st.Dev) != m.Minor {
		t.Errorf("device number %d:%d, want %d:%d", m.Major, m.Minor, unix.Major(st.Dev), unix.Minor(st.Dev))
	}
	if _, err := MountsOf([]string{"/dev/null"}); err == nil {
		t.Error("a character device: no error")
	}
}

func TestParseMountinfo(t *testing.T) {
	text := "36 35 98:0 /mnt1 /mnt/par\\040ent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"37 35 0:22 / /proc rw - proc proc rw\n"
	es, err := parseMountinfo(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].major != 98 || es[0].mountPoint != "/mnt/par ent" || es[0].root != "/mnt1" ||
		es[0].fsType != "ext3" || es[0].source != "/dev/root" || es[1].fsType != "proc" {
		t.Fatalf("parsed %+v", es)
	}
	if _, err := parseMountinfo("1 2 3\n"); err == nil {
		t.Error("malformed line: no error")
	}
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add("36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n")
	f.Add("37 35 0:22 / /proc rw - proc proc rw\n")
	f.Add("x - y")
	f.Fuzz(func(t *testing.T, s string) {
		es, err := parseMountinfo(s)
		if err != nil {
			return
		}
		for _, e := range es {
			if strings.Contains(e.fsType, " ") {
				t.Fatalf("field with a space: %+v", e)
			}
		}
	})
}
