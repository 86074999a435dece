package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// block is one block of one volume with its content's hash: what a batch carries and
// what a consistency point collects. data is the block's content where it is held.
type block struct {
	vol   int
	n     uint64 // block number
	hash  uint64
	data  []byte // its content, where the block holds it
	bytes int    // the content's length
}

// item is a batch of blocks (or a marker, or a ping) on its way to the replicator, in
// the order it was produced.
type item struct {
	seq    uint64
	volume int
	blocks []block // without data: …
	raw    []byte  // … the blocks' data is here, back to back
	rawLen int64
	batch  *wire.Batch
	marker *wire.Marker
	ping   bool
	done   chan struct{} // closed when batch is encoded
	err    error
}

// flight is the newest version of a block sent and not yet acknowledged.
type flight struct{ hash, seq uint64 }

// pointInfo is what a marker stood for, until the replicator says it sealed it.
type pointInfo struct {
	at       time.Time
	level    consistency.Level
	freezeMs float64
}

// session is one replication session: it sends a Source's changed blocks over a Link
// in sequence, keeps what is in flight until the replicator acknowledges it (then the
// hash tables say the replica holds it), puts back what was not acknowledged when the
// session ends, and places consistency markers (docs/architecture.md §2).
//
// The session's loop (run) is the only producer: offer, dispatch, point and the scan
// run on it. The sender and the receiver goroutines share pending, inflight and markers
// with it under mu.
type session struct {
	src    Source
	link   Link
	tables []*tracker.HashTable // per volume: what the replica holds
	st     *status
	log    *slog.Logger
	opt    sessionOptions
	bs     int
	pipeline

	// The producer's (the loop's) own.
	seq       uint64  // the last sequence number given
	cur       []*item // per volume: the item being filled
	markerID  uint64
	version   uint16 // the session's protocol version
	rescanWhy string // set at the end: the next session rescans every volume, and why

	// Shared with the sender and the receiver.
	mu       sync.Mutex
	pending  []*item             // sent, not acknowledged, in sequence order
	inflight []map[uint64]flight // per volume: block → newest version sent
	markers  map[uint64]pointInfo
	matchAt  time.Time // the dirty sets were empty then …
	matchSeq uint64    // … and became matched when this is acknowledged
	acked    uint64
	pointErr *api.ReplicationError // why the last consistency point failed, until one succeeds
	// Why points are degraded: taken without a freeze (until one under freeze is
	// sealed), or less often than set (until they are taken as often again).
	crashNotice, widenNotice *api.ReplicationError
	lastFreeze               time.Duration // how long the last point froze the filesystems
	readPerBlock             time.Duration // smoothed time to read a block in a freeze window
	windowRetries            int           // points given up in a row for a large window
	lastSend                 time.Time
}

// pipeline is how items travel from the producer to the link: encoded by the
// encoders, written in sequence by the sender within the window and the bandwidth limit.
type pipeline struct {
	perItem int        // blocks per item
	queue   chan *item // every item, in sequence, to the sender
	work    chan *item // items of blocks, to the encoders
	errc    chan error // the first error that ends the session
	win     *wire.Window
	enc     *wire.Encoder
	limiter *rate.Limiter
	pools   sync.Pool // *wire.Batch
	raws    sync.Pool // *[]byte: items' raw data, perItem blocks
}

// newSession prepares a session on an open link, as the replicator's Welcome says.
func newSession(src Source, link Link, tables []*tracker.HashTable, welcome *wire.Welcome, enc *wire.Encoder,
	st *status, log *slog.Logger, opt sessionOptions) *session {
	n := len(tables)
	s := &session{src: src, link: link, tables: tables, st: st, log: log, opt: opt.withDefaults(), bs: src.BlockSize(),
		pipeline: pipeline{win: wire.NewWindow(welcome.WindowBytes), enc: enc,
			queue: make(chan *item, 16), work: make(chan *item, 16), errc: make(chan error, 4)},
		markers: map[uint64]pointInfo{}, inflight: make([]map[uint64]flight, n), cur: make([]*item, n), version: welcome.Version}
	for i := range s.inflight {
		s.inflight[i] = map[uint64]flight{}
	}
	s.perItem = max(1, min(32, (int(welcome.MaxBatchBytes)-wire.BlocksOverhead)/(s.bs+wire.EntryOverhead)))
	s.pools.New = func() any { return wire.NewBatch(int(welcome.MaxBatchBytes)) }
	s.limiter = rate.NewLimiter(rate.Inf, int(welcome.MaxBatchBytes)+1024)
	return s
}

