package replicator

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// testSerial is the certificate serial of the tests' agents.
const testSerial = "0a"

// stubControlPlane assigns one server to the replicator and records its PITs; the
// calls a session does not make fail.
type stubControlPlane struct {
	fakeRecorder
	assigned api.AssignedSourceServer
}

var errNotInTest = errors.New("not used by this test")

func (c *stubControlPlane) AssignedSourceServer(_ context.Context, _, server string) (api.AssignedSourceServer, bool, error) {
	return c.assigned, server == c.assigned.SourceServer.ID, nil
}

func (c *stubControlPlane) Heartbeat(context.Context, string, api.HeartbeatRequest) (api.HeartbeatResponse, error) {
	return api.HeartbeatResponse{}, errNotInTest
}

func (c *stubControlPlane) AssignedSourceServersWait(context.Context, string, string, time.Duration) (api.AssignedSourceServerList, error) {
	return api.AssignedSourceServerList{}, errNotInTest
}

func (c *stubControlPlane) DeleteRecoverySnapshots(context.Context, string, []string) (api.DeleteRecoverySnapshotsResponse, error) {
	return api.DeleteRecoverySnapshotsResponse{}, errNotInTest
}

func (c *stubControlPlane) UpdateReplicationState(context.Context, string, api.ReplicationStateUpdate) (api.ReplicationState, error) {
	return api.ReplicationState{}, errNotInTest
}

func (c *stubControlPlane) StagingStoreKey(context.Context, string, api.StagingStoreKeyRequest) (api.StagingStoreKeyResponse, error) {
	return api.StagingStoreKeyResponse{}, errNotInTest
}

// replicator is a replicator (not running: no listener, no loops) whose default store
// is the environment's, and whose control plane assigns it the environment's server.
func (e *ingestEnv) replicator(cp *stubControlPlane) *Replicator {
	e.t.Helper()
	cp.assigned = api.AssignedSourceServer{SourceServer: api.SourceServer{ID: e.server}, CertificateSerials: []string{testSerial},
		Control: api.ReplicationControl{Desired: api.DesiredReplicating}}
	r, err := New(Config{ID: api.NewID(api.PrefixReplicator), ControlPlane: cp, TLS: &tls.Config{}, DefaultStoreURL: "test:store"})
	if err != nil {
		e.t.Fatal(err)
	}
	r.repos["test:store"] = e.repo // open already: the control plane is not asked for its key
	return r
}

// connect serves a session of the environment's agent on an in-memory connection and
// returns the agent's end of it; served is closed when the replicator is done with it.
func (e *ingestEnv) connect(ctx context.Context, r *Replicator) (agent *wire.Conn, served <-chan struct{}) {
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer b.Close()
		r.serve(ctx, wire.NewConn(b), pki.Identity{Kind: pki.KindSourceServer, ID: e.server}, testSerial)
	}()
	e.t.Cleanup(func() {
		a.Close()
		<-done
	})
	return wire.NewConn(a), done
}

func (e *ingestEnv) hello() *wire.Hello {
	return &wire.Hello{Version: 1, SourceServerID: e.server, AgentVersion: "test", Tracker: "scan", TrackerGeneration: 1, Volumes: e.vols}
}

// write sends m on c at once.
func write(t *testing.T, c *wire.Conn, m wire.Msg) {
	t.Helper()
	if err := c.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// read returns the next message on c.
func read(t *testing.T, c *wire.Conn) wire.Msg {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(guard))
	m, err := c.ReadMsg()
	if err != nil {
		t.Fatalf("read from the replicator: %v", err)
	}
	return m
}

// readAll reads c until the replicator closes it.
func readAll(c *wire.Conn) []wire.Msg {
	var msgs []wire.Msg
	_ = c.SetReadDeadline(time.Now().Add(guard))
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return msgs
		}
		msgs = append(msgs, m)
	}
}

