package e2e

import (
	"bufio"
	"context"
	be "encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// member is a source server of a consistency-group test: a loop device with ext4
// mounted, and its own agent.
type member struct {
	name, dev, mnt  string
	id, cfg, state  string
	agent           *proc
	records         *recordWriter
	stopWrite, done chan struct{}
}

// installMember installs an agent of its own (config, state, machine id) for dev.
func (c *cluster) installMember(name, dev, mnt string) *member {
	c.t.Helper()
	tok, err := c.admin.CreateToken(context.Background(), api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1})
	if err != nil {
		c.t.Fatal(err)
	}
	m := &member{name: name, dev: dev, mnt: mnt, cfg: filepath.Join(c.dir, name+".yaml"), state: filepath.Join(c.dir, name+"-state")}
	out := c.cli("agent", "install", "--server", c.url, "--token-file", c.tokenFile(name+".token", tok.Secret), "--volume", dev,
		"--config", m.cfg, "--no-service", "--machine-id", "e2e-"+name+"-"+filepath.Base(c.dir))
	if m.id = strings.TrimSpace(out); !api.ValidID(api.PrefixSourceServer, m.id) {
		c.t.Fatalf("agent install printed %q, not a source server id", out)
	}
	return m
}

func (c *cluster) startMember(m *member, extra ...string) {
	args := append([]string{"agent", "run", "--config", m.cfg, "--state-dir", m.state, "--log-level", "debug"}, extra...)
	m.agent = c.start("agent-"+m.name, args...)
}

// recordWriter appends numbered records to a file on a member's volume, each naming
// the newest record number it has heard of from the other member, and tells the other
// member its own numbers over TCP once each record is written and synced.
type recordWriter struct {
	f      *os.File
	seen   atomic.Int64 // the other member's newest record heard of
	mu     sync.Mutex
	writes []time.Time // when each record was synced
}

// run appends records until stop is closed, sending each number on out.
func (w *recordWriter) run(out net.Conn, stop <-chan struct{}) error {
	var buf [8]byte
	for n := int64(1); ; n++ {
		select {
		case <-stop:
			return nil
		default:
		}
		if _, err := fmt.Fprintf(w.f, "%d %d\n", n, w.seen.Load()); err != nil {
			return err
		}
		if err := w.f.Sync(); err != nil {
			return err
		}
		w.mu.Lock()
		w.writes = append(w.writes, time.Now())
		w.mu.Unlock()
		be.BigEndian.PutUint64(buf[:], uint64(n))
		if _, err := out.Write(buf[:]); err != nil {
			return err
		}
		time.Sleep(3 * time.Millisecond)
	}
}

