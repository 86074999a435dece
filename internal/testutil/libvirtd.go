package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Libvirtd is a private libvirtd (Debian's libvirt-daemon-system) for one test: it runs
// as root in a mount namespace of its own where /etc/libvirt, /run/libvirt,
// /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are directories of Dir, so
// it shares no state with a system libvirtd that may run on the machine; it listens on
// a Unix socket in Dir and on TCP 127.0.0.1:Port with no authentication (a
// remote-style URI). QEMU runs as root without a security driver, namespaces or
// cgroups (the test machine is a container). When the test ends its domains are
// destroyed, its networks removed, libvirtd stopped by its pid, the QEMU and dnsmasq
// processes it left killed by their pids, and Dir removed.
type Libvirtd struct {
	Dir     string // everything of this libvirtd
	Port    int
	TCPURI  string // qemu+tcp://127.0.0.1:Port/system
	UnixURI string // qemu:///system?socket=…
	Socket  string // the read-write Unix socket
	// With LibvirtdOptions.TLS: the TLS listener, a client credentials bundle it
	// accepts (client certificate, key, CA) and one it refuses (a certificate of
	// another CA).
	TLSPort                 int
	TLSURI                  string // qemu+tls://127.0.0.1:TLSPort/system
	TLSCredentials          []byte
	UntrustedTLSCredentials []byte

	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{}
}

// LibvirtdOptions configure StartLibvirtdWith.
type LibvirtdOptions struct {
	// TLS makes libvirtd listen for TLS too, with a fresh CA (auth_tls none: the
	// client certificate is the credential).
	TLS bool
}

// StartLibvirtd starts a private libvirtd and waits until it answers on TCP.
func StartLibvirtd(t testing.TB) *Libvirtd {
	t.Helper()
	return StartLibvirtdWith(t, LibvirtdOptions{})
}

// StartLibvirtdWith starts a private libvirtd as StartLibvirtd does, with options.
func StartLibvirtdWith(t testing.TB, o LibvirtdOptions) *Libvirtd {
	t.Helper()
	RequireRoot(t)
	bin := RequireCommand(t, "libvirtd", "libvirt-daemon-system")
	RequireCommand(t, "virsh", "libvirt-clients")
	RequireCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	RequireCommand(t, "unshare", "util-linux")
	dir, err := os.MkdirTemp("", "lbtest-libvirtd-")
	if err != nil {
		t.Fatal(err)
	}
	l := &Libvirtd{Dir: dir, Port: FreePort(t), t: t, Socket: filepath.Join(dir, "sock", "libvirt-sock")}
	l.TCPURI = fmt.Sprintf("qemu+tcp://127.0.0.1:%d/system", l.Port)
	l.UnixURI = "qemu:///system?socket=" + l.Socket
	t.Cleanup(l.cleanup)
	l.writeConfig(t)
	if o.TLS {
		l.TLSPort = FreePort(t)
		l.TLSURI = fmt.Sprintf("qemu+tls://127.0.0.1:%d/system", l.TLSPort)
		l.writeTLS(t)
	}
	l.start(t, bin)
	return l
}

func (l *Libvirtd) path(p ...string) string { return filepath.Join(append([]string{l.Dir}, p...)...) }

// writeConfig copies /etc/libvirt and writes libvirtd.conf and qemu.conf for the test.
func (l *Libvirtd) writeConfig(t testing.TB) {
	t.Helper()
	for _, d := range []string{"etc", "run", "lib", "cache", "log", "sock", "pools"} {
		mkdirAll(t, l.path(d))
	}
	Run(t, "cp", "-a", "/etc/libvirt/.", l.path("etc"))
	// None of the machine's domains, networks, pools or secrets: the default network
	// would otherwise be defined (and, autostarted, add NAT rules to the host).
	for _, d := range []string{"qemu", "storage", "secrets"} {
		if err := os.RemoveAll(l.path("etc", d)); err != nil {
			t.Fatal(err)
		}
	}
	mkdirAll(t, l.path("etc", "qemu"))
	conf := fmt.Sprintf(`listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "%d"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_dir = %q
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
log_outputs = "3:stderr"
`, l.Port, l.path("sock"))
	writePrivate(t, l.path("libvirtd.conf"), conf)
	qemu, err := os.ReadFile(l.path("etc", "qemu.conf"))
	if err != nil {
		t.Fatal(err)
	}
	qemu = append(qemu, []byte(`
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
`)...)
	writePrivate(t, l.path("etc", "qemu.conf"), string(qemu))
}

// start runs libvirtd in the foreground in its mount namespace (unshare and sh exec
// it: the pid is libvirtd's) and waits until it answers.
func (l *Libvirtd) start(t testing.TB, bin string) {
	t.Helper()
	script := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755 lbtest-run /run
mkdir -p /run/libvirt /run/lock
mount --bind %[1]s/run /run/libvirt
mount --bind %[1]s/etc /etc/libvirt
mount --bind %[1]s/lib /var/lib/libvirt
mount --bind %[1]s/cache /var/cache/libvirt
mount --bind %[1]s/log /var/log/libvirt
exec %[2]s --listen -f %[1]s/libvirtd.conf -p %[1]s/libvirtd.pid
`, l.Dir, bin)
	logf, err := os.OpenFile(l.path("libvirtd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start libvirtd: %v", err)
	}
	l.cmd, l.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(l.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	port := l.Port
	if l.TLSPort != 0 {
		port = l.TLSPort // listened on after TCP
	}
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-l.exited:
			t.Fatalf("libvirtd exited at start (%s):\n%s", cmd.ProcessState, l.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not listen on 127.0.0.1:%d within 30s:\n%s", port, l.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("libvirtd pid %d at %s (state in %s)", cmd.Process.Pid, l.TCPURI, l.Dir)
}

// Pid is libvirtd's process id.
func (l *Libvirtd) Pid() int { return l.cmd.Process.Pid }

// Output is the end of libvirtd's log, for a failing test's message.
func (l *Libvirtd) Output() string {
	out, _ := os.ReadFile(l.path("libvirtd.log"))
	if len(out) > 6000 {
		out = out[len(out)-6000:]
	}
	return strings.TrimSpace(string(out))
}

// Virsh runs virsh against this libvirtd and returns its output.
func (l *Libvirtd) Virsh(args ...string) (string, error) {
	return Output("virsh", append([]string{"-c", l.TCPURI}, args...)...)
}

// InNamespace runs a command in libvirtd's mount namespace (e.g. to mount a small
// tmpfs where a storage pool will live: the mount is libvirtd's only and goes with it).
func (l *Libvirtd) InNamespace(t testing.TB, name string, args ...string) string {
	t.Helper()
	return Run(t, "nsenter", append([]string{"-t", strconv.Itoa(l.Pid()), "-m", "--", name}, args...)...)
}

// PoolDir is a new directory for a storage pool of this libvirtd.
func (l *Libvirtd) PoolDir(t testing.TB, name string) string {
	t.Helper()
	d := l.path("pools", name)
	mkdirAll(t, d)
	return d
}

// cleanup destroys what the tests left, stops libvirtd and whatever it started.
func (l *Libvirtd) cleanup() {
	if l.cmd != nil && l.running() {
		l.destroyAll()
		_ = l.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-l.exited:
		case <-time.After(15 * time.Second):
			_ = l.cmd.Process.Kill()
			<-l.exited
		}
	}
	l.killLeftovers()
	if err := os.RemoveAll(l.Dir); err != nil {
		l.t.Logf("remove %s: %v", l.Dir, err)
	}
}

func (l *Libvirtd) running() bool {
	select {
	case <-l.exited:
		return false
	default:
		return true
	}
}

// destroyAll powers off every domain and removes every network of this libvirtd (all
// of them are the tests').
func (l *Libvirtd) destroyAll() {
	out, _ := l.Virsh("list", "--name")
	for _, d := range strings.Fields(out) {
		if _, err := l.Virsh("destroy", d); err != nil {
			l.t.Logf("destroy domain %s: %v", d, err)
		}
	}
	out, _ = l.Virsh("net-list", "--name")
	for _, n := range strings.Fields(out) {
		if _, err := l.Virsh("net-destroy", n); err != nil {
			l.t.Logf("destroy network %s: %v", n, err)
		}
	}
}

// killLeftovers kills, by the pids libvirtd wrote, the QEMU and dnsmasq processes a
// stopped libvirtd left running.
func (l *Libvirtd) killLeftovers() {
	pidFiles, _ := filepath.Glob(l.path("run", "qemu", "*.pid"))
	more, _ := filepath.Glob(l.path("lib", "dnsmasq", "*.pid"))
	more2, _ := filepath.Glob(l.path("run", "network", "*.pid"))
	for _, f := range append(append(pidFiles, more...), more2...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmdline), "qemu") && !strings.Contains(string(cmdline), "dnsmasq") {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			l.t.Logf("killed pid %d left by libvirtd (%s)", pid, filepath.Base(f))
		}
	}
}