// TestSessionReplacedEndsBeforeTheNewOneOpensTheHeads: a second session of a server
// stops the first, and is welcomed only once the first has ended — its last flush
// made, its heads closed — though the first one's agent is slow to read: two sessions
// never write one server's heads. The new session's PIT holds what the old one
// acknowledged, and the old one's agent hears why it was stopped.
func TestSessionReplacedEndsBeforeTheNewOneOpensTheHeads(t *testing.T) {
	ctx := context.Background()
	e := newIngestEnv(t, store.Options{}, 4)
	r := e.replicator(&stubControlPlane{})
	a1, _ := e.connect(ctx, r)
	if _, _, err := wire.Open(a1, e.hello(), guard); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	old := r.sessions[e.server]
	r.mu.Unlock()
	first := map[uint64][]byte{0: content(false), 3: content(true)}
	// The first agent sends a batch, then reads nothing for a while: the connection
	// holds the old session's answers, so the old session cannot end until it reads.
	write(t, a1, e.blocks(1, 0, first))

	a2, _ := e.connect(ctx, r)
	type opened struct {
		err      error
		oldEnded bool
	}
	welcomed := make(chan opened, 1)
	go func() {
		_, _, err := wire.Open(a2, e.hello(), guard)
		o := opened{err: err}
		select {
		case <-old.done:
			o.oldEnded = true
		default:
		}
		welcomed <- o
	}()
	// A replicator that did not wait for the old session would welcome the new one now.
	_ = sleep(ctx, 200*time.Millisecond)
	oldMsgs := readAll(a1)
	o := <-welcomed
	if o.err != nil {
		t.Fatalf("the new session was refused: %v", o.err)
	}
	if !o.oldEnded {
		t.Fatal("the new session was welcomed while the old one had not ended")
	}
	if n := acked(oldMsgs); n != 1 {
		t.Errorf("the old session acknowledged %d, want 1", n)
	}
	if last, ok := oldMsgs[len(oldMsgs)-1].(*wire.Error); !ok || last.Code != wire.CodeShuttingDown || !strings.Contains(last.Message, "replaced") {
		t.Errorf("the old session ended with %v, want SHUTTING_DOWN: replaced", oldMsgs[len(oldMsgs)-1])
	}
	write(t, a2, e.marker(1, 1))
	for {
		m := read(t, a2)
		if s, ok := m.(*wire.Sealed); ok {
			pit, err := e.repo.LoadPIT(ctx, e.server, s.PITID)
			if err != nil {
				t.Fatalf("Sealed %+v: %v", s, err)
			}
			e.checkVolume(ctx, pit, 0, first)
			return
		}
	}
}

// TestSessionOverAConnection: an agent is welcomed, its Ping answered, its blocks and
// Marker acknowledged and sealed; at its Goodbye the session ends with nothing more to
// say; the next session finds the replica. A server not assigned, a replaced
// certificate and a stopped replication are refused, each with its code.
func TestSessionOverAConnection(t *testing.T) {
	ctx := context.Background()
	e := newIngestEnv(t, store.Options{}, 4)
	cp := &stubControlPlane{}
	r := e.replicator(cp)
	sessions := make(chan int, 8)
	r.cfg.OnSessions = func(n int) { sessions <- n }
	a, served := e.connect(ctx, r)
	w, _, err := wire.Open(a, e.hello(), guard)
	if err != nil || w.Volumes[0].Exists || w.BlockSize != testBlockSize {
		t.Fatalf("welcome %+v, %v; want a fresh replica of %d-byte blocks", w, err, testBlockSize)
	}
	if n := <-sessions; n != 1 {
		t.Fatalf("OnSessions(%d) when the session opened, want 1", n)
	}
	write(t, a, &wire.Ping{Nonce: 7})
	if m, ok := read(t, a).(*wire.Pong); !ok || m.Nonce != 7 {
		t.Fatalf("Ping 7 answered with %v", m)
	}
	write(t, a, e.blocks(1, 0, map[uint64][]byte{2: content(true)}))
	write(t, a, e.marker(2, 3))
	var sealed *wire.Sealed
	for sealed == nil {
		sealed, _ = read(t, a).(*wire.Sealed)
	}
	if sealed.PITID == "" || len(cp.recorded()) != 1 {
		t.Fatalf("Sealed %+v, %d PITs recorded", sealed, len(cp.recorded()))
	}
	write(t, a, &wire.Goodbye{})
	for _, m := range readAll(a) {
		if m.Type() != wire.TypeAck {
			t.Errorf("after the Goodbye the replicator sent %v", m)
		}
	}
	<-served
	if n := <-sessions; n != 0 {
		t.Fatalf("OnSessions(%d) when the session ended, want 0", n)
	}
	r.cfg.OnSessions = nil

	a, _ = e.connect(ctx, r)
	if w, _, err := wire.Open(a, e.hello(), guard); err != nil || !w.Volumes[0].Exists {
		t.Fatalf("the next session: welcome %+v, %v; want the replica found", w, err)
	}
	a.Close()

	for _, tc := range []struct {
		name   string
		change func(*api.AssignedSourceServer)
		code   string
	}{
		{"not assigned", func(a *api.AssignedSourceServer) { a.SourceServer.ID = "s-other" }, wire.CodeNotAuthorized},
		{"a replaced certificate", func(a *api.AssignedSourceServer) { a.CertificateSerials = []string{"0b"} }, wire.CodeNotAuthorized},
		{"replication stopped", func(a *api.AssignedSourceServer) { a.Control.Desired = api.DesiredStopped }, wire.CodeStopped},
	} {
		cp := &stubControlPlane{}
		r := e.replicator(cp)
		tc.change(&cp.assigned)
		a, _ := e.connect(ctx, r)
		var we *wire.Error
		if _, _, err := wire.Open(a, e.hello(), guard); !errors.As(err, &we) || we.Code != tc.code {
			t.Errorf("%s: the Hello was answered with %v, want %s", tc.name, err, tc.code)
		}
	}
}