// listen records the newest number the other member sends.
func (w *recordWriter) listen(in net.Conn) {
	var buf [8]byte
	for {
		if _, err := readFull(in, buf[:]); err != nil {
			return
		}
		w.seen.Store(int64(be.BigEndian.Uint64(buf[:])))
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// maxGap returns the longest time between two of the writer's records in [from, to].
func (w *recordWriter) maxGap(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var gap time.Duration
	var prev time.Time
	for _, t := range w.writes {
		if t.Before(from) || t.After(to) {
			continue
		}
		if !prev.IsZero() && t.Sub(prev) > gap {
			gap = t.Sub(prev)
		}
		prev = t
	}
	return gap
}

// startExchange starts the two members' record writers, connected over TCP on
// 127.0.0.1; they stop at the test's end, before the volumes are unmounted.
func startExchange(t *testing.T, a, b *member) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ab, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ba, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*member{a, b} {
		f, err := os.OpenFile(filepath.Join(m.mnt, "records.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		m.records, m.stopWrite, m.done = &recordWriter{f: f}, make(chan struct{}), make(chan struct{})
	}
	run := func(m *member, conn net.Conn) {
		defer close(m.done)
		if err := m.records.run(conn, m.stopWrite); err != nil {
			t.Errorf("%s's writer: %v", m.name, err)
		}
	}
	go run(a, ab)
	go run(b, ba)
	go a.records.listen(ab)
	go b.records.listen(ba)
	t.Cleanup(func() {
		for _, m := range []*member{a, b} {
			close(m.stopWrite)
			<-m.done
			m.records.f.Close()
		}
		ab.Close()
		ba.Close()
	})
}

// records reads a member's record file from an exported image: record number → the
// other member's newest number it named. A last line cut short is left out.
func records(t *testing.T, img string) map[int64]int64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat /records.log", img).Output()
	if err != nil {
		t.Fatalf("debugfs cat of %s: %v", img, err)
	}
	got := map[int64]int64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		n, err1 := strconv.ParseInt(f[0], 10, 64)
		seen, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 == nil && err2 == nil {
			got[n] = seen
		}
	}
	return got
}

// exportRecords exports a member's PIT and reads its records.
func (c *cluster) exportRecords(m *member, pit string) map[int64]int64 {
	c.t.Helper()
	dir := filepath.Join(c.dir, "export-"+pit)
	c.cli("export", m.id, "--pit", pit, "--to", dir)
	defer os.RemoveAll(dir)
	return records(c.t, filepath.Join(dir, volumeNameOf(m.dev)+".img"))
}

// consistentPair checks one group point's copies: every record of each names only
// records of the other that its copy holds, and each copy's records are 1…n.
func consistentPair(t *testing.T, point string, a, b map[int64]int64) {
	t.Helper()
	for _, side := range []struct {
		name        string
		own, others map[int64]int64
	}{{"a", a, b}, {"b", b, a}} {
		if len(side.own) == 0 {
			t.Fatalf("group point %s: member %s's copy holds no record", point, side.name)
		}
		for n := int64(1); n <= int64(len(side.own)); n++ {
			if _, ok := side.own[n]; !ok {
				t.Fatalf("group point %s: member %s's copy lacks record %d of %d", point, side.name, n, len(side.own))
			}
		}
		for n, seen := range side.own {
			if seen > int64(len(side.others)) {
				t.Fatalf("group point %s: member %s's record %d names record %d of the other member, whose copy ends at %d: not one instant",
					point, side.name, n, seen, len(side.others))
			}
		}
	}
}

// completePoints lists a group's complete points created after since, oldest first.
func (c *cluster) completePoints(group string, since time.Time) []api.GroupPoint {
	c.t.Helper()
	page, err := c.admin.ListGroupPoints(context.Background(), group, 500, "", true)
	if err != nil {
		c.t.Fatal(err)
	}
	var out []api.GroupPoint
	for i := len(page.Items) - 1; i >= 0; i-- {
		if p := page.Items[i]; p.CreatedAt.After(since) {
			out = append(out, p)
		}
	}
	return out
}

// startReplicator2 starts a second replicator, rep2, on the cluster's site.
func (c *cluster) startReplicator2() {
	c.t.Helper()
	tok, err := c.admin.CreateToken(context.Background(), api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeReplicator, Uses: 1})
	if err != nil {
		c.t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(c.t))
	c.start("replicator2", "replicator", "--data", filepath.Join(c.dir, "rep2"), "--listen", addr, "--address", addr, "--name", "rep2",
		"--log-level", "debug", "--token-file", c.tokenFile("replicator2.token", tok.Secret))
	testutil.WaitTCP(c.t, addr, 30*time.Second)
}

// TestConsistencyGroupPointsAreOneInstant: two servers, each replicating to its own
// replicator, append records that name the newest record they heard of from each other
// over TCP while they write; every group point, exported from both members, is
// mutually consistent. Then a member is killed
// while it holds its freeze in a group point: the other thaws within the freeze bound,
// the point fails with an event naming the member, its volume is writable (the
// watchdog), and once the member's agent is back the next point is complete.
func TestConsistencyGroupPointsAreOneInstant(t *testing.T) {
	c := newCluster(t)
	c.startReplicator2()
	var ms []*member
	for i, name := range []string{"a", "b"} {
		dev, mnt := dataVolume(t, 64<<20, 3, 16)
		m := c.installMember(name, dev, mnt)
		rep := []string{"rep1", "rep2"}[i]
		if _, err := c.admin.SetServerReplicationSettings(context.Background(), m.id, api.ReplicationSettingsOverrides{DedicatedReplicator: &rep}); err != nil {
			t.Fatal(err)
		}
		c.startMember(m)
		ms = append(ms, m)
	}
	a, b := ms[0], ms[1]
	reps := map[string]bool{}
	for _, m := range ms {
		c.agentID = m.id
		reps[c.waitState(2*time.Minute, api.StateContinuous).ReplicatorID] = true
	}
	if len(reps) != 2 {
		t.Fatalf("the members replicate to %v, want two replicators", reps)
	}
	events := collectEvents(t, c, "group-point.failed")
	c.cli("groups", "create", "app", "--servers", a.id+","+b.id)
	start := time.Now()
	startExchange(t, a, b)
	time.Sleep(15 * time.Second)

	points := c.completePoints("app", start)
	if len(points) < 5 {
		t.Fatalf("%d complete group points in 15 s of points every second\n%s", len(points), c.memberLogs(ms))
	}
	picked := []api.GroupPoint{points[0], points[len(points)/3], points[2*len(points)/3], points[len(points)-1]}
	last := 0
	for _, p := range picked {
		pits := map[string]string{}
		for _, s := range p.Snapshots {
			pits[s.SourceServerID] = s.SnapshotID
		}
		ra, rb := c.exportRecords(a, pits[a.id]), c.exportRecords(b, pits[b.id])
		consistentPair(t, p.ID, ra, rb)
		if len(ra) < last {
			t.Fatalf("group point %s holds %d records of a, an older one held %d", p.ID, len(ra), last)
		}
		last = len(ra)
		t.Logf("group point %s at %s: a holds %d records, b %d", p.ID, p.Time.Format("15:04:05.000"), len(ra), len(rb))
	}
	killMemberMidPoint(t, c, a, b, events)
}

