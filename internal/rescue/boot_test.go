package rescue

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// bootBound bounds the rescue media's boot to its self-test's end. A TCG boot of
// Debian's kernel takes ~10 s on an idle machine, several times that on a loaded one.
const bootBound = 4 * time.Minute

// TestRescueISOBoots builds the rescue media with a freshly built lifeboat and boots it
// in QEMU (TCG: no KVM needed) with a blank 64 MiB virtio disk, in self-test mode: its
// init brings up the network, runs `lifeboat failback-client disks` and powers off.
func TestRescueISOBoots(t *testing.T) {
	qemu := testutil.RequireCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	testutil.RequireCommand(t, "xorriso", "xorriso")
	_, err := findTools()
	testutil.Need(t, err == nil, "the isolinux files are missing (apt-get install isolinux syslinux-common)")
	testutil.Need(t, checkStatic("/bin/busybox", "busybox", "") == nil, "no static busybox (apt-get install busybox-static)")
	kernel, initrd, _ := testutil.HostKernel(t)
	goBin, err := exec.LookPath("go")
	testutil.Need(t, err == nil, "go is not on PATH")

	dir := t.TempDir()
	binary := buildLifeboat(t, goBin, dir)
	iso := filepath.Join(dir, "rescue.iso")
	started := time.Now()
	err = BuildISO(t.Context(), ISOOptions{
		Out: iso, Kernel: kernel, Initrd: initrd, Binary: binary, Busybox: "/bin/busybox",
		KernelArgs: []string{"lifeboat.selftest=1"},
		Progress:   func(step string) { t.Logf("build-iso: %s", step) },
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(iso)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("the ISO's mode is %o, want 600", st.Mode().Perm())
	}
	t.Logf("built %s (%d MiB) in %s", iso, st.Size()>>20, time.Since(started).Round(time.Millisecond))

	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil { // sparse
		t.Fatal(err)
	}
	serial := filepath.Join(dir, "serial.log")
	done := startQEMU(t, qemu, "-accel", "tcg", "-m", "1024", "-nographic", "-monitor", "none",
		"-serial", "file:"+serial, "-boot", "d", "-cdrom", iso,
		"-drive", "file="+disk+",if=virtio,format=raw",
		"-netdev", "user,id=n", "-device", "virtio-net-pci,netdev=n", "-no-reboot")

	booted := time.Now()
	console := waitSerial(t, serial, done, "LIFEBOAT-RESCUE-SELFTEST-END rc=", bootBound)
	t.Logf("the self-test ended %s after QEMU started", time.Since(booted).Round(time.Second))
	if !strings.Contains(console, "LIFEBOAT-RESCUE-SELFTEST-END rc=0") {
		t.Fatalf("the self-test failed:\n%s", tail(console, 3000))
	}
	if !strings.Contains(console, "LIFEBOAT-RESCUE-READY nic=") {
		t.Errorf("the network never came up:\n%s", tail(console, 3000))
	}
	if !hasDiskRow(console, "vda", "67108864") {
		t.Errorf("failback-client disks did not list vda with 67108864 bytes:\n%s", tail(console, 3000))
	}
	// Then init powers the machine off, which ends QEMU.
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Errorf("QEMU still runs a minute after the self-test: init did not power off")
	}
}

// buildLifeboat builds cmd/lifeboat statically (the rescue media has no libc to offer).
func buildLifeboat(t *testing.T, goBin, dir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	gomod, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		t.Fatalf("find the module's root (go env GOMOD): %v", err)
	}
	binary := filepath.Join(dir, "lifeboat")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", binary, "./cmd/lifeboat")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/lifeboat: %v\n%s", err, out)
	}
	return binary
}

// startQEMU starts QEMU and returns a channel closed when it has exited. When the test
// ends, QEMU is killed by its pid and waited for, whatever happened.
func startQEMU(t *testing.T, qemu string, args ...string) <-chan struct{} {
	t.Helper()
	cmd := exec.Command(qemu, args...)
	var output tailBuffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("QEMU (pid %d) did not exit within 30 s of SIGKILL", pid)
			return
		}
		if t.Failed() {
			t.Logf("QEMU (pid %d) output:\n%s", pid, output.String())
		}
	})
	return done
}

// waitSerial waits until the serial log holds want, and returns the log. It fails the
// test when QEMU exits first or timeout passes.
func waitSerial(t *testing.T, path string, done <-chan struct{}, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return string(b)
		}
		select {
		case <-done:
			b, _ = os.ReadFile(path)
			if strings.Contains(string(b), want) {
				return string(b)
			}
			t.Fatalf("QEMU exited before the console showed %q:\n%s", want, tail(string(b), 3000))
		case <-deadline:
			t.Fatalf("the console did not show %q within %s:\n%s", want, timeout, tail(string(b), 3000))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// hasDiskRow reports whether a line of the console starts with the disk's name and
// holds its size in bytes.
func hasDiskRow(console, name, bytes string) bool {
	for _, line := range strings.Split(console, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[0] == name && strings.Contains(line, bytes) {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
