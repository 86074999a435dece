// Package testutil holds what Lifeboat's tests share: the rule for tests that need root
// or a device (skip with a message on a laptop, fail in CI), loop devices with ext4,
// and processes that are always stopped by their pid when a test ends.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI (CI=true), where nothing may be skipped for
// want of a tool, a device or privilege.
func InCI() bool { return os.Getenv("CI") == "true" }

// Need skips the test when ok is false, or fails it in CI: a silent skip hides breakage.
// what says what is missing and how to get it.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("CI=true but %s", what)
	}
	t.Skipf("skipped: %s (run the README's test command as root to run it)", what)
}

// RequireRoot needs the test to run as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	Need(t, os.Geteuid() == 0, "this test needs root")
}

// RequireCommand needs an executable on PATH and returns its path. pkg names the
// Debian package that provides it.
func RequireCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, fmt.Sprintf("%s is not installed (apt-get install %s)", name, pkg))
	return p
}

// Run runs a command and fails the test with its output if it fails. It returns stdout.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := Output(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// Output runs a command and returns its stdout; the error carries its stderr.
func Output(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartProcess starts cmd and registers a cleanup that kills it by its pid and waits
// for it, even when the test fails.
func StartProcess(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Logf("stopped %s (pid %d)", cmd.Path, pid)
	})
}

// WaitTCP waits until addr accepts TCP connections or the timeout passes.
func WaitTCP(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not accept connections within %s: %v", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