// killMemberMidPoint kills b's agent while it holds its freeze in a group point (its
// freeze bound raised to 5 s and each freeze held 2 s).
func killMemberMidPoint(t *testing.T, c *cluster, a, b *member, events *eventLog) {
	const bound = 5000
	for _, m := range []*member{a, b} {
		ms := bound
		if _, err := c.admin.SetServerReplicationSettings(context.Background(), m.id, api.ReplicationSettingsOverrides{FreezeTimeoutMs: &ms}); err != nil {
			t.Fatal(err)
		}
	}
	b.agent.stop()
	logPath := filepath.Join(c.dir, "agent-b.log")
	os.Remove(logPath)
	c.startMember(b, "--freeze-hold", "2s")
	deadline := time.Now().Add(90 * time.Second)
	for {
		if data, _ := os.ReadFile(logPath); strings.Contains(string(data), "group point: frozen") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("member b never froze for a group point\n%s", c.memberLogs([]*member{a, b}))
		}
		time.Sleep(20 * time.Millisecond)
	}
	killed := time.Now()
	b.agent.kill()
	writable := make(chan error, 1)
	go func() { writable <- os.WriteFile(filepath.Join(b.mnt, "after-kill"), []byte("x"), 0o644) }()
	select {
	case err := <-writable:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("member b's volume is still frozen 15 s after its agent died: the watchdog did not thaw it")
	}
	ev := events.wait(t, 30*time.Second, b.id)
	time.Sleep(2 * time.Second)
	if gap := a.records.maxGap(killed.Add(-3*time.Second), time.Now()); gap >= bound*time.Millisecond {
		t.Fatalf("member a's writes stopped for %s around the kill: it did not thaw within the freeze bound (%d ms)", gap, bound)
	} else {
		t.Logf("member a's longest write pause around the kill: %s; event: %s", gap, ev)
	}
	c.startMember(b)
	deadline = time.Now().Add(2 * time.Minute)
	for len(c.completePoints("app", killed)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no complete group point after member b's agent came back\n%s", c.memberLogs([]*member{a, b}))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// memberLogs returns the tails of the members' agent logs.
func (c *cluster) memberLogs(ms []*member) string {
	var sb strings.Builder
	for _, m := range ms {
		data, _ := os.ReadFile(filepath.Join(c.dir, "agent-"+m.name+".log"))
		lines := strings.Split(string(data), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(&sb, "--- agent %s (tail)\n%s\n", m.name, strings.Join(lines, "\n"))
	}
	return sb.String() + c.logs()
}

// eventLog collects the API events of one type from the test's start.
type eventLog struct {
	mu   sync.Mutex
	seen []string
}

func collectEvents(t *testing.T, c *cluster, typ string) *eventLog {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	l := &eventLog{}
	go func() {
		_ = c.admin.Events(ctx, 0, func(e api.Event) error {
			if e.Type == typ {
				l.mu.Lock()
				l.seen = append(l.seen, fmt.Sprintf("%s %v", e.Type, e.Data))
				l.mu.Unlock()
			}
			return nil
		})
	}()
	return l
}

// wait returns the first event that mentions substr.
func (l *eventLog) wait(t *testing.T, d time.Duration, substr string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for _, e := range l.seen {
			if strings.Contains(e, substr) {
				l.mu.Unlock()
				return e
			}
		}
		l.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no event naming %s within %s", substr, d)
	return ""
}
