package replicator_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/replicator"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
	"github.com/lifeboat-dr/lifeboat/internal/wire/wiretest"
)

// storeFiles lists the files of a file staging store.
func storeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func heapInuse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// TestHostileHellosAreRefusedBeforeTheStore: Hellos that declare absurd volume sizes,
// sums, counts or names are each answered with a PROTOCOL_ERROR naming the bound, the
// replicator's heap does not grow (one such Hello once took it from 26 to 592 MB), and
// nothing is written to the staging store.
func TestHostileHellosAreRefusedBeforeTheStore(t *testing.T) {
	e := startReplicator(t, nil)
	vol := func(name string, size uint64) wire.Volume {
		return wire.Volume{Name: name, SizeBytes: size, BlockSize: 512}
	}
	// A sound Hello is welcomed: the harness works, and the store is open.
	a := e.newAgent()
	c, err := e.dial(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(wiretest.HelloFrame(a.id, 1, []wire.Volume{vol("vda", 1<<30)})); err != nil {
		t.Fatal(err)
	}
	if m, err := answer(c); err != nil || m.Type() != wire.TypeWelcome {
		t.Fatalf("a sound Hello was answered with %v (%v)", m, err)
	}
	c.Close()
	files := storeFiles(t, e.store)

	many := make([]wire.Volume, 300)
	for i := range many {
		many[i] = vol(fmt.Sprintf("v%d", i), 1<<40)
	}
	cases := []struct {
		name  string
		count int
		vols  []wire.Volume
		want  string
	}{
		{"one volume over 64 TiB", 1, []wire.Volume{vol("vda", wire.MaxVolumeBytes+1)}, "64 TiB"},
		{"a volume of 1 PiB", 1, []wire.Volume{vol("vda", 1<<50)}, "64 TiB"},
		{"a volume of 2^64-1 bytes", 1, []wire.Volume{vol("vda", ^uint64(0))}, "64 TiB"},
		{"five volumes of 64 TiB", 5, []wire.Volume{vol("a", 64<<40), vol("b", 64<<40), vol("c", 64<<40), vol("d", 64<<40), vol("e", 64<<40)}, "256 TiB"},
		{"300 volumes", 300, many, "at most 256"},
		{"65535 volumes declared", 65535, nil, "at most 256"},
		{"a name that climbs out", 1, []wire.Volume{vol("../../../../../tmp/lifeboat-escape", 1<<20)}, "not a volume name"},
		{"a path as name", 1, []wire.Volume{vol("/etc/passwd", 1<<20)}, "not a volume name"},
	}
	before := heapInuse()
	answers := make([]wire.Msg, len(cases))
	errs := make([]error, len(cases))
	for i, tc := range cases {
		a := e.newAgent() // each its own server: sessions that were wrongly opened would all stay open
		c, err := e.dial(a)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(wiretest.HelloFrame(a.id, tc.count, tc.vols)); err != nil {
			t.Fatal(err)
		}
		answers[i], errs[i] = answer(c)
	}
	growth := heapInuse() - before
	t.Logf("heap in use grew by %d KiB over %d hostile Hellos", growth>>10, len(cases))
	if growth > 8<<20 {
		t.Errorf("the replicator's heap grew by %d MiB while refusing hostile Hellos", growth>>20)
	}
	for i, tc := range cases {
		werr, ok := answers[i].(*wire.Error)
		if !ok || werr.Code != wire.CodeProtocol || !strings.Contains(werr.Message, tc.want) {
			t.Errorf("%s: answered %v (%v), want a %s Error saying %q", tc.name, answers[i], errs[i], wire.CodeProtocol, tc.want)
		}
	}
	if got := storeFiles(t, e.store); !slices.Equal(got, files) {
		t.Errorf("refused Hellos changed the staging store: %v, was %v", got, files)
	}
}

// dialFrom opens a TCP connection to addr from the local address ip (any of 127/8).
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("connect from %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedUnanswered says whether the peer closes c without sending anything within 5s;
// it fails the test when c is still open then or gets data.
func closedUnanswered(t *testing.T, what string, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("%s: still open after 5s, want it closed at once", what)
	}
	if n > 0 || err == nil {
		t.Fatalf("%s: answered, want it closed unanswered", what)
	}
}

// stillOpen checks that c is neither closed nor answered for a moment.
func stillOpen(t *testing.T, what string, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Fatalf("%s: %v, want it waiting for its handshake", what, err)
	}
}

