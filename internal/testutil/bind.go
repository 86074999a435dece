package testutil

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BINDOptions configure StartBIND.
type BINDOptions struct {
	// Zones the server is primary for, e.g. "lab.test." (a trailing dot is added if
	// missing). Empty: one zone, "lifeboat.test.".
	Zones []string
	// Records are each zone's initial records, keyed by the zone (with or without its
	// trailing dot), one per line in zone-file form, e.g. "www 300 IN A 192.0.2.10";
	// relative names are relative to the zone. StartBIND makes the SOA and NS records.
	Records map[string][]string
}

// BIND is a real BIND 9 (Debian's named) serving zones that accept RFC 2136 updates
// signed with one TSIG key. It runs in a network namespace of its own, joined to the
// host by a veth pair, and is stopped by its pid, the namespace and the pair deleted,
// when the test ends.
type BIND struct {
	Addr      string // host:port to send queries and updates to: the namespace's address, port 53
	HostIP    string // the host's end of the veth pair
	Netns     string // the network namespace named runs in
	Zones     []string
	KeyName   string // the TSIG key's name, fully qualified
	Algorithm string // "hmac-sha256"
	Secret    string // the key, base64, as tsig-keygen prints it
	Dir       string // configuration, zone files and their journals
	Log       string // named's output

	t      testing.TB
	conf   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartBIND starts named as opts say and waits until it answers for every zone (its
// SOA, authoritatively). It needs root and the bind9 and iproute2 packages
// (testutil.Need). Use b.Addr with b.KeyName, b.Algorithm and b.Secret as a client.
func StartBIND(t testing.TB, opts BINDOptions) *BIND {
	t.Helper()
	RequireRoot(t)
	named := RequireCommand(t, "named", "bind9")
	RequireCommand(t, "ip", "iproute2")
	zones := opts.Zones
	if len(zones) == 0 {
		zones = []string{"lifeboat.test."}
	}
	b := &BIND{t: t, Algorithm: "hmac-sha256", Dir: t.TempDir()}
	if err := os.Chmod(b.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b.Log = filepath.Join(b.Dir, "named.log")
	b.KeyName = "lifeboat-test-" + randomHex(t, 4) + "."
	b.Secret = bindSecret(t)
	for _, z := range zones {
		b.Zones = append(b.Zones, dns.Fqdn(strings.ToLower(z)))
	}
	hostIP, nsIP := freeSlash30(t)
	b.HostIP, b.Addr = hostIP, net.JoinHostPort(nsIP, "53")
	b.writeConfig(t, opts.Records)
	// A mistake in the configuration or a zone fails here at once, not as a server
	// that never answers.
	checkconf := RequireCommand(t, "named-checkconf", "bind9-utils")
	if out, err := exec.Command(checkconf, "-z", b.conf).CombinedOutput(); err != nil {
		t.Fatalf("named-checkconf -z %s: %v\n%s", b.conf, err, out)
	}
	b.netns(t, hostIP, nsIP)
	b.start(t, named)
	return b
}

// bindSecret is a new 32-byte HMAC key, base64.
func bindSecret(t testing.TB) string {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatalf("random: %v", err)
	}
	return base64.StdEncoding.EncodeToString(key)
}

// netns creates the namespace and the veth pair, the host's end with hostIP and the
// namespace's with nsIP, and deletes them when the test ends.
func (b *BIND) netns(t testing.TB, hostIP, nsIP string) {
	t.Helper()
	id := randomHex(t, 3)
	b.Netns = "lbdns-" + id
	outer, inner := "lbd"+id+"h", "lbd"+id+"n"
	Run(t, "ip", "netns", "add", b.Netns)
	t.Cleanup(func() {
		if _, err := Output("ip", "netns", "del", b.Netns); err != nil {
			t.Errorf("delete network namespace %s: %v", b.Netns, err)
		}
		// Gone with its peer in the namespace; this is for a pair that never got there.
		_, _ = Output("ip", "link", "del", outer)
	})
	Run(t, "ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
	Run(t, "ip", "link", "set", inner, "netns", b.Netns)
	Run(t, "ip", "addr", "add", hostIP+"/30", "dev", outer)
	Run(t, "ip", "link", "set", outer, "up")
	Run(t, "ip", "netns", "exec", b.Netns, "ip", "addr", "add", nsIP+"/30", "dev", inner)
	Run(t, "ip", "netns", "exec", b.Netns, "ip", "link", "set", inner, "up")
	Run(t, "ip", "netns", "exec", b.Netns, "ip", "link", "set", "lo", "up")
}

// freeSlash30 picks a random /30 of 10.250.0.0/16 that no address of the host falls
// in and returns its two usable addresses.
func freeSlash30(t testing.TB) (hostIP, nsIP string) {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatalf("the host's addresses: %v", err)
	}
	for try := 0; try < 100; try++ {
		base := net.IPv4(10, 250, byte(mrand.IntN(256)), byte(4*mrand.IntN(64))).To4()
		subnet := &net.IPNet{IP: base, Mask: net.CIDRMask(30, 32)}
		used := false
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && (subnet.Contains(n.IP) || n.Contains(base)) {
				used = true
			}
		}
		if !used {
			return net.IPv4(10, 250, base[2], base[3]+1).String(), net.IPv4(10, 250, base[2], base[3]+2).String()
		}
	}
	t.Fatal("no free /30 in 10.250.0.0/16 for the DNS server's network namespace")
	return "", ""
}

// writeConfig writes named.conf, the key and one zone file per zone into b.Dir.
func (b *BIND) writeConfig(t testing.TB, records map[string][]string) {
	t.Helper()
	zoneDir := filepath.Join(b.Dir, "zones") // named writes journals (.jnl) next to the files
	if err := os.Mkdir(zoneDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("key %q {\n  algorithm %s;\n  secret %q;\n};\n", b.KeyName, b.Algorithm, b.Secret)
	writePrivate(t, filepath.Join(b.Dir, "tsig.key"), key)
	ip, _, _ := net.SplitHostPort(b.Addr)
	var conf strings.Builder
	fmt.Fprintf(&conf, `include %q;
options {
  directory %q;
  pid-file none;
  session-keyfile %q;
  managed-keys-directory %q;
  listen-on port 53 { %s; };
  listen-on-v6 { none; };
  recursion no;
  dnssec-validation no;
  notify no;
  allow-transfer { none; };
};
controls { };
`, filepath.Join(b.Dir, "tsig.key"), b.Dir, filepath.Join(b.Dir, "session.key"), b.Dir, ip)
	byZone := map[string][]string{} // the zones' records, whichever way their names were written
	for z, rs := range records {
		fq := dns.Fqdn(strings.ToLower(z))
		if !slices.Contains(b.Zones, fq) {
			t.Fatalf("StartBIND: records for %s, which is not one of the zones %v", z, b.Zones)
		}
		byZone[fq] = append(byZone[fq], rs...)
	}
	for i, z := range b.Zones {
		file := filepath.Join(zoneDir, fmt.Sprintf("zone%d.db", i))
		writePrivate(t, file, zoneFile(z, byZone[z]))
		fmt.Fprintf(&conf, "zone %q {\n  type primary;\n  file %q;\n  update-policy { grant %s zonesub ANY; };\n};\n",
			z, file, b.KeyName)
	}
	b.conf = filepath.Join(b.Dir, "named.conf")
	writePrivate(t, b.conf, conf.String())
}

// zoneFile is a zone's initial content: SOA, NS (a name in the zone, with an address)
// and the records given.
func zoneFile(zone string, records []string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "$ORIGIN %s\n$TTL 300\n", zone)
	s.WriteString("@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 192.0.2.53\n")
	for _, r := range records {
		s.WriteString(r + "\n")
	}
	return s.String()
}

// writePrivate writes a file only its owner can read.
func writePrivate(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs named in the namespace, in the foreground, and waits until it answers.
func (b *BIND) start(t testing.TB, named string) {
	t.Helper()
	logf, err := os.OpenFile(b.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// ip netns exec executes named in place: the pid is named's. As root and without
	// -u, named keeps running as root and can write its journals in b.Dir.
	cmd := exec.Command("ip", "netns", "exec", b.Netns, named, "-g", "-4", "-n", "1", "-c", b.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start named: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	b.cmd, b.exited = cmd, exited
	t.Cleanup(b.Stop)
	if err := b.waitReady(30 * time.Second); err != nil {
		b.Stop()
		t.Fatalf("%v\nnamed's output:\n%s", err, b.tail())
	}
	t.Logf("named pid %d in network namespace %s on %s, zones %s", cmd.Process.Pid, b.Netns, b.Addr, strings.Join(b.Zones, " "))
}

// waitReady waits until named answers every zone's SOA authoritatively.
func (b *BIND) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	for _, zone := range b.Zones {
		for {
			select {
			case <-b.exited:
				return fmt.Errorf("named exited at start (%s)", b.cmd.ProcessState)
			default:
			}
			m := new(dns.Msg)
			m.SetQuestion(zone, dns.TypeSOA)
			m.RecursionDesired = false
			r, _, err := c.ExchangeContext(ctx, m, b.Addr)
			if err == nil && r.Rcode == dns.RcodeSuccess && r.Authoritative && len(r.Answer) > 0 {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("named did not serve zone %s on %s within %s (last: %v)", zone, b.Addr, timeout, answerOrErr(r, err))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func answerOrErr(r *dns.Msg, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("rcode %s, authoritative %v, %d answers", dns.RcodeToString[r.Rcode], r.Authoritative, len(r.Answer))
}

// tail is the end of named's output, for messages.
func (b *BIND) tail() string {
	out, _ := os.ReadFile(b.Log)
	if len(out) > 4000 {
		out = out[len(out)-4000:]
	}
	return strings.TrimSpace(string(out))
}

// Output is named's output so far (its log goes to stderr), for a failing test's message.
func (b *BIND) Output() string { return b.tail() }

// running reports whether named was started and has not exited.
func (b *BIND) running() bool {
	if b.cmd == nil {
		return false
	}
	select {
	case <-b.exited:
		return false
	default:
		return true
	}
}

// Stop kills named by its pid and waits for it: the server is down (its address
// refuses connections) until Start. Stopping a stopped server is harmless.
func (b *BIND) Stop() {
	if !b.running() {
		return
	}
	_ = b.cmd.Process.Kill()
	<-b.exited
	b.t.Logf("stopped named (pid %d)", b.cmd.Process.Pid)
}

// Start starts named again after Stop, on the same configuration and zones (with what
// updates wrote into their journals), and waits until it answers.
func (b *BIND) Start() {
	b.t.Helper()
	if b.running() {
		return
	}
	named := RequireCommand(b.t, "named", "bind9")
	b.start(b.t, named)
}

// Pause stops named with SIGSTOP: the kernel still accepts its connections and
// queries, but nothing answers, as with a hung server or a dropped route, until Resume.
func (b *BIND) Pause() {
	b.t.Helper()
	if !b.running() {
		b.t.Fatal("pause named: it is not running")
	}
	if err := b.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		b.t.Fatalf("pause named: %v", err)
	}
	// The stop reaches each thread when it next leaves the kernel: until every one is
	// stopped, a thread already past its receive can still answer.
	pid := b.cmd.Process.Pid
	for end := time.Now().Add(10 * time.Second); !threadsStopped(pid); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			b.t.Fatalf("pause named: pid %d's threads did not all stop within 10 s", pid)
		}
	}
}

// threadsStopped reports whether every thread of a process is stopped (state T).
func threadsStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// Resume lets a paused named go on (SIGCONT).
func (b *BIND) Resume() {
	if b.running() {
		_ = b.cmd.Process.Signal(syscall.SIGCONT)
	}
}
