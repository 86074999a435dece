package haproxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// lab is a real HAProxy (Debian's haproxy) with a backend of two servers and three
// runtime API sockets: unix at level admin, TCP at level admin, unix at level operator.
type lab struct {
	admin, tcp, operator *Client
	web1, web2           int // the servers' ports
}

// startHAProxy runs haproxy in the foreground on a generated configuration; it is
// stopped by its pid when the test ends.
func startHAProxy(t *testing.T) *lab {
	t.Helper()
	bin := testutil.RequireCommand(t, "haproxy", "haproxy")
	dir := t.TempDir()
	l := &lab{
		admin:    &Client{Network: "unix", Address: filepath.Join(dir, "admin.sock"), Timeout: 5 * time.Second},
		tcp:      &Client{Network: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)), Timeout: 5 * time.Second},
		operator: &Client{Network: "unix", Address: filepath.Join(dir, "operator.sock"), Timeout: 5 * time.Second},
		web1:     testutil.FreePort(t),
		web2:     testutil.FreePort(t),
	}
	cfg := fmt.Sprintf(`global
  stats socket %s mode 600 level admin
  stats socket ipv4@%s level admin
  stats socket %s mode 600 level operator
  maxconn 100
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend site
  bind 127.0.0.1:%d
  default_backend web
backend web
  balance roundrobin
  server web1 127.0.0.1:%d
  server web2 127.0.0.1:%d
backend spare
  server dr1 127.0.0.1:1 disabled
`, l.admin.Address, l.tcp.Address, l.operator.Address, testutil.FreePort(t), l.web1, l.web2)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin, "-f", path, "-db")
	cmd.Stdout, cmd.Stderr = out, out
	testutil.StartProcess(t, cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := l.admin.Ping(t.Context())
		if err == nil {
			return l
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(out.Name())
			t.Fatalf("haproxy did not answer on %s within 30s: %v\n%s", l.admin.Address, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func server(t *testing.T, c *Client, backend, name string) Server {
	t.Helper()
	s, err := c.Server(t.Context(), backend, name)
	if err != nil {
		t.Fatalf("Server %s/%s: %v", backend, name, err)
	}
	return s
}

func TestPing(t *testing.T) {
	l := startHAProxy(t)
	for _, c := range []*Client{l.admin, l.tcp} {
		if err := c.Ping(t.Context()); err != nil {
			t.Errorf("Ping %s: %v", c.Network, err)
		}
	}
	err := l.operator.Ping(t.Context())
	if err == nil || !strings.Contains(err.Error(), `is at level operator: changing servers needs "level admin"`) {
		t.Errorf("Ping at level operator: %v", err)
	}
	dead := &Client{Network: "unix", Address: filepath.Join(t.TempDir(), "gone.sock")}
	if err := dead.Ping(t.Context()); err == nil || !strings.Contains(err.Error(), "could not be reached (is HAProxy running, with this stats socket?)") {
		t.Errorf("Ping on a socket nobody serves: %v", err)
	}
}

func TestServerAndSetAddr(t *testing.T) {
	l := startHAProxy(t)
	want := Server{Backend: "web", Name: "web1", Addr: "127.0.0.1", Port: l.web1, Admin: "ready", Operational: "up"}
	if got := server(t, l.admin, "web", "web1"); got != want {
		t.Fatalf("Server web/web1: %+v, want %+v", got, want)
	}
	// Failover: web1 points at a recovered machine (another address and port).
	if err := l.admin.SetAddr(t.Context(), "web", "web1", "127.0.0.2", 8081); err != nil {
		t.Fatalf("SetAddr: %v", err)
	}
	want.Addr, want.Port = "127.0.0.2", 8081
	if got := server(t, l.tcp, "web", "web1"); got != want {
		t.Fatalf("Server web/web1 after SetAddr: %+v, want %+v", got, want)
	}
	// The same again changes nothing and is no error; the address only, or IPv6, too.
	for _, step := range []struct {
		addr string
		port int
	}{{"127.0.0.2", 8081}, {"127.0.0.3", 8081}, {"::1", 9000}, {"127.0.0.1", l.web1}} {
		if err := l.tcp.SetAddr(t.Context(), "web", "web1", step.addr, step.port); err != nil {
			t.Fatalf("SetAddr %s port %d: %v", step.addr, step.port, err)
		}
		if got := server(t, l.admin, "web", "web1"); got.Addr != step.addr || got.Port != step.port {
			t.Fatalf("Server web/web1 after SetAddr %s port %d: %+v", step.addr, step.port, got)
		}
	}
	if got := server(t, l.admin, "web", "web2"); got.Addr != "127.0.0.1" || got.Port != l.web2 {
		t.Fatalf("web2 changed too: %+v", got)
	}
}

func TestSetState(t *testing.T) {
	l := startHAProxy(t)
	// A server the configuration says "disabled" is in maintenance; set ready, it takes
	// traffic, though HAProxy keeps a flag of the configuration's word (admin state 4).
	if got := server(t, l.admin, "spare", "dr1"); got.Admin != "maint" {
		t.Fatalf("a disabled server reads %+v, want maint", got)
	}
	if err := l.admin.SetState(t.Context(), "spare", "dr1", "ready"); err != nil {
		t.Fatal(err)
	}
	if got := server(t, l.admin, "spare", "dr1"); got.Admin != "ready" {
		t.Fatalf("a disabled server set ready reads %+v, want ready", got)
	}
	for _, state := range []string{"maint", "drain", "ready", "maint", "ready"} {
		if err := l.admin.SetState(t.Context(), "web", "web2", state); err != nil {
			t.Fatalf("SetState %s: %v", state, err)
		}
		if got := server(t, l.admin, "web", "web2"); got.Admin != state {
			t.Fatalf("Server web/web2 after SetState %s: %+v", state, got)
		}
		if got := server(t, l.admin, "web", "web1"); got.Admin != "ready" {
			t.Fatalf("web1 changed too: %+v", got)
		}
	}
	err := l.operator.SetState(t.Context(), "web", "web2", "maint")
	if err == nil || !strings.Contains(err.Error(), "HAProxy did not set server web/web2 to maint: it answered") {
		t.Errorf("SetState at level operator: %v", err)
	}
}

func TestUnknownBackendOrServer(t *testing.T) {
	l := startHAProxy(t)
	ctx := t.Context()
	for what, err := range map[string]error{
		"Server of an unknown backend":   func() error { _, err := l.admin.Server(ctx, "nope", "web1"); return err }(),
		"Server of an unknown server":    func() error { _, err := l.admin.Server(ctx, "web", "nope"); return err }(),
		"SetAddr of an unknown backend":  l.admin.SetAddr(ctx, "nope", "web1", "127.0.0.1", 80),
		"SetAddr of an unknown server":   l.admin.SetAddr(ctx, "web", "nope", "127.0.0.1", 80),
		"SetState of an unknown backend": l.admin.SetState(ctx, "nope", "web1", "maint"),
		"SetState of an unknown server":  l.admin.SetState(ctx, "web", "nope", "maint"),
	} {
		t.Logf("%s: %v", what, err)
		if err == nil || !strings.Contains(err.Error(), "nope") && !strings.Contains(err.Error(), "No such") {
			t.Errorf("%s: %v", what, err)
		}
	}
}

func TestNamesAndValuesAreChecked(t *testing.T) {
	// Nothing is sent: the socket does not exist.
	c := &Client{Network: "unix", Address: filepath.Join(t.TempDir(), "none.sock")}
	ctx := t.Context()
	for what, err := range map[string]error{
		"a space":          c.SetState(ctx, "web", "web1 state ready", "maint"),
		"a semicolon":      c.SetState(ctx, "web;shutdown sessions server web/web2", "web1", "maint"),
		"a newline":        c.SetAddr(ctx, "web", "web1\nset server web/web2 state maint", "127.0.0.1", 80),
		"a slash":          func() error { _, err := c.Server(ctx, "web/web1", "x"); return err }(),
		"a backslash":      c.SetState(ctx, `web\`, "web1", "ready"),
		"an empty name":    c.SetState(ctx, "", "web1", "ready"),
		"an unknown state": c.SetState(ctx, "web", "web1", "up"),
		"a host name":      c.SetAddr(ctx, "web", "web1", "example.com", 80),
		"port 0":           c.SetAddr(ctx, "web", "web1", "127.0.0.1", 0),
		"port 70000":       c.SetAddr(ctx, "web", "web1", "127.0.0.1", 70000),
	} {
		if err == nil || strings.Contains(err.Error(), "could not be reached") {
			t.Errorf("%s: %v, want it refused before anything is sent", what, err)
		}
	}
}

// TestBounded: a socket that takes the command and never answers, or answers too much.
func TestBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 100)
				n, _ := conn.Read(buf)
				if strings.HasPrefix(string(buf[:n]), "show info") { // too much
					chunk := []byte(strings.Repeat("Name: HAProxy\n", 1000))
					for range 100 {
						if _, err := conn.Write(chunk); err != nil {
							return
						}
					}
				}
				time.Sleep(10 * time.Second) // silent
			}()
		}
	}()
	c := &Client{Network: "unix", Address: path, Timeout: 300 * time.Millisecond}
	start := time.Now()
	_, err = c.Server(t.Context(), "web", "web1")
	if err == nil || !strings.Contains(err.Error(), `did not answer "show servers state web" within 300ms`) || time.Since(start) > 2*time.Second {
		t.Errorf("Server on a silent socket: %v after %s", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	c.Timeout = 10 * time.Second
	start = time.Now()
	if err := c.SetState(ctx, "web", "web1", "maint"); err == nil || !strings.Contains(err.Error(), "context canceled") || time.Since(start) > 2*time.Second {
		t.Errorf("SetState cancelled after 100ms: %v after %s", err, time.Since(start))
	}
	if err := c.Ping(t.Context()); err == nil || !strings.Contains(err.Error(), "with more than 1048576 bytes") {
		t.Errorf("Ping answered with 1.4 MB: %v", err)
	}
}

func TestParseServersState(t *testing.T) {
	// Fields found by name: a future version may add or move them.
	out := "1\n# be_name srv_name srv_op_state srv_admin_state srv_addr srv_port extra\n" +
		"web a 2 0 10.0.0.1 80 x\nweb b 0 1 10.0.0.2 81 x\nweb c 3 8 10.0.0.3 82 x\nweb d 1 5 10.0.0.4 83 x\n\n"
	rows, err := parseServersState(out)
	if err != nil || len(rows) != 4 {
		t.Fatalf("parse: %v %v", rows, err)
	}
	want := []Server{
		{"web", "a", "10.0.0.1", 80, "ready", "up"},
		{"web", "b", "10.0.0.2", 81, "maint", "down"},
		{"web", "c", "10.0.0.3", 82, "drain", "stopping"},
		{"web", "d", "10.0.0.4", 83, "maint", "starting"},
	}
	for i, row := range rows {
		if s, err := serverOf(row); err != nil || s != want[i] {
			t.Errorf("row %d: %+v %v, want %+v", i, s, err, want[i])
		}
	}
	if _, err := parseServersState("Can't find backend.\n"); err == nil || !strings.Contains(err.Error(), `HAProxy answered "Can't find backend."`) {
		t.Errorf("parse of an error: %v", err)
	}
	for answer, ok := range map[string]bool{
		"IP changed from '127.0.0.1' to '127.0.0.2', port changed from '80' to '81' by 'stats socket command'\n": true,
		"no need to change the addr, no need to change the port by 'stats socket command'\n\n":                   true,
		"nothing changed\n": true,
		"IP changed from '127.0.0.1' to '127.0.0.2', can't change <port> to port map because it is incompatible\n": false,
		"Invalid addr 'x'\n": false,
		"No such server.\n":  false,
		"\n":                 false,
	} {
		if addrChanged(answer) != ok {
			t.Errorf("addrChanged(%q) = %v", answer, !ok)
		}
	}
}
