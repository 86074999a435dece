package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/freeze"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// The agent starts a freeze watchdog by re-executing its own binary: here, the test
// binary, which must then run the watchdog instead of the tests.
func TestMain(m *testing.M) {
	if freeze.IsWatchdog(os.Args) {
		os.Exit(freeze.RunWatchdog(os.Args))
	}
	os.Exit(m.Run())
}

// fakeControlPlane serves one replication config, which a test changes, and records the
// state updates and volumes the agent reports.
type fakeControlPlane struct {
	mu      sync.Mutex
	cfg     api.ReplicationConfig
	changed chan struct{} // closed when cfg changes (then replaced)
	updates []api.ReplicationStateUpdate
	volumes [][]api.Volume
}

func newFakeControlPlane(cfg api.ReplicationConfig) *fakeControlPlane {
	return &fakeControlPlane{cfg: cfg, changed: make(chan struct{})}
}

func (c *fakeControlPlane) setConfig(change func(*api.ReplicationConfig)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	change(&c.cfg)
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *fakeControlPlane) ReplicationConfig(context.Context, string) (api.ReplicationConfig, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg, nil
}

func (c *fakeControlPlane) ReplicationConfigWait(ctx context.Context, _, known string, wait time.Duration) (api.ReplicationConfig, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		c.mu.Lock()
		cfg, ch := c.cfg, c.changed
		c.mu.Unlock()
		if cfg.Fingerprint() != known {
			return cfg, nil
		}
		select {
		case <-ctx.Done():
			return api.ReplicationConfig{}, ctx.Err()
		case <-timer.C:
			return cfg, nil
		case <-ch:
		}
	}
}

func (c *fakeControlPlane) UpdateReplicationState(_ context.Context, _ string, u api.ReplicationStateUpdate) (api.ReplicationState, error) {
	if err := u.Validate(); err != nil {
		return api.ReplicationState{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.updates = append(c.updates, u)
	return api.ReplicationState{}, nil
}

func (c *fakeControlPlane) SetVolumes(_ context.Context, _ string, vs []api.Volume) (api.SourceServer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.volumes = append(c.volumes, slices.Clone(vs))
	return api.SourceServer{}, nil
}

func (c *fakeControlPlane) ReportGroupPoint(context.Context, string, string, api.GroupPointReport) (api.GroupPointDecision, error) {
	return api.GroupPointDecision{Action: api.GroupActionAbort, Reason: "the fake control plane runs no group points"}, nil
}

// states lists the states reported, in order, without repeats.
func (c *fakeControlPlane) states() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, u := range c.updates {
		if u.DataReplicationState != nil && (len(out) == 0 || out[len(out)-1] != *u.DataReplicationState) {
			out = append(out, *u.DataReplicationState)
		}
	}
	return out
}

// find returns the last update that satisfies ok.
func (c *fakeControlPlane) find(ok func(api.ReplicationStateUpdate) bool) (api.ReplicationStateUpdate, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.updates) - 1; i >= 0; i-- {
		if ok(c.updates[i]) {
			return c.updates[i], true
		}
	}
	return api.ReplicationStateUpdate{}, false
}

// last returns the last update.
func (c *fakeControlPlane) last() (api.ReplicationStateUpdate, bool) {
	return c.find(func(api.ReplicationStateUpdate) bool { return true })
}

// merged is the state the control plane shows after every update so far, merged into
// a newly registered server's state as the control plane merges them.
func (c *fakeControlPlane) merged() api.ReplicationState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := api.NewReplicationState(time.Now())
	for _, u := range c.updates {
		st = st.Apply(u, time.Now())
	}
	return st
}

// stepsPassed reports whether steps are the three initiation steps, each SUCCEEDED.
func stepsPassed(steps []api.InitiationStep) bool {
	if len(steps) != 3 {
		return false
	}
	for _, s := range steps {
		if s.Status != api.StepSucceeded {
			return false
		}
	}
	return true
}

func (c *fakeControlPlane) reportedVolumes() [][]api.Volume {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.volumes)
}

// inState reports whether the last update is of this state with this error code ("":
// none).
func (c *fakeControlPlane) inState(state, code string) func() bool {
	return func() bool {
		u, ok := c.last()
		return ok && u.DataReplicationState != nil && *u.DataReplicationState == state && errCode(u.Error) == code
	}
}

// pkiEnv is a throwaway set of CAs with an account, a replicator and a source server.
type pkiEnv struct {
	t         *testing.T
	ca        *pki.Authorities
	account   string
	repID     string
	repCert   tls.Certificate
	repSerial string
	serverID  string
	agentCert tls.Certificate
}