// fail records the first error that ends the session.
func (s *session) fail(err error) {
	select {
	case s.errc <- err:
	default:
	}
}

// setBandwidth limits sending to mbps megabits per second (0: no limit).
func (s *session) setBandwidth(mbps int) {
	if mbps <= 0 {
		s.limiter.SetLimit(rate.Inf)
		return
	}
	s.limiter.SetLimit(rate.Limit(float64(mbps) * 1e6 / 8))
}

// dirtyBytes is what the dirty sets hold.
func (s *session) dirtyBytes() int64 {
	var n int64
	for i := range s.tables {
		n += int64(s.src.Dirty(i)) * int64(s.bs)
	}
	return n
}

// backlog is what is not yet on the replica: dirty blocks and unacknowledged bytes.
func (s *session) backlog() int64 { return s.dirtyBytes() + int64(s.win.InFlight()) }

// flying reports whether a version of the block is sent and not acknowledged, and its
// hash.
func (s *session) flying(vol int, n uint64) (flight, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.inflight[vol][n]
	return f, ok
}

// held reports whether the replica holds this content of the block and no other
// version of it is on its way.
func (s *session) held(vol int, n, hash uint64) bool {
	_, fly := s.flying(vol, n)
	return !fly && s.tables[vol].Matches(n, hash)
}

// offer queues a block for sending unless the replica holds it already (the hash table
// says so and no other version of it is on its way) or this very version is on its way.
func (s *session) offer(ctx context.Context, vol int, n uint64, data []byte, hash uint64) error {
	if f, fly := s.flying(vol, n); fly && f.hash == hash || !fly && s.tables[vol].Matches(n, hash) {
		return nil
	}
	it := s.cur[vol]
	if it == nil {
		it = &item{volume: vol, raw: s.rawBuf()}
		s.cur[vol] = it
	}
	it.raw = append(it.raw, data...)
	it.blocks = append(it.blocks, block{vol: vol, n: n, hash: hash, bytes: len(data)})
	it.rawLen += int64(len(data))
	if len(it.blocks) >= s.perItem {
		return s.dispatch(ctx, vol)
	}
	return nil
}

// rawBuf returns an empty buffer for an item's data.
func (s *session) rawBuf() []byte {
	if b, ok := s.raws.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 0, s.perItem*s.bs)
}

// dispatch gives a volume's item a sequence number, records its blocks in flight and
// passes it to the encoders and the ordered queue.
func (s *session) dispatch(ctx context.Context, vol int) error {
	it := s.cur[vol]
	if it == nil || len(it.blocks) == 0 {
		return nil
	}
	s.cur[vol] = nil
	s.seq++
	it.seq = s.seq
	it.done = make(chan struct{})
	s.mu.Lock()
	for _, b := range it.blocks {
		s.inflight[vol][b.n] = flight{hash: b.hash, seq: it.seq}
	}
	s.mu.Unlock()
	return s.enqueue(ctx, it, true)
}

