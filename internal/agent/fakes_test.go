package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

const testBS = 4096

// fakeSource is a Source over volumes in memory. Writes mark blocks dirty when it is
// continuous; a freeze holds writes until the thaw.
type fakeSource struct {
	continuous bool
	mounts     []string // nil: no filesystem to freeze
	lost       atomic.Uint64
	freezes    atomic.Int64

	mu       sync.Mutex
	thawed   *sync.Cond
	frozen   bool
	vols     [][]byte
	dirty    []*tracker.DirtySet
	onFreeze func(vols [][]byte) // called frozen, with the volumes' contents
	// beforeFreeze and afterThaw are called just before the freeze and just after the
	// thaw (writes may be made there).
	beforeFreeze, afterThaw func()
	readErr                 error  // Read and Scan fail with it
	freezeErr               error  // Freeze fails with it
	duringCollect           func() // called by Collect after it took the dirty blocks
}

func newFakeSource(continuous bool, blocks ...int) *fakeSource {
	f := &fakeSource{continuous: continuous}
	f.thawed = sync.NewCond(&f.mu)
	for _, n := range blocks {
		f.vols = append(f.vols, make([]byte, n*testBS))
		f.dirty = append(f.dirty, tracker.NewDirtySet(uint64(n)))
	}
	return f
}

// write fills a block with a byte, once no freeze holds writes.
func (f *fakeSource) write(vol int, block uint64, b byte) {
	f.writeData(vol, block, bytes.Repeat([]byte{b}, testBS))
}

// writeData writes a block, once no freeze holds writes.
func (f *fakeSource) writeData(vol int, block uint64, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.frozen {
		f.thawed.Wait()
	}
	copy(f.vols[vol][block*testBS:(block+1)*testBS], data)
	if f.continuous {
		f.dirty[vol].Mark(block, block)
	}
}

// contents copies the volumes.
func (f *fakeSource) contents() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]byte, len(f.vols))
	for i, v := range f.vols {
		out[i] = bytes.Clone(v)
	}
	return out
}

func (f *fakeSource) Tracker() string {
	if f.continuous {
		return tracker.NameEBPF
	}
	return tracker.NameScan
}
func (f *fakeSource) Continuous() bool { return f.continuous }
func (f *fakeSource) BlockSize() int   { return testBS }
func (f *fakeSource) Volumes() []wire.Volume {
	var out []wire.Volume
	for i, v := range f.vols {
		out = append(out, wire.Volume{Name: fmt.Sprintf("vd%c", 'a'+i), SizeBytes: uint64(len(v)), BlockSize: 512})
	}
	return out
}
func (f *fakeSource) Dirty(vol int) uint64               { return f.dirty[vol].Count() }
func (f *fakeSource) IsDirty(vol int, block uint64) bool { return f.dirty[vol].Dirty(block) }
func (f *fakeSource) Mark(vol int, block uint64)         { f.dirty[vol].Mark(block, block) }
func (f *fakeSource) Take(vol int, dst []uint64, n int) []uint64 {
	return f.dirty[vol].Take(dst, n)
}