func newPKIEnv(t *testing.T) *pkiEnv {
	t.Helper()
	ca, err := pki.LoadOrCreateAuthorities(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &pkiEnv{t: t, ca: ca, account: api.NewID(api.PrefixAccount), repID: api.NewID(api.PrefixReplicator),
		serverID: api.NewID(api.PrefixSourceServer)}
	e.repCert = e.issue(pki.Identity{Kind: pki.KindReplicator, Account: e.account, ID: e.repID}, []string{"127.0.0.1"})
	leaf, err := x509.ParseCertificate(e.repCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	e.repSerial = pki.SerialHex(leaf)
	e.agentCert = e.issue(pki.Identity{Kind: pki.KindSourceServer, Account: e.account, ID: e.serverID}, nil)
	return e
}

// issue signs a certificate for a fresh key, as the control plane does from a CSR.
func (e *pkiEnv) issue(id pki.Identity, hosts []string) tls.Certificate {
	e.t.Helper()
	return testutil.Certificate(e.t, e.ca, id, hosts, time.Now())
}

// tlsReplicator is a replicator on 127.0.0.1 speaking the wire protocol over mutual
// TLS: it welcomes every Hello (or refuses it with refuse), checks every frame against
// the session, applies blocks to a replica per volume name, seals every marker and
// acknowledges everything at once.
type tlsReplicator struct {
	t   *testing.T
	ln  net.Listener
	cfg *tls.Config
	bs  uint32

	mu       sync.Mutex
	exists   bool        // the Welcome says the replicas exist
	refuse   *wire.Error // answer Hellos with it
	replica  map[string]map[uint64][]byte
	conns    int // sessions opened (Hello read)
	hellos   []*wire.Hello
	blocks   int // blocks received
	markers  int
	protoErr error // the first frame that broke the protocol
	open     map[net.Conn]bool
	wg       sync.WaitGroup
}

func startTLSReplicator(t *testing.T, e *pkiEnv, blockSize uint32) *tlsReplicator {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tlsReplicator{t: t, ln: ln, bs: blockSize, cfg: wire.ServerTLSConfig(e.repCert, e.ca.Agents.Pool(), e.account),
		replica: map[string]map[uint64][]byte{}, open: map[net.Conn]bool{}}
	r.wg.Go(r.acceptLoop)
	t.Cleanup(r.close)
	return r
}

func (r *tlsReplicator) addr() string { return r.ln.Addr().String() }

func (r *tlsReplicator) close() {
	r.ln.Close()
	r.mu.Lock()
	for c := range r.open {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.protoErr != nil {
		r.t.Errorf("the agent broke the protocol: %v", r.protoErr)
	}
}

func (r *tlsReplicator) acceptLoop() {
	for {
		raw, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.open[raw] = true
		r.mu.Unlock()
		r.wg.Go(func() {
			defer func() {
				raw.Close()
				r.mu.Lock()
				delete(r.open, raw)
				r.mu.Unlock()
			}()
			r.serve(raw)
		})
	}
}

func (r *tlsReplicator) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.protoErr == nil {
		r.protoErr = err
	}
}

func (r *tlsReplicator) serve(raw net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := wire.Accept(ctx, raw, r.cfg)
	cancel()
	if err != nil {
		return
	}
	defer c.Close()
	hello, err := wire.ReadHello(c, 10*time.Second)
	if err != nil {
		return
	}
	if err := hello.CheckPeer(mustPeer(c)); err != nil {
		r.fail(err)
		return
	}
	r.mu.Lock()
	r.conns++
	r.hellos = append(r.hellos, hello)
	refuse, exists := r.refuse, r.exists
	r.mu.Unlock()
	if refuse != nil {
		_ = c.WriteMsg(refuse)
		_ = c.Flush()
		return
	}
	w := &wire.Welcome{Version: wire.Version, BlockSize: r.bs, WindowBytes: 4 << 20, MaxBatchBytes: 256 << 10}
	for _, v := range hello.Volumes {
		rep := wire.Replica{Exists: exists}
		if exists {
			rep.SizeBytes = v.SizeBytes
		}
		w.Volumes = append(w.Volumes, rep)
	}
	sess, err := wire.SendWelcome(c, hello, w)
	if err != nil {
		r.fail(err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	dec := wire.NewDecoder(int(r.bs))
	defer dec.Close()
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return
		}
		if err := sess.Check(m); err != nil {
			r.fail(err)
			return
		}
		r.mu.Lock()
		switch m := m.(type) {
		case *wire.Blocks:
			name := hello.Volumes[m.Volume].Name
			if r.replica[name] == nil {
				r.replica[name] = map[uint64][]byte{}
			}
			for i := range m.Entries {
				e := &m.Entries[i]
				raw := make([]byte, e.RawLen)
				if e.Codec != wire.CodecZero {
					if raw, err = dec.Decode(e, raw); err != nil {
						r.mu.Unlock()
						r.fail(err)
						return
					}
				}
				r.replica[name][e.Block] = bytes.Clone(raw)
				r.blocks++
			}
			err = c.WriteMsg(&wire.Ack{Seq: m.Seq})
		case *wire.Marker:
			r.markers++
			if err = c.WriteMsg(&wire.Ack{Seq: m.Seq}); err == nil {
				err = c.WriteMsg(&wire.Sealed{MarkerID: m.ID, PITID: fmt.Sprintf("pit-%d", m.ID)})
			}
		case *wire.Ping:
			err = c.WriteMsg(&wire.Pong{Nonce: m.Nonce})
		case *wire.Goodbye:
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		if err != nil || c.Flush() != nil {
			return
		}
	}
}

func mustPeer(c *wire.Conn) pki.Identity {
	id, err := wire.PeerIdentity(c.ConnectionState())
	if err != nil {
		return pki.Identity{}
	}
	return id
}

func (r *tlsReplicator) counts() (conns, blocks, markers int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns, r.blocks, r.markers
}

func (r *tlsReplicator) set(change func(r *tlsReplicator)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(r)
}

// matches reports whether the replica of each image file holds exactly its content
// (blocks never received count as zeros).
func (r *tlsReplicator) matches(paths ...string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	bs := int(r.bs)
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rep := r.replica[filepath.Base(p)]
		for b := 0; b*bs < len(data); b++ {
			want := data[b*bs : min(len(data), (b+1)*bs)]
			got := rep[uint64(b)]
			if got == nil {
				got = make([]byte, len(want))
			}
			if !bytes.Equal(got, want) {
				return fmt.Errorf("%s block %d differs on the replica", filepath.Base(p), b)
			}
		}
	}
	return nil
}

// imageFile writes an image file of size bytes with random blocks (and some zero ones).
func imageFile(t *testing.T, dir, name string, size int, seed uint64) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	data := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		if (off/4096)%5 == 3 {
			continue // a zero block
		}
		for i := off; i < min(size, off+4096); i += 8 {
			v := rng.Uint64()
			for k := 0; k < 8 && i+k < size; k++ {
				data[i+k] = byte(v >> (8 * k))
			}
		}
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// replicatingConfig is a config that replicates to r, with a point every second.
func replicatingConfig(e *pkiEnv, r *tlsReplicator) api.ReplicationConfig {
	return api.ReplicationConfig{
		SourceServerID: e.serverID,
		Settings: api.ReplicationSettings{ConsistencyPointIntervalSeconds: 1, FreezeTimeoutMs: 2000,
			Compression: api.CompressionS2},
		Replicator: &api.ReplicatorEndpoint{ID: e.repID, Name: "rep-test", Address: r.addr(),
			CertificateSerials: []string{e.repSerial}},
		Control: api.ReplicationControl{Desired: api.DesiredReplicating},
	}
}

func agentConfig(e *pkiEnv, cp ControlPlane, stateDir string, volumes ...string) Config {
	return Config{ServerID: e.serverID, AccountID: e.account, ControlPlane: cp, Certificate: e.agentCert,
		CAPool: e.ca.Replicators.Pool(), Volumes: volumes, StateDir: stateDir, ForceScan: true,
		Poll: 200 * time.Millisecond, Report: 100 * time.Millisecond,
		// Scans last long enough (≥ 0.5 s) for the 200 ms report loop to see their state.
		ScanPause: 20 * time.Millisecond}
}

// runningAgent is an agent whose Run goroutine stop ends (also at the test's cleanup).
type runningAgent struct {
	*Agent
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

func startAgent(t *testing.T, cfg Config) *runningAgent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ra.done <- a.Run(ctx) }()
	t.Cleanup(func() { ra.stop(t) })
	return ra
}

// stop cancels Run, waits for it and closes the agent.
func (ra *runningAgent) stop(t *testing.T) error {
	t.Helper()
	ra.once.Do(func() {
		ra.cancel()
		select {
		case ra.err = <-ra.done:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30 s of its context's end")
			return
		}
		ra.Close()
	})
	return ra.err
}

func TestAgentReplicatesImageFilesAndReports(t *testing.T) {
	e := newPKIEnv(t)
	dir, state := t.TempDir(), t.TempDir()
	img1 := imageFile(t, dir, "disk1.img", 4<<20, 1)
	img2 := imageFile(t, dir, "disk2.img", 1<<20+4096, 2)
	rep := startTLSReplicator(t, e, 4096)
	cp := newFakeControlPlane(replicatingConfig(e, rep))
	a := startAgent(t, agentConfig(e, cp, state, img1, img2))

	eventually(t, "a sealed PIT", func() bool { return a.st.lastSealed() != nil })
	if err := rep.matches(img1, img2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "CONTINUOUS reported", cp.inState(api.StateContinuous, ""))
	states := cp.states()
	i := slices.Index(states, api.StateInitialSync)
	if i < 0 || !slices.Contains(states[i:], api.StateContinuous) {
		t.Fatalf("states reported %v, want INITIAL_SYNC then CONTINUOUS", states)
	}
	u, _ := cp.last()
	if !stepsPassed(u.InitiationSteps) || !stepsPassed(cp.merged().InitiationSteps) {
		t.Fatalf("CONTINUOUS with initiation steps %+v reported, %+v shown: want each SUCCEEDED",
			u.InitiationSteps, cp.merged().InitiationSteps)
	}
	if u.Tracker == nil || *u.Tracker != tracker.NameScan {
		t.Fatalf("tracker reported %v, want %q", u.Tracker, tracker.NameScan)
	}
	if u.TotalBytes == nil || *u.TotalBytes != 4<<20+1<<20+4096 {
		t.Fatalf("total bytes reported %v, want both volumes' sizes", u.TotalBytes)
	}
	if u.ReplicatedBytes == nil || *u.ReplicatedBytes < 4<<20+1<<20+4096 {
		t.Fatalf("replicated bytes reported %v, want at least both volumes", u.ReplicatedBytes)
	}
	vols := cp.reportedVolumes()
	if len(vols) == 0 || len(vols[0]) != 2 || vols[0][0].Name != "disk1.img" || vols[0][0].SizeBytes != 4<<20 ||
		vols[0][1].Name != "disk2.img" || vols[0][1].SizeBytes != 1<<20+4096 {
		t.Fatalf("volumes reported %+v", vols)
	}
	conns, _, _ := rep.counts()
	rep.mu.Lock()
	h := rep.hellos[0]
	rep.mu.Unlock()
	if conns != 1 || h.SourceServerID != e.serverID || h.Tracker != tracker.NameScan || len(h.Volumes) != 2 || h.TrackerGeneration != 1 {
		t.Fatalf("%d sessions, first Hello %+v", conns, h)
	}

	// The status file follows the state.
	eventually(t, "a status file with a PIT", func() bool {
		s, err := ReadStatus(state)
		return err == nil && s.State == api.StateContinuous && s.LastPoint != nil
	})
	s, err := ReadStatus(state)
	if err != nil {
		t.Fatal(err)
	}
	if s.ServerID != e.serverID || s.Tracker != tracker.NameScan || s.TrackerReason == "" || s.Replicator != rep.addr() ||
		len(s.Volumes) != 2 || !strings.HasPrefix(s.LastPoint.SnapshotID, "pit-") {
		t.Fatalf("status %+v", s)
	}
	if s.LagSeconds == nil || *s.LagSeconds < 0 {
		t.Fatalf("status lag %v, want measured", s.LagSeconds)
	}

	// A write after the initial sync reaches the replica at the next point.
	f, err := os.OpenFile(img2, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xab}, 4096), 1<<20); err != nil { // its last block
		t.Fatal(err)
	}
	f.Close()
	eventually(t, "the write replicated", func() bool { return rep.matches(img1, img2) == nil })

	if err := a.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, v := range []struct {
		name string
		size int64
	}{{"disk1.img", 4 << 20}, {"disk2.img", 1<<20 + 4096}} {
		name := v.name
		tb, err := tracker.LoadHashTable(filepath.Join(state, "hashes-"+name), name, v.size, 4096)
		if err != nil {
			t.Fatalf("hash table of %s: %v", name, err)
		}
		if tb.Known() != tb.Blocks() {
			t.Fatalf("hash table of %s knows %d of %d blocks", name, tb.Known(), tb.Blocks())
		}
	}
	// The store's block size is kept for the next start, which is a new generation.
	a2, err := New(agentConfig(e, cp, state, img1, img2))
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if a2.vols.blockSize != 4096 || a2.st.generation() <= a.st.generation() {
		t.Fatalf("a new agent on the state directory has block size %d, generation %d (was %d); want 4096, a newer one",
			a2.vols.blockSize, a2.st.generation(), a.st.generation())
	}
}

