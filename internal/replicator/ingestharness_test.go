package replicator

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/faulty"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// testBlockSize is the block size of the tests' stores and volumes.
const testBlockSize = 4096

// guard bounds every wait of these tests: a test that waits this long has failed.
const guard = 30 * time.Second

// fakeRecorder stands for the control plane's record of PITs: it keeps what it is
// asked to record, and fails the calls its fail function says.
type fakeRecorder struct {
	mu    sync.Mutex
	reqs  []api.CreateRecoverySnapshotRequest
	calls int
	fail  func(ctx context.Context, call int) error // nil: every call succeeds
}

func (f *fakeRecorder) CreateRecoverySnapshot(ctx context.Context, _ string, req api.CreateRecoverySnapshotRequest) (api.RecoverySnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.fail != nil {
		if err := f.fail(ctx, f.calls); err != nil {
			return api.RecoverySnapshot{}, err
		}
	}
	f.reqs = append(f.reqs, req)
	return api.RecoverySnapshot{ID: req.ID}, nil
}

func (f *fakeRecorder) recorded() []api.CreateRecoverySnapshotRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

// chanSource is a source of frames in memory: the frames sent on it, then io.EOF once
// it is closed.
type chanSource chan wire.Msg

func (c chanSource) Next(ctx context.Context) (wire.Msg, error) {
	select {
	case m, ok := <-c:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ingestEnv is a staging store on a file backend in a temporary directory, behind a
// fault-injecting backend, and one source server's volumes.
type ingestEnv struct {
	t      *testing.T
	be     *faulty.Backend
	key    store.MasterKey
	opts   store.Options
	repo   *store.Repo
	rec    *fakeRecorder
	mem    *batchMemory
	server string
	vols   []wire.Volume
	enc    *wire.Encoder
}

// newIngestEnv makes a store (with opts) and volumes of the given sizes in blocks.
func newIngestEnv(t *testing.T, opts store.Options, blocks ...uint64) *ingestEnv {
	t.Helper()
	ctx := context.Background()
	fb, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := store.NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	e := &ingestEnv{t: t, be: faulty.Wrap(fb), rec: &fakeRecorder{}, mem: newBatchMemory(32 << 20),
		server: api.NewID(api.PrefixSourceServer)}
	opts.BlockSize = testBlockSize
	e.key, e.opts = key, opts
	if e.repo, err = store.Init(ctx, e.be, key, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.repo.Close()
		e.be.Close()
	})
	for i, n := range blocks {
		e.vols = append(e.vols, wire.Volume{Name: "vd" + string(rune('a'+i)), SizeBytes: n * testBlockSize, BlockSize: 512})
	}
	if e.enc, err = wire.NewEncoder("s2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.enc.Close)
	return e
}

// testSession is an ingest running on freshly opened heads, as a session's would.
type testSession struct {
	t      *testing.T
	in     *ingest
	frames chanSource
	out    chan wire.Msg
	done   chan struct{}
	werr   *wire.Error // when done: what run returned
	rerr   error
}

// start opens the heads of every volume and starts an ingest on them.
func (e *ingestEnv) start(ctx context.Context) *testSession {
	e.t.Helper()
	hello := &wire.Hello{Version: 1, SourceServerID: e.server, AgentVersion: "test", Tracker: "scan", TrackerGeneration: 1, Volumes: e.vols}
	welcome := &wire.Welcome{Version: 1, BlockSize: testBlockSize, WindowBytes: 64 << 20, MaxBatchBytes: 4 << 20}
	var heads []*store.Head
	for _, v := range e.vols {
		h, err := e.repo.OpenHead(ctx, e.server, v.Name, int64(v.SizeBytes), store.HeadOptions{})
		if err != nil {
			e.t.Fatalf("open the head of %s: %v", v.Name, err)
		}
		heads = append(heads, h)
		welcome.Volumes = append(welcome.Volumes, wire.Replica{Exists: !h.Fresh()})
	}
	ws, err := wire.NewSession(hello, welcome)
	if err != nil {
		e.t.Fatal(err)
	}
	s := &testSession{t: e.t, frames: make(chanSource), out: make(chan wire.Msg, 1024), done: make(chan struct{})}
	s.in = &ingest{server: e.server, repo: e.repo, heads: heads, ws: ws, mem: memHold{m: e.mem}, rec: e.rec, out: s.out,
		log: slog.New(slog.DiscardHandler), flushBytes: 32 << 20, flushInterval: time.Hour, recordRetry: time.Millisecond}
	go func() {
		defer close(s.done)
		s.werr, s.rerr = s.in.run(ctx, s.frames)
	}()
	return s
}

// send gives the ingest a frame; it fails the test if the ingest has ended.
func (s *testSession) send(m wire.Msg) {
	s.t.Helper()
	select {
	case s.frames <- m:
	case <-s.done:
		s.t.Fatalf("the ingest ended (%v, %v) before taking %s", s.werr, s.rerr, m.Type())
	case <-time.After(guard):
		s.t.Fatalf("the ingest did not take %s", m.Type())
	}
}

// end waits for the ingest to end (closing its source first when close is set), closes
// its heads as a session does, and returns what it sent the agent.
func (s *testSession) end(closeSource bool) []wire.Msg {
	s.t.Helper()
	if closeSource {
		close(s.frames)
	}
	select {
	case <-s.done:
	case <-time.After(guard):
		s.t.Fatal("the ingest did not end")
	}
	for _, h := range s.in.heads {
		_ = h.Close()
	}
	close(s.out)
	var msgs []wire.Msg
	for m := range s.out {
		msgs = append(msgs, m)
	}
	return msgs
}

// expect returns the next message the ingest sent the agent.
func (s *testSession) expect() wire.Msg {
	s.t.Helper()
	select {
	case m := <-s.out:
		return m
	case <-s.done:
		select {
		case m := <-s.out:
			return m
		default:
		}
		s.t.Fatalf("the ingest ended (%v, %v) without a message", s.werr, s.rerr)
	case <-time.After(guard):
		s.t.Fatal("no message from the ingest")
	}
	return nil
}

// expectAck waits for the Ack of seq.
func (s *testSession) expectAck(seq uint64) {
	s.t.Helper()
	if m, ok := s.expect().(*wire.Ack); !ok || m.Seq != seq {
		s.t.Fatalf("got %v, want Ack %d", m, seq)
	}
}

// blocks is a Blocks frame of volume vol carrying data (by block number), encoded as
// an agent does (compressed with s2 where that helps) and decoded as a connection does.
func (e *ingestEnv) blocks(seq uint64, vol uint16, data map[uint64][]byte) *wire.Blocks {
	e.t.Helper()
	b := wire.NewBatch(4 << 20)
	b.Reset(seq, vol)
	for _, i := range slices.Sorted(maps.Keys(data)) {
		if _, err := e.enc.Encode(b, i, wire.Hash(data[i]), data[i]); err != nil {
			e.t.Fatal(err)
		}
	}
	frame, err := wire.AppendFrame(nil, b)
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := wire.DecodeFrame(frame)
	if err != nil {
		e.t.Fatal(err)
	}
	return m.(*wire.Blocks)
}

// marker is a Marker of every volume at seq.
func (e *ingestEnv) marker(seq, id uint64) *wire.Marker {
	m := &wire.Marker{Seq: seq, ID: id, TimeUnixNano: time.Now().UnixNano(), Level: consistency.Crash, FreezeMicros: 7}
	for _, v := range e.vols {
		m.VolumeSizes = append(m.VolumeSizes, v.SizeBytes)
	}
	return m
}

// content is one block's worth of data that no other call gives: random when
// compressible is false, else a random head and a repeated tail (s2 shrinks it).
func content(compressible bool) []byte {
	b := make([]byte, testBlockSize)
	n := len(b)
	if compressible {
		n = 64
	}
	for i := 0; i < n; i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n; i < len(b); i++ {
		b[i] = byte(i % 7)
	}
	return b
}

// sealPIT seals the heads as they are in a new session with a Marker and returns the
// PIT, for looking at what the store holds.
func (e *ingestEnv) sealPIT(ctx context.Context) store.PIT {
	e.t.Helper()
	s := e.start(ctx)
	s.send(e.marker(1, 99))
	s.expectAck(1)
	sealed, ok := s.expect().(*wire.Sealed)
	if !ok || sealed.PITID == "" {
		e.t.Fatalf("sealing what the store holds: got %v", sealed)
	}
	s.end(true)
	pit, err := e.repo.LoadPIT(ctx, e.server, sealed.PITID)
	if err != nil {
		e.t.Fatal(err)
	}
	return pit
}

// checkVolume checks that volume vol of pit holds want (by block number) and zeros in
// every other block.
func (e *ingestEnv) checkVolume(ctx context.Context, pit store.PIT, vol int, want map[uint64][]byte) {
	e.t.Helper()
	vr, err := e.repo.OpenVolume(ctx, pit, e.vols[vol].Name)
	if err != nil {
		e.t.Fatal(err)
	}
	zero := make([]byte, testBlockSize)
	for i := range vr.Blocks() {
		got, err := vr.ReadBlock(ctx, i, nil)
		if err != nil {
			e.t.Fatalf("read block %d of %s: %v", i, e.vols[vol].Name, err)
		}
		exp, ok := want[i]
		if !ok {
			exp = zero
		}
		if !bytes.Equal(got, exp) {
			e.t.Errorf("PIT %s volume %s block %d holds other data than was acknowledged (zero: %v)", pit.ID, e.vols[vol].Name, i, bytes.Equal(got, zero))
		}
	}
}

// acked is the highest sequence the messages acknowledge.
func acked(msgs []wire.Msg) uint64 {
	var seq uint64
	for _, m := range msgs {
		if a, ok := m.(*wire.Ack); ok {
			seq = max(seq, a.Seq)
		}
	}
	return seq
}