// welcomed waits (up to 10s) until agent a gets a Welcome for a sound Hello.
func welcomed(t *testing.T, e *env, a agent, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := e.dial(a)
		var m wire.Msg
		if err == nil {
			if _, err = c.Write(wiretest.HelloFrame(a.id, 1, []wire.Volume{{Name: "vda", SizeBytes: 1 << 20, BlockSize: 512}})); err == nil {
				m, err = answer(c)
			}
			c.Close()
		}
		if err == nil && m.Type() == wire.TypeWelcome {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no Welcome within 10s (last: %v, %v)", what, m, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHandshakeCaps: connections that never finish their TLS handshake hold at most
// MaxHandshakesPerIP places per address and MaxHandshakes overall; past either cap a
// new connection is closed at once, and once they leave, agents are served again.
func TestHandshakeCaps(t *testing.T) {
	e := startReplicator(t, func(c *replicator.Config) { c.MaxHandshakes, c.MaxHandshakesPerIP = 3, 2 })
	addr := e.rep.Addr()
	silent := []net.Conn{dialFrom(t, "127.0.0.1", addr), dialFrom(t, "127.0.0.1", addr)}
	for i, c := range silent {
		stillOpen(t, fmt.Sprintf("silent connection %d from 127.0.0.1", i+1), c)
	}
	closedUnanswered(t, "a 3rd connection from 127.0.0.1", dialFrom(t, "127.0.0.1", addr))
	other := dialFrom(t, "127.0.0.2", addr)
	stillOpen(t, "a connection from 127.0.0.2 while 127.0.0.1 is at its cap", other)
	closedUnanswered(t, "a connection from 127.0.0.3 past the overall cap", dialFrom(t, "127.0.0.3", addr))
	for _, c := range append(silent, other) {
		c.Close()
	}
	welcomed(t, e, e.newAgent(), "an agent after the silent connections left")
}

// busyCount opens n connections of the given agents (round robin) without a Hello and
// returns how many the replicator refused with REPLICATOR_BUSY; the others wait for
// their Hello. Which one is refused depends on the order the replicator takes them in.
func busyCount(t *testing.T, e *env, n int, agents ...agent) (busy int, open []net.Conn) {
	t.Helper()
	for i := range n {
		c, err := e.dial(agents[i%len(agents)])
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	type result struct {
		m   wire.Msg
		err error
	}
	results := make(chan result, n)
	for _, c := range open {
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			m, err := wire.NewConn(c).ReadMsg()
			results <- result{m, err}
		}()
	}
	for range n {
		r := <-results
		if ne, ok := errors.AsType[net.Error](r.err); ok && ne.Timeout() {
			continue // waiting for its Hello
		}
		if werr, ok := r.m.(*wire.Error); ok && werr.Code == wire.CodeBusy {
			busy++
			continue
		}
		t.Fatalf("a connection was answered %v (%v)", r.m, r.err)
	}
	return busy, open
}

// TestSessionCaps: past MaxSessions connections of authenticated agents, and past 4 of
// one source server, the replicator answers REPLICATOR_BUSY; another server is served
// while one is at its cap, and places come back when connections end.
func TestSessionCaps(t *testing.T) {
	e := startReplicator(t, func(c *replicator.Config) { c.MaxSessions = 6 })
	a, b := e.newAgent(), e.newAgent()
	busy, open := busyCount(t, e, 5, a)
	if busy != 1 {
		t.Fatalf("5 connections of one server: %d refused, want 1 (a server may hold 4)", busy)
	}
	welcomed(t, e, b, "another server while the first is at its cap")
	busy, more := busyCount(t, e, 3, b, e.newAgent(), e.newAgent())
	if busy != 1 {
		t.Fatalf("3 more connections with 4 of 6 places taken: %d refused, want 1", busy)
	}
	for _, c := range append(open, more...) {
		c.Close()
	}
	welcomed(t, e, a, "the first server once its connections ended")
}

// TestAFailedOpenDoesNotHoldUpTheNextSession: when a session is refused after it took
// its server's place (here its staging store cannot be opened), the place is given
// back: the agent's next session is answered at once, not after the 2 minutes the
// replicator waits for a previous session to end.
func TestAFailedOpenDoesNotHoldUpTheNextSession(t *testing.T) {
	e := startReplicator(t, nil)
	a := e.newAgent()
	e.cp.mu.Lock()
	e.cp.assigned[0].Settings.StagingStoreURL = "nosuchscheme://bucket"
	e.cp.mu.Unlock()
	for i := range 3 {
		c, err := e.dial(a)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(wiretest.HelloFrame(a.id, 1, []wire.Volume{{Name: "vda", SizeBytes: 1 << 20, BlockSize: 512}})); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := wire.NewConn(c).ReadMsg()
		if werr, ok := m.(*wire.Error); !ok || werr.Code != wire.CodeStagingError {
			t.Fatalf("session %d: answered %v (%v), want STAGING_STORAGE_ERROR within 10s", i+1, m, err)
		}
		c.Close()
	}
}