func TestAgentRestartResendsOnlyWhatChanged(t *testing.T) {
	e := newPKIEnv(t)
	dir, state := t.TempDir(), t.TempDir()
	img := imageFile(t, dir, "disk.img", 4<<20, 3)
	rep := startTLSReplicator(t, e, 4096)
	cp := newFakeControlPlane(replicatingConfig(e, rep))

	a := startAgent(t, agentConfig(e, cp, state, img))
	eventually(t, "a sealed PIT", func() bool { return a.st.lastSealed() != nil })
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	if err := rep.matches(img); err != nil {
		t.Fatal(err)
	}
	_, first, _ := rep.counts()
	if first != 1024 {
		t.Fatalf("the initial sync sent %d blocks, want 1024", first)
	}

	// Change one block while no agent runs.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), 77*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep.set(func(r *tlsReplicator) { r.exists = true })

	a2 := startAgent(t, agentConfig(e, cp, state, img))
	eventually(t, "a sealed PIT after the restart", func() bool { return a2.st.lastSealed() != nil })
	if err := rep.matches(img); err != nil {
		t.Fatal(err)
	}
	conns, blocks, _ := rep.counts()
	if blocks-first != 1 {
		t.Fatalf("the restarted agent sent %d blocks, want only the 1 changed", blocks-first)
	}
	rep.mu.Lock()
	gen1, gen2 := rep.hellos[0].TrackerGeneration, rep.hellos[conns-1].TrackerGeneration
	rep.mu.Unlock()
	if conns != 2 || gen2 <= gen1 {
		t.Fatalf("%d sessions; the restarted agent's tracker generation is %d, the first's %d: want a newer one", conns, gen2, gen1)
	}
	if !slices.Contains(cp.states(), api.StateRescan) {
		t.Fatalf("states %v: the restart did not rescan", cp.states())
	}
	// The restarted agent went through INITIATING again, and past it.
	eventually(t, "CONTINUOUS after the restart", cp.inState(api.StateContinuous, ""))
	if st := cp.merged(); !stepsPassed(st.InitiationSteps) {
		t.Fatalf("after the restart, %s with initiation steps %+v: want each SUCCEEDED", st.DataReplicationState, st.InitiationSteps)
	}
	if err := a2.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestAgentFollowsTheConfig(t *testing.T) {
	e := newPKIEnv(t)
	img := imageFile(t, t.TempDir(), "disk.img", 1<<20, 4)
	rep := startTLSReplicator(t, e, 65536)
	cfg := replicatingConfig(e, rep)
	cfg.Control.Desired = api.DesiredPaused
	cp := newFakeControlPlane(cfg)
	acfg := agentConfig(e, cp, t.TempDir(), img)
	acfg.ScanPause = 100 * time.Millisecond // 16 blocks of 64 KiB, 3 a batch
	a := startAgent(t, acfg)

	eventually(t, "PAUSED", cp.inState(api.StatePaused, ""))
	cp.setConfig(func(c *api.ReplicationConfig) { c.Control.Desired = api.DesiredStopped })
	eventually(t, "STOPPED", cp.inState(api.StateStopped, ""))
	if conns, _, _ := rep.counts(); conns != 0 {
		t.Fatalf("the agent connected %d times while paused or stopped", conns)
	}
	if got := a.st.current(); got != api.StateInitiating {
		t.Fatalf("a session after a stop starts from %s, want INITIATING", got)
	}

	cp.setConfig(func(c *api.ReplicationConfig) { c.Control.Desired, c.Replicator = api.DesiredReplicating, nil })
	eventually(t, "INITIATING without a replicator", cp.inState(api.StateInitiating, api.ErrReplicatorNotAssigned))
	u, _ := cp.find(func(u api.ReplicationStateUpdate) bool { return errCode(u.Error) == api.ErrReplicatorNotAssigned })
	if len(u.InitiationSteps) != 3 || u.InitiationSteps[0].Status != api.StepSucceeded ||
		u.InitiationSteps[1].Name != "CONNECT_AGENT_TO_REPLICATION_SERVER" || u.InitiationSteps[1].Status != api.StepFailed {
		t.Fatalf("initiation steps %+v", u.InitiationSteps)
	}

	// A replicator whose certificate the control plane no longer lists is refused.
	cp.setConfig(func(c *api.ReplicationConfig) {
		r := *cfg.Replicator
		r.CertificateSerials = []string{"abc123"}
		c.Replicator = &r
	})
	eventually(t, "UNSTABLE_NETWORK for a replaced certificate", cp.inState(api.StateInitiating, api.ErrUnstableNetwork))
	if conns, _, _ := rep.counts(); conns != 0 {
		t.Fatalf("the agent said Hello to a replicator it must refuse")
	}
	if u, _ := cp.last(); !strings.Contains(u.Error.Message, "refused to send") {
		t.Fatalf("error %+v, want the replicator refused", u.Error)
	}

	rep.set(func(r *tlsReplicator) { r.refuse = &wire.Error{Code: wire.CodeStagingFull, Message: "disk full"} })
	cp.setConfig(func(c *api.ReplicationConfig) { c.Replicator = cfg.Replicator })
	eventually(t, "STALLED on a full staging store", cp.inState(api.StateStalled, api.ErrStagingStorageFull))

	rep.set(func(r *tlsReplicator) { r.refuse = nil })
	eventually(t, "CONTINUOUS once the store has room", cp.inState(api.StateContinuous, ""))
	if err := rep.matches(img); err != nil {
		t.Fatal(err)
	}
	if a.vols.blockSize != 65536 {
		t.Fatalf("block size %d, want the store's 65536", a.vols.blockSize)
	}

	// A new generation (an operator's retry) ends the session and rescans, which finds
	// nothing to send.
	rep.set(func(r *tlsReplicator) { r.exists = true })
	conns, blocks, _ := rep.counts()
	cp.setConfig(func(c *api.ReplicationConfig) { c.Control.Generation++ })
	eventually(t, "a new session", func() bool { c, _, _ := rep.counts(); return c > conns })
	eventually(t, "CONTINUOUS again", func() bool {
		return slices.Contains(cp.states(), api.StateRescan) && cp.inState(api.StateContinuous, "")()
	})
	if _, b, _ := rep.counts(); b != blocks {
		t.Fatalf("the rescan sent %d blocks the replica held already", b-blocks)
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestAgentNoticesAGrownVolume(t *testing.T) {
	e := newPKIEnv(t)
	dir := t.TempDir()
	img := imageFile(t, dir, "disk.img", 1<<20, 5)
	cp := newFakeControlPlane(api.ReplicationConfig{})
	a, err := New(agentConfig(e, cp, t.TempDir(), img))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { a.Close() }()
	if a.volumesChanged(false) {
		t.Fatal("volumes reported changed before any change")
	}
	if err := os.Truncate(img, 2<<20); err != nil {
		t.Fatal(err)
	}
	if !a.volumesChanged(false) {
		t.Fatal("a grown image file was not noticed")
	}
	gen := a.st.generation()
	a.takeRescan()
	if err := a.reopenVolumes(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	vols := cp.reportedVolumes()
	if len(vols) != 1 || len(vols[0]) != 1 || vols[0][0].SizeBytes != 2<<20 {
		t.Fatalf("volumes reported %+v, want the new size", vols)
	}
	if a.vols.vols[0].SizeBytes != 2<<20 || a.vols.vols[0].dirty == nil {
		t.Fatalf("the agent's volume is %+v", a.vols.vols[0].Volume)
	}
	if !a.takeRescan() || a.st.generation() != gen+1 {
		t.Fatal("a volume change did not ask for a rescan under a new generation")
	}
	if a.volumesChanged(false) {
		t.Fatal("volumes still reported changed after reopening them")
	}

	// A volume that cannot be opened any more keeps the old set.
	if err := os.Remove(img); err != nil {
		t.Fatal(err)
	}
	if err := a.reopenVolumes(context.Background(), false); err == nil {
		t.Fatal("reopening a removed image file succeeded")
	}
}

func TestNewChecksItsConfig(t *testing.T) {
	e := newPKIEnv(t)
	dir := t.TempDir()
	img := imageFile(t, dir, "disk.img", 64<<10, 6)
	cp := newFakeControlPlane(api.ReplicationConfig{})
	for _, c := range []struct {
		name   string
		change func(*Config)
	}{
		{"bad server id", func(c *Config) { c.ServerID = "x-1" }},
		{"no control plane", func(c *Config) { c.ControlPlane = nil }},
		{"no state dir", func(c *Config) { c.StateDir = "" }},
		{"missing volume", func(c *Config) { c.Volumes = []string{filepath.Join(dir, "nope.img")} }},
		{"same name twice", func(c *Config) {
			other := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(other, make([]byte, 64<<10), 0o600); err != nil {
				t.Fatal(err)
			}
			c.Volumes = []string{img, other}
		}},
	} {
		cfg := agentConfig(e, cp, t.TempDir(), img)
		c.change(&cfg)
		if a, err := New(cfg); err == nil {
			a.Close()
			t.Errorf("%s: New accepted the config", c.name)
		}
	}
	// A state directory that cannot be created.
	cfg := agentConfig(e, cp, filepath.Join(img, "state"), img)
	if a, err := New(cfg); err == nil {
		a.Close()
		t.Error("New accepted a state directory under a file")
	}
	// Defaults, and a block size file of nonsense is ignored.
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "blocksize"), []byte{0, 0, 0, 1}, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{ServerID: e.serverID, ControlPlane: cp, StateDir: state, Volumes: []string{img}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.cfg.Poll != 5*time.Second || a.cfg.Report != 2*time.Second || a.cfg.Version != "dev" || a.vols.blockSize != 64<<10 {
		t.Fatalf("defaults %+v, block size %d", a.cfg, a.vols.blockSize)
	}
	if why := a.ebpfUnfit(); !strings.Contains(why, "image file") {
		t.Fatalf("ebpfUnfit on an image file: %q", why)
	}
	if v := a.vols.Volumes(); len(v) != 1 || v[0].Name != "disk.img" || v[0].SizeBytes != 64<<10 || v[0].BlockSize < 512 {
		t.Fatalf("Hello volumes %+v", v)
	}
	if _, err := a.vols.Mounts(); err == nil {
		t.Fatal("an image file without a watchdog has mounts to freeze")
	}
}

func TestDiscoverAndNames(t *testing.T) {
	if got, err := discover([]string{"/a", "/b"}); err != nil || !slices.Equal(got, []string{"/a", "/b"}) {
		t.Fatalf("discover of named volumes: %v, %v", got, err)
	}
	if got, err := discover(nil); err == nil {
		for _, p := range got {
			if !strings.HasPrefix(p, "/dev/") || skipDevice(strings.TrimPrefix(p, "/dev/")) {
				t.Errorf("discovered %s", p)
			}
		}
	}
	for name, skip := range map[string]bool{"loop0": true, "ram1": true, "zram0": true, "sr0": true, "dm-3": true,
		"md127": true, "nbd0": true, "fd0": true, "vda": false, "sda": false, "nvme0n1": false, "xvdb": false} {
		if skipDevice(name) != skip {
			t.Errorf("skipDevice(%s) = %v", name, !skip)
		}
	}
	dir := t.TempDir()
	target := filepath.Join(dir, "real.img")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if volumeName(link) != "real.img" || volumeName(filepath.Join(dir, "none.img")) != "none.img" {
		t.Fatalf("volumeName: %s, %s", volumeName(link), volumeName(filepath.Join(dir, "none.img")))
	}
}

func TestFromWireError(t *testing.T) {
	for _, c := range []struct{ code, state, want string }{
		{wire.CodeStagingFull, api.StateStalled, api.ErrStagingStorageFull},
		{wire.CodeStopped, api.StateStopped, wire.CodeStopped},
		{wire.CodeNotAuthorized, api.StateStalled, wire.CodeNotAuthorized},
		{wire.CodeStagingError, api.StateStalled, wire.CodeStagingError},
		{wire.CodeProtocol, api.StateContinuous, wire.CodeProtocol},
	} {
		se := fromWireError(&wire.Error{Code: c.code, Message: "m"}, api.StateContinuous)
		if se.state != c.state || se.code != c.want || !se.connected || se.msg != "m" {
			t.Errorf("%s: %+v", c.code, se)
		}
		if !strings.HasPrefix(se.Error(), c.want+": ") {
			t.Errorf("%s: error %q", c.code, se.Error())
		}
	}
}

func TestSameReplicatorAndCAs(t *testing.T) {
	r := &api.ReplicatorEndpoint{ID: "rep-1", Address: "h:1", CertificateSerials: []string{"a", "b"}}
	same := *r
	same.Name = "renamed"
	for _, c := range []struct {
		b    *api.ReplicatorEndpoint
		want bool
	}{
		{&same, true},
		{nil, false},
		{&api.ReplicatorEndpoint{ID: "rep-2", Address: "h:1", CertificateSerials: []string{"a", "b"}}, false},
		{&api.ReplicatorEndpoint{ID: "rep-1", Address: "h:2", CertificateSerials: []string{"a", "b"}}, false},
		{&api.ReplicatorEndpoint{ID: "rep-1", Address: "h:1", CertificateSerials: []string{"a"}}, false},
	} {
		if got := sameReplicator(r, c.b); got != c.want {
			t.Errorf("sameReplicator(%+v, %+v) = %v", r, c.b, got)
		}
	}
	if sameReplicator(nil, nil) {
		t.Error("two absent replicators are the same")
	}

	e := newPKIEnv(t)
	installed := x509.NewCertPool()
	a := &Agent{cfg: Config{CAPool: installed}}
	if a.replicatorCAs(api.ReplicationConfig{}) != installed || a.replicatorCAs(api.ReplicationConfig{CACertificates: "junk"}) != installed {
		t.Fatal("without a usable CA in the config, the installed one is not used")
	}
	pool := a.replicatorCAs(api.ReplicationConfig{CACertificates: string(e.ca.Replicators.CertPEM())})
	if pool == installed || !pool.Equal(e.ca.Replicators.Pool()) {
		t.Fatal("the config's CA was not used")
	}
}

// TestStatusStepsAcrossALife follows the initiation steps an agent reports through a
// server's life: a new agent, a connection, data flowing, an error, a pause and a
// failed reconnection. Every report carries them.
func TestStatusStepsAcrossALife(t *testing.T) {
	statuses := func(st *status) []string {
		_, steps := st.snapshot(time.Now(), 0)
		out := make([]string, len(steps))
		for i, s := range steps {
			out[i] = s.Status
		}
		return out
	}
	const ns, ip, ok, failed = api.StepNotStarted, api.StepInProgress, api.StepSucceeded, api.StepFailed
	st := &status{ServerID: "s-1", State: api.StateInitiating}
	for _, c := range []struct {
		what string
		do   func()
		want []string
	}{
		{"a new agent", func() {}, []string{ok, ns, ns}},
		{"connecting", func() { st.setInitiating(api.InitiationConnectAgent, ip, nil) }, []string{ok, ip, ns}},
		{"connected", func() { st.setInitiating(api.InitiationStartDataTransfer, ip, nil) }, []string{ok, ok, ip}},
		{"CONTINUOUS", func() { st.set(api.StateContinuous, nil) }, []string{ok, ok, ok}},
		{"STALLED", func() { st.set(api.StateStalled, &api.ReplicationError{Code: api.ErrNotConverging}) }, []string{ok, ok, ok}},
		{"PAUSED", func() { st.set(api.StatePaused, nil) }, []string{ok, ok, ok}},
		{"reconnecting", func() { st.setInitiating(api.InitiationConnectAgent, ip, nil) }, []string{ok, ip, ns}},
		{"refused", func() { st.set(st.current(), &api.ReplicationError{Code: api.ErrUnstableNetwork}) }, []string{ok, failed, ns}},
		{"RESCAN", func() { st.set(api.StateRescan, nil) }, []string{ok, ok, ok}},
	} {
		c.do()
		if got := statuses(st); !slices.Equal(got, c.want) {
			t.Fatalf("%s: initiation steps %v, want %v", c.what, got, c.want)
		}
	}
}

func TestStatusInitiatingAndSnapshot(t *testing.T) {
	st := &status{ServerID: "s-1", State: api.StateInitiating}
	st.setInitiating("START_DATA_TRANSFER", api.StepInProgress, nil)
	_, steps := st.snapshot(time.Now(), 0)
	want := []string{api.StepSucceeded, api.StepSucceeded, api.StepInProgress}
	for i, s := range steps {
		if s.Status != want[i] {
			t.Fatalf("steps %+v, want statuses %v", steps, want)
		}
	}
	st.setInitiating("CONNECT_AGENT_TO_REPLICATION_SERVER", api.StepFailed, &api.ReplicationError{Code: "X"})
	s, steps := st.snapshot(time.Now(), 0)
	if steps[1].Status != api.StepFailed || steps[2].Status != api.StepNotStarted || errCode(s.Error) != "X" {
		t.Fatalf("steps %+v, error %+v", steps, s.Error)
	}
	if !st.due(false) || st.due(false) || !st.due(true) {
		t.Fatal("due does not follow changes")
	}
	st.set(api.StateInitialSync, nil)
	if _, steps := st.snapshot(time.Now(), 0); !stepsPassed(steps) {
		t.Fatalf("steps %+v once data flows, want each SUCCEEDED", steps)
	}
	st.due(false)
	st.set(api.StateInitialSync, nil)
	if st.due(false) {
		t.Fatal("setting the same state again is a change")
	}
	st.setError(&api.ReplicationError{Code: "Y"})
	if !st.due(false) || st.current() != api.StateInitialSync {
		t.Fatal("a new error is not a change, or changed the state")
	}
	for _, paused := range []string{api.StatePaused, api.StateStopped} {
		st.set(paused, nil)
		if st.current() != api.StateInitiating {
			t.Fatalf("a session after %s goes on from %s", paused, st.current())
		}
	}

	// Progress, ETA and lag.
	st = &status{State: api.StateInitialSync}
	st.startScan(true, 1000)
	st.scanDone.Store(250)
	st.connected("rep:1", func() int64 { return 600 })
	now := time.Now()
	st.matched(now.Add(-3 * time.Second))
	s, _ = st.snapshot(now, 200)
	if s.Percent == nil || *s.Percent != 25 {
		t.Fatalf("percent %v, want 25", s.Percent)
	}
	if s.ETASeconds == nil || *s.ETASeconds != 3 {
		t.Fatalf("ETA %v, want 600 bytes at 200/s = 3 s", s.ETASeconds)
	}
	if s.LagSeconds == nil || *s.LagSeconds != 3 {
		t.Fatalf("lag %v, want 3", s.LagSeconds)
	}
	if s.LastDataAt == nil || !s.LastDataAt.Equal(now.Add(-3*time.Second)) {
		t.Fatalf("lastDataAt %v, want the time the replica matched, %s", s.LastDataAt, now.Add(-3*time.Second))
	}
	if s.State != api.StateInitialSync || s.Replicator != "rep:1" || s.BacklogBytes != 600 || !st.isScanning() {
		t.Fatalf("status %+v", s)
	}
	st.endScan()
	st.connected("", nil)
	s, _ = st.snapshot(now, 0)
	if s.Percent != nil || s.ETASeconds != nil || s.BacklogBytes != 0 || s.Replicator != "rep:1" {
		t.Fatalf("after the scan and session: %+v", s)
	}
	st.startScan(false, 10)
	if st.current() != api.StateRescan {
		t.Fatalf("a rescan reports %s", st.current())
	}
	if _, err := ReadStatus(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadStatus without a file: %v", err)
	}
}

// TestLostReplicaForgetsTheSavedTable: when the replicator says a volume's replica does
// not exist, the saved hash table goes at once, not at the session's end: an agent
// killed during the initial sync must not, at its restart, trust a table that claims
// blocks the new, partial replica never received. A replica that exists keeps it.
func TestLostReplicaForgetsTheSavedTable(t *testing.T) {
	e := newPKIEnv(t)
	dir, state := t.TempDir(), t.TempDir()
	img := imageFile(t, dir, "disk.img", 1<<20, 3)
	a, err := New(agentConfig(e, newFakeControlPlane(api.ReplicationConfig{SourceServerID: e.serverID}), state, img))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	v := a.vols.vols[0]
	saved, err := tracker.NewHashTable(v.Name, v.SizeBytes, 4096)
	if err != nil {
		t.Fatal(err)
	}
	saved.Set(7, 42)
	if err := saved.Save(a.tablePath(v)); err != nil {
		t.Fatal(err)
	}
	a.vols.blockSize = 4096
	tables, initial, err := a.loadTables(&wire.Welcome{BlockSize: 4096, Volumes: []wire.Replica{{Exists: true, SizeBytes: uint64(v.SizeBytes)}}})
	if err != nil || initial || !tables[0].Matches(7, 42) {
		t.Fatalf("an existing replica: initial %v, table knows block 7: %v (%v); want the saved table", initial, tables[0].Matches(7, 42), err)
	}
	tables, initial, err = a.loadTables(&wire.Welcome{BlockSize: 4096, Volumes: []wire.Replica{{}}})
	if err != nil || !initial || tables[0].Known() != 0 {
		t.Fatalf("a lost replica: initial %v, %d hashes known (%v); want an empty table", initial, tables[0].Known(), err)
	}
	if _, err := os.Stat(a.tablePath(v)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the saved table of a lost replica is still there (%v): a crash now would trust it", err)
	}
}