// enqueue passes an item to the sender (and to the encoders when it carries blocks).
func (s *session) enqueue(ctx context.Context, it *item, encode bool) error {
	select {
	case s.queue <- it:
	case <-ctx.Done():
		return ctx.Err()
	case err := <-s.errc:
		s.fail(err)
		return err
	}
	if encode {
		select {
		case s.work <- it:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// flushAll dispatches every partly filled item.
func (s *session) flushAll(ctx context.Context) {
	for vol := range s.cur {
		_ = s.dispatch(ctx, vol)
	}
}

// mark queues a consistency marker after every block dispatched so far: the PIT it
// seals holds exactly those.
func (s *session) mark(ctx context.Context, at time.Time, level consistency.Level, freezeMs float64, groupPoint string) error {
	s.flushAll(ctx)
	s.markerID++
	m := &wire.Marker{ID: s.markerID, TimeUnixNano: at.UnixNano(), Level: level, FreezeMicros: uint32(freezeMs * 1000),
		GroupPoint: groupPoint}
	for _, v := range s.src.Volumes() {
		m.VolumeSizes = append(m.VolumeSizes, v.SizeBytes)
	}
	s.seq++
	m.Seq = s.seq
	s.mu.Lock()
	s.markers[m.ID] = pointInfo{at: at, level: level, freezeMs: freezeMs}
	s.mu.Unlock()
	it := &item{seq: m.Seq, marker: m, done: make(chan struct{})}
	close(it.done)
	return s.enqueue(ctx, it, false)
}

// ack applies an acknowledgement: the items up to seq are on the replica.
func (s *session) ack(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, it := range s.pending {
		if it.seq > seq {
			break
		}
		n++
		for _, b := range it.blocks {
			s.tables[it.volume].Set(b.n, b.hash)
			if f, ok := s.inflight[it.volume][b.n]; ok && f.seq <= seq {
				delete(s.inflight[it.volume], b.n)
			}
		}
	}
	s.pending = s.pending[n:]
	s.acked = max(s.acked, seq)
	if s.matchSeq != 0 && seq >= s.matchSeq {
		s.st.matched(s.matchAt)
		s.matchSeq = 0
	}
}

// matched records that the dirty sets were empty at at: the replica matches the source
// as of at once everything sent is acknowledged.
func (s *session) matched(at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 && s.acked >= s.seq {
		s.st.matched(at)
		s.matchSeq = 0
		return
	}
	if s.matchSeq == 0 {
		s.matchAt, s.matchSeq = at, s.seq
	}
}

// sealed applies the replicator's answer to a marker.
func (s *session) sealed(m *wire.Sealed) {
	s.mu.Lock()
	info, ok := s.markers[m.MarkerID]
	delete(s.markers, m.MarkerID)
	s.mu.Unlock()
	if m.Code != "" {
		s.log.Warn("the replicator could not seal a PIT", "code", m.Code, "reason", m.Message)
		s.setPointErr(&api.ReplicationError{Code: api.ErrSnapshotsFailure, Message: "the replication server could not seal a PIT: " + m.Message})
		return
	}
	if !ok {
		return
	}
	s.st.sealed(api.ConsistencyPointInfo{Time: info.at.UTC(), Level: info.level, SnapshotID: m.PITID}, info.freezeMs)
	if info.level == consistency.Filesystem {
		s.setNotice(true, nil)
	}
	s.setPointErr(nil)
	s.log.Debug("PIT sealed", "pit", m.PITID, "level", info.level.String(), "freeze_ms", info.freezeMs)
}

// requeue marks every block sent but not acknowledged, or gathered and never sent,
// dirty again: the next session sends it (a reconnect resumes, it does not restart).
func (s *session) requeue() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for vol, m := range s.inflight {
		for n := range m {
			s.src.Mark(vol, n)
		}
	}
	for vol, it := range s.cur {
		if it != nil {
			for _, b := range it.blocks {
				s.src.Mark(vol, b.n)
			}
		}
	}
	if s.st.isScanning() && s.rescanWhy == "" {
		s.rescanWhy = "a scan did not finish"
	}
}

// setPointErr records why a consistency point failed (nil: one succeeded); it is
// reported until a point succeeds.
func (s *session) setPointErr(e *api.ReplicationError) {
	s.mu.Lock()
	s.pointErr = e
	shown := s.shownLocked()
	s.mu.Unlock()
	s.st.setError(shown)
}

// setNotice records why points are degraded though they succeed: taken without a
// freeze (crash), or less often than set (widened); nil clears it.
func (s *session) setNotice(crash bool, e *api.ReplicationError) {
	s.mu.Lock()
	if crash {
		s.crashNotice = e
	} else {
		s.widenNotice = e
	}
	shown := s.shownLocked()
	s.mu.Unlock()
	s.st.setError(shown)
}

// pointError is what the state shows: why the last point failed, else why points are
// degraded, else nothing.
func (s *session) pointError() *api.ReplicationError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shownLocked()
}

func (s *session) shownLocked() *api.ReplicationError {
	for _, e := range []*api.ReplicationError{s.pointErr, s.crashNotice, s.widenNotice} {
		if e != nil {
			return e
		}
	}
	return nil
}