func (f *fakeSource) Read(ctx context.Context, vol int, blocks []uint64, fn func(block uint64, data []byte) error) error {
	for _, b := range blocks {
		f.mu.Lock()
		data, err := bytes.Clone(f.vols[vol][b*testBS:(b+1)*testBS]), f.readErr
		f.mu.Unlock()
		if err != nil {
			return err
		}
		if err := fn(b, data); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (f *fakeSource) Scan(ctx context.Context, vol int, fn func(block uint64, data []byte, hash uint64) error) error {
	n := uint64(len(f.vols[vol]) / testBS)
	for b := uint64(0); b < n; b++ {
		err := f.Read(ctx, vol, []uint64{b}, func(block uint64, data []byte) error { return fn(block, data, wire.Hash(data)) })
		if err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeSource) Collect(ctx context.Context, vol int, held func(block, hash uint64) bool, fn func(block uint64, data []byte, hash uint64) error) error {
	if !f.continuous {
		return f.Scan(ctx, vol, func(b uint64, data []byte, h uint64) error {
			if held(b, h) {
				return nil
			}
			return fn(b, data, h)
		})
	}
	blocks := f.Take(vol, nil, 1<<20)
	if f.duringCollect != nil {
		f.duringCollect()
	}
	return f.Read(ctx, vol, blocks, func(b uint64, data []byte) error { return fn(b, data, wire.Hash(data)) })
}

func (f *fakeSource) Sync(context.Context) error { return nil }
func (f *fakeSource) Lost() uint64               { return f.lost.Load() }

func (f *fakeSource) Mounts() ([]string, error) {
	if f.mounts == nil {
		return nil, errors.New("nothing to freeze")
	}
	return f.mounts, nil
}

func (f *fakeSource) Freeze(_ context.Context, _ []string, _ time.Duration) (Frozen, error) {
	if f.freezeErr != nil {
		return nil, f.freezeErr
	}
	if f.beforeFreeze != nil {
		f.beforeFreeze()
	}
	f.mu.Lock()
	f.frozen = true
	on := f.onFreeze
	var vols [][]byte
	if on != nil {
		for _, v := range f.vols {
			vols = append(vols, bytes.Clone(v))
		}
	}
	f.mu.Unlock()
	f.freezes.Add(1)
	if on != nil {
		on(vols)
	}
	return &fakeFrozen{f: f, at: time.Now()}, nil
}

type fakeFrozen struct {
	f  *fakeSource
	at time.Time
}

func (z *fakeFrozen) Thaw() error {
	z.f.mu.Lock()
	z.f.frozen = false
	z.f.thawed.Broadcast()
	z.f.mu.Unlock()
	if z.f.afterThaw != nil {
		z.f.afterThaw()
	}
	return nil
}

func (z *fakeFrozen) Elapsed() time.Duration { return time.Since(z.at) }

// fakeReplicator is the replicator's end of an in-memory link: it applies every batch
// to a replica, snapshots the replica at each marker (the PIT), and acknowledges
// everything at once unless hold is set (then only up to what ackUpTo allows).
type fakeReplicator struct {
	conn *wire.Conn
	dec  *wire.Decoder

	mu       sync.Mutex
	replica  []map[uint64][]byte
	pits     map[uint64][]map[uint64][]byte // marker id → replica then
	markers  map[uint64]*wire.Marker        // marker id → the marker
	received []uint64                       // sequence numbers, in order
	blocks   int                            // blocks received
	payload  int                            // their frames' payload bytes
	hold     bool
	ackTo    uint64 // hold: acknowledge up to this
	last     uint64 // highest sequence number received
	acked    uint64
	dropAt   int // > 0: close the link after this many batches
	batches  int
	done     chan struct{}
}

// pipeLink connects a session to a fake replicator of volumes volumes.
func pipeLink(t *testing.T, volumes int) (Link, *fakeReplicator) {
	a, b := net.Pipe()
	r := &fakeReplicator{conn: wire.NewConn(b), dec: wire.NewDecoder(testBS), pits: map[uint64][]map[uint64][]byte{},
		markers: map[uint64]*wire.Marker{}, done: make(chan struct{})}
	for range volumes {
		r.replica = append(r.replica, map[uint64][]byte{})
	}
	go r.serve()
	t.Cleanup(func() {
		a.Close()
		b.Close()
		<-r.done
	})
	return wire.NewConn(a), r
}

func (r *fakeReplicator) serve() {
	defer close(r.done)
	defer r.conn.Close()
	for {
		m, err := r.conn.ReadMsg()
		if err != nil {
			return
		}
		if !r.handle(m) {
			return
		}
	}
}

// handle applies one message and answers it; false closes the link.
func (r *fakeReplicator) handle(m wire.Msg) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch m := m.(type) {
	case *wire.Blocks:
		if r.batches++; r.dropAt > 0 && r.batches > r.dropAt {
			return false
		}
		r.payload += m.PayloadLen()
		for i := range m.Entries {
			e := &m.Entries[i]
			raw := make([]byte, e.RawLen)
			if e.Codec != wire.CodecZero {
				var err error
				if raw, err = r.dec.Decode(e, raw); err != nil {
					return false
				}
			}
			r.replica[m.Volume][e.Block] = bytes.Clone(raw)
			r.blocks++
		}
		r.received = append(r.received, m.Seq)
		r.last = m.Seq
	case *wire.Marker:
		pit := make([]map[uint64][]byte, len(r.replica))
		for i, v := range r.replica {
			pit[i] = map[uint64][]byte{}
			for b, d := range v {
				pit[i][b] = d
			}
		}
		r.pits[m.ID] = pit
		r.markers[m.ID] = m
		r.received = append(r.received, m.Seq)
		r.last = m.Seq
		_ = r.conn.WriteMsg(&wire.Sealed{MarkerID: m.ID, PITID: fmt.Sprintf("pit-%d", m.ID)})
	case *wire.Ping:
		_ = r.conn.WriteMsg(&wire.Pong{Nonce: m.Nonce})
	case *wire.Goodbye:
		return false
	}
	return r.ackLocked() && r.conn.Flush() == nil
}

// ackLocked acknowledges what may be.
func (r *fakeReplicator) ackLocked() bool {
	to := r.last
	if r.hold {
		to = min(r.ackTo, r.last)
	}
	if to > r.acked {
		r.acked = to
		return r.conn.WriteMsg(&wire.Ack{Seq: to}) == nil
	}
	return true
}

// ackUpTo lets the replicator acknowledge up to seq now.
func (r *fakeReplicator) ackUpTo(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ackTo = seq
	if r.ackLocked() {
		_ = r.conn.Flush()
	}
}

func (r *fakeReplicator) holding() {
	r.mu.Lock()
	r.hold = true
	r.mu.Unlock()
}

// block returns what the replica holds of a block (nil: nothing).
func (r *fakeReplicator) block(vol int, b uint64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.replica[vol][b]
}

// matches reports whether the replica holds exactly these volumes' contents (blocks it
// never received count as zeros).
func (r *fakeReplicator) matches(vols [][]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sameBlocks(r.replica, vols)
}

func sameBlocks(replica []map[uint64][]byte, vols [][]byte) error {
	zero := make([]byte, testBS)
	for i, v := range vols {
		for b := uint64(0); b < uint64(len(v)/testBS); b++ {
			got := replica[i][b]
			if got == nil {
				got = zero
			}
			if !bytes.Equal(got, v[b*testBS:(b+1)*testBS]) {
				return fmt.Errorf("volume %d block %d: the replica holds %x…, the source %x…", i, b, got[:4], v[b*testBS:b*testBS+4])
			}
		}
	}
	return nil
}

// testSession is a session of src over link, as a replicator with a 256 KiB batch
// limit and a 4 MiB window welcomes it.
func testSession(src Source, link Link, opt sessionOptions) *session {
	var tables []*tracker.HashTable
	for _, v := range src.Volumes() {
		t, err := tracker.NewHashTable(v.Name, int64(v.SizeBytes), testBS)
		if err != nil {
			panic(err)
		}
		tables = append(tables, t)
	}
	enc, err := wire.NewEncoder("s2")
	if err != nil {
		panic(err)
	}
	welcome := &wire.Welcome{Version: wire.Version, BlockSize: testBS, WindowBytes: 4 << 20, MaxBatchBytes: 256 << 10}
	return newSession(src, link, tables, welcome, enc, &status{State: api.StateInitiating}, slog.New(slog.DiscardHandler), opt)
}

// testConfig replicates with points every turn of the loop (interval 0).
func testConfig() api.ReplicationConfig {
	return api.ReplicationConfig{
		Control:    api.ReplicationControl{Desired: api.DesiredReplicating},
		Replicator: &api.ReplicatorEndpoint{ID: "rep-1", Address: "pipe"},
		Settings:   api.ReplicationSettings{FreezeTimeoutMs: 2000, Compression: "s2"},
	}
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
