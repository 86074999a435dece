package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/freeze"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// sessionError ends a session with a state and an error the control plane shows.
type sessionError struct {
	state, code, msg string
	connected        bool // the replicator answered: retry soon
}

func (e *sessionError) Error() string { return e.code + ": " + e.msg }

// fromWireError maps the replicator's Error frame to a state.
func fromWireError(e *wire.Error, current string) *sessionError {
	se := &sessionError{state: current, code: e.Code, msg: e.Message, connected: true}
	switch e.Code {
	case wire.CodeStagingFull:
		se.state, se.code = api.StateStalled, api.ErrStagingStorageFull
	case wire.CodeStopped:
		se.state = api.StateStopped
	case wire.CodeNotAuthorized:
		se.state, se.code = api.StateStalled, wire.CodeNotAuthorized
	case wire.CodeStagingError:
		se.state = api.StateStalled
	}
	return se
}

// item is a batch of blocks (or a marker, or a ping) on its way to the replicator, in
// the order it was produced.
type item struct {
	seq    uint64
	volume int
	blocks []sentBlock
	raw    []byte // the blocks' data, back to back
	rawLen int64
	batch  *wire.Batch
	marker *wire.Marker
	ping   bool
	done   chan struct{} // closed when batch is encoded
	err    error
}

type sentBlock struct {
	block uint64
	hash  uint64
	n     int // raw length
}

type inflight struct{ hash, seq uint64 }

// sess is one connection to the replicator.
type sess struct {
	a       *Agent
	conn    *wire.Conn
	win     *wire.Window
	bs      int
	perItem int
	enc     *wire.Encoder // the session's compression (a change of it starts a new session)
	limiter *rate.Limiter

	seq   uint64 // producer's sequence counter
	queue chan *item
	work  chan *item
	errc  chan error
	pools sync.Pool // *wire.Batch
	raws  sync.Pool // *[]byte: items' raw data, perItem blocks

	mu       sync.Mutex
	pending  []*item               // sent, not acknowledged, in sequence order
	inflight []map[uint64]inflight // per volume: block → last hash sent
	markers  map[uint64]pointInfo  // marker id → what it was
	matchAt  time.Time             // the dirty sets were empty then …
	matchSeq uint64                // … and became matched when this is acknowledged
	acked    uint64
	pointErr *api.ReplicationError // why the last consistency point failed, until one succeeds

	cur      []*item // per volume: the item being filled
	markerID uint64
	lastSend time.Time
}

type pointInfo struct {
	at       time.Time
	level    consistency.Level
	freezeMs float64
}

// sameReplicator reports whether two configs name the same replicator with the same
// certificates: a replicator replaced, moved or re-keyed ends the session at once.
func sameReplicator(a, b *api.ReplicatorEndpoint) bool {
	return a != nil && b != nil && a.ID == b.ID && a.Address == b.Address && slices.Equal(a.CertificateSerials, b.CertificateSerials)
}

// replicatorCAs is the CA that signs replicators: the replication config's, else the
// one saved at install.
func (a *Agent) replicatorCAs(cfg api.ReplicationConfig) *x509.CertPool {
	if cfg.CACertificates != "" {
		pool := x509.NewCertPool()
		if pool.AppendCertsFromPEM([]byte(cfg.CACertificates)) {
			return pool
		}
	}
	return a.cfg.CAPool
}

func (a *Agent) session(ctx context.Context, cfg api.ReplicationConfig) error {
	rep := cfg.Replicator
	if a.currentState() == api.StateInitiating {
		a.setInitiating("CONNECT_AGENT_TO_REPLICATION_SERVER", api.StepInProgress, nil)
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conn, err := wire.Dial(dctx, rep.Address, wire.ClientTLSConfig(a.cfg.Certificate, a.replicatorCAs(cfg), "",
		wire.Assigned{Account: a.cfg.AccountID, ID: rep.ID, Serials: rep.CertificateSerials}))
	cancel()
	if errors.Is(err, wire.ErrNotAssigned) {
		return &sessionError{state: a.currentState(), code: api.ErrUnstableNetwork,
			msg: fmt.Sprintf("refused to send to %s: %v; the agent asks the control plane again and retries", rep.Address, err)}
	}
	if err != nil {
		return &sessionError{state: a.currentState(), code: api.ErrUnstableNetwork,
			msg: fmt.Sprintf("cannot connect to replication server %s at %s: %v; the agent retries by itself", rep.Name, rep.Address, err)}
	}
	defer conn.Close()
	hello := &wire.Hello{Version: wire.Version, SourceServerID: a.cfg.ServerID, AgentVersion: a.cfg.Version, Tracker: a.trName,
		TrackerGeneration: a.generation}
	for _, v := range a.vols {
		hello.Volumes = append(hello.Volumes, wire.Volume{Name: v.Name, SizeBytes: uint64(v.SizeBytes), BlockSize: uint32(max(v.dev.Align(), 512))})
	}
	welcome, _, err := wire.Open(conn, hello, 30*time.Second)
	var refused *wire.Error
	if errors.As(err, &refused) {
		return fromWireError(refused, a.currentState())
	}
	if err != nil {
		return err
	}
	if int(welcome.BlockSize) != a.blockSize {
		a.restartTracker(ctx, int(welcome.BlockSize))
	}
	bs := a.blockSize
	rescan := a.takeRescan() || a.tr == nil
	initial := false
	for i, v := range a.vols {
		if v.table == nil {
			t, err := tracker.LoadHashTable(a.tablePath(v), v.Name, v.SizeBytes, bs)
			if err != nil {
				a.log.Info("starting from an empty hash table", "volume", v.Name, "reason", err)
				if t, err = tracker.NewHashTable(v.Name, v.SizeBytes, bs); err != nil {
					return err
				}
			}
			a.mu.Lock()
			v.table = t
			a.mu.Unlock()
		}
		if !welcome.Volumes[i].Exists {
			v.table.Reset()
			initial, rescan = true, true
		}
		if welcome.Volumes[i].Rescan {
			rescan = true
		}
	}
	enc, err := wire.NewEncoder(cfg.Settings.Compression)
	if err != nil {
		return err
	}
	defer enc.Close()
	s := &sess{a: a, conn: conn, win: wire.NewWindow(welcome.WindowBytes), bs: bs, enc: enc,
		queue: make(chan *item, 16), work: make(chan *item, 16), errc: make(chan error, 4),
		markers: map[uint64]pointInfo{}, inflight: make([]map[uint64]inflight, len(a.vols)), cur: make([]*item, len(a.vols))}
	for i := range s.inflight {
		s.inflight[i] = map[uint64]inflight{}
	}
	s.perItem = max(1, min(32, (int(welcome.MaxBatchBytes)-wire.BlocksOverhead)/(bs+wire.EntryOverhead)))
	s.pools.New = func() any { return wire.NewBatch(int(welcome.MaxBatchBytes)) }
	s.limiter = rate.NewLimiter(rate.Inf, int(welcome.MaxBatchBytes)+1024)
	s.setBandwidth(cfg.Settings.BandwidthMbps)
	a.mu.Lock()
	a.st.Replicator = rep.Address
	a.st.backlog = s.backlog
	a.mu.Unlock()
	a.log.Info("connected to the replication server", "replicator", rep.Name, "address", rep.Address, "rescan", rescan, "initial", initial)

	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for range workers {
		wg.Go(func() { s.encoder() })
	}
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		if err := s.sender(sctx); err != nil {
			s.fail(err)
		}
	}()
	go func() { s.fail(s.receiver()) }()
	err = s.main(sctx, cfg, rescan, initial)
	if err == nil {
		// A clean end (the config changed): let what was sent be acknowledged.
		s.flushAll(sctx)
		dctx, c := context.WithTimeout(sctx, 10*time.Second)
		_ = s.win.Drain(dctx)
		c()
	}
	stop()
	if err != nil {
		conn.Close() // unblocks a sender stuck writing to a dead link
	}
	close(s.queue)
	<-senderDone
	close(s.work)
	wg.Wait()
	if err == nil {
		_ = conn.WriteMsg(&wire.Goodbye{})
		_ = conn.Flush()
	}
	conn.Close()
	s.requeue()
	a.mu.Lock()
	a.st.backlog = nil
	a.mu.Unlock()
	a.saveTables()
	return err
}

// fail records the first error that ends the session.
func (s *sess) fail(err error) {
	select {
	case s.errc <- err:
	default:
	}
}

func (s *sess) setBandwidth(mbps int) {
	if mbps <= 0 {
		s.limiter.SetLimit(rate.Inf)
		return
	}
	s.limiter.SetLimit(rate.Limit(float64(mbps) * 1e6 / 8))
}

// backlog is what is not yet on the replica: dirty blocks and unacknowledged bytes.
func (s *sess) backlog() int64 {
	var n int64
	for _, v := range s.a.vols {
		n += int64(v.dirty.Count()) * int64(s.bs)
	}
	return n + int64(s.win.InFlight())
}

// requeue marks every block sent but not acknowledged dirty again: the next session
// sends it (a reconnect resumes, it does not restart).
func (s *sess) requeue() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for vol, m := range s.inflight {
		for block := range m {
			s.a.vols[vol].dirty.Mark(block, block)
		}
	}
	// Blocks gathered into a batch that was never dispatched.
	for vol, it := range s.cur {
		if it != nil {
			for _, b := range it.blocks {
				s.a.vols[vol].dirty.Mark(b.block, b.block)
			}
		}
	}
	// A scan that did not finish goes on in the next session.
	s.a.mu.Lock()
	if s.a.st.scanning {
		s.a.rescan = true
	}
	s.a.mu.Unlock()
}

// main runs the session: a scan when needed, then continuous replication with
// consistency points, until the config changes (nil) or something fails.
func (s *sess) main(ctx context.Context, cfg api.ReplicationConfig, rescan, initial bool) error {
	a := s.a
	if rescan {
		state := api.StateRescan
		if initial {
			state = api.StateInitialSync
		}
		a.mu.Lock()
		a.st.scanning, a.st.initial = true, initial
		a.mu.Unlock()
		a.setState(state, nil)
		for i := range a.vols {
			if err := s.scanVolume(ctx, i, false); err != nil {
				return err
			}
		}
		s.flushAll(ctx)
		a.mu.Lock()
		a.st.scanning = false
		a.mu.Unlock()
	}
	a.setState(api.StateContinuous, nil)
	interval := time.Duration(cfg.Settings.ConsistencyPointIntervalSeconds) * time.Second
	bound := time.Duration(cfg.Settings.FreezeTimeoutMs) * time.Millisecond
	lastPoint, lastLook := time.Time{}, time.Now()
	handledRequest := ""
	var passTook time.Duration
	var growing int
	var lastBacklog int64
	for {
		select {
		case err := <-s.errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if a.checkLost() {
			return &sessionError{state: api.StateRescan, code: api.ErrTrackerEventsLost, connected: true,
				msg: "the eBPF tracker lost write events (a write storm outran the agent); rescanning, nothing is lost"}
		}
		// The config: stop, pause, a new replicator or generation end the session.
		if nc, ok := a.config(ctx); ok && nc.Fingerprint() != cfg.Fingerprint() {
			{
				if nc.Control.Desired != api.DesiredReplicating || nc.Control.Generation != cfg.Control.Generation ||
					!sameReplicator(nc.Replicator, cfg.Replicator) || nc.Settings.Compression != cfg.Settings.Compression {
					return nil
				}
				cfg = nc
				s.setBandwidth(cfg.Settings.BandwidthMbps)
				interval = time.Duration(cfg.Settings.ConsistencyPointIntervalSeconds) * time.Second
				bound = time.Duration(cfg.Settings.FreezeTimeoutMs) * time.Millisecond
			}
		}
		// New disks, and disks that changed size, restart the session with them.
		if time.Since(lastLook) >= volumeLook {
			lastLook = time.Now()
			if a.volumesChanged(cfg.Settings.IgnoreNewDisks) {
				return errVolumesChanged
			}
		}
		// Send what changed.
		sent, err := s.drain(ctx)
		if err != nil {
			return err
		}
		// Check the tracker: a slice of a background pass comparing hashes.
		if err := s.verifyStep(ctx); err != nil {
			return err
		}
		// A consistency point when due or asked for.
		requested := cfg.Control.SnapshotRequest != nil && cfg.Control.SnapshotRequest.ID != handledRequest
		every := interval
		if a.tr == nil {
			every = max(interval, 3*passTook) // the scan tracker reads everything each time
		}
		if requested || time.Since(lastPoint) >= every {
			t0 := time.Now()
			if err := s.consistencyPoint(ctx, bound); err != nil {
				return err
			}
			if a.tr == nil {
				passTook = time.Since(t0)
			}
			lastPoint = time.Now()
			if requested {
				handledRequest = cfg.Control.SnapshotRequest.ID
			}
		}
		// State: backlog, and whether it keeps growing.
		b := s.backlog()
		switch {
		case b > 256<<20 && b > lastBacklog:
			growing++
		case b <= 256<<20:
			growing = 0
		}
		lastBacklog = b
		switch {
		case growing > int(time.Minute/(50*time.Millisecond)):
			a.setState(api.StateStalled, &api.ReplicationError{Code: api.ErrNotConverging,
				Message: "writes on the server outrun replication: raise the bandwidth limit, use a faster link, or reduce the write load"})
		case b > 256<<20:
			a.setState(api.StateBacklog, s.pointError())
		default:
			a.setState(api.StateContinuous, s.pointError())
		}
		if time.Since(s.lastSend) > pingEvery {
			s.emitPing()
		}
		if !sent {
			sleep(ctx, 50*time.Millisecond)
		}
	}
}

// drain sends the dirty blocks of every volume, a bounded amount per call. It reports
// whether it sent anything.
func (s *sess) drain(ctx context.Context) (bool, error) {
	a := s.a
	any := false
	empty := true
	at := time.Now()
	var buf []uint64
	for i, v := range a.vols {
		if v.dirty.Count() == 0 {
			continue
		}
		buf = v.dirty.Take(buf[:0], 1024)
		if len(buf) == 0 {
			continue
		}
		any = true
		if v.dirty.Count() > 0 {
			empty = false
		}
		err := v.dev.ReadBlocks(ctx, buf, s.bs, func(block uint64, data []byte) error {
			return s.offer(ctx, i, block, data, hashOf(data))
		})
		if err != nil {
			// Taken but maybe not sent: dirty again (a duplicate costs little).
			for _, b := range buf {
				v.dirty.Mark(b, b)
			}
			if ctx.Err() != nil || errors.Is(err, errSessionEnded) {
				return any, err
			}
			return any, &sessionError{state: api.StateStalled, code: api.ErrVolumeNotAccessible,
				msg: fmt.Sprintf("reading volume %s failed: %v", v.Name, err)}
		}
	}
	s.flushAll(ctx)
	if empty {
		s.matched(at)
	}
	return any, nil
}

// matched records that the dirty sets were empty at at: the replica matches the source
// as of at once everything sent is acknowledged.
func (s *sess) matched(at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 && s.allQueuedSent() {
		s.a.mu.Lock()
		s.a.st.lastMatched = at
		s.a.mu.Unlock()
		s.matchSeq = 0
		return
	}
	if s.matchSeq == 0 {
		s.matchAt, s.matchSeq = at, s.seq
	}
}

func (s *sess) allQueuedSent() bool { return s.acked >= s.seq }

// scanVolume reads a volume whole and sends every block the replica does not hold.
// With collect, the blocks are gathered and returned by a later emit (used under
// freeze by the scan tracker) — here they are sent as found.
func (s *sess) scanVolume(ctx context.Context, i int, _ bool) error {
	v := s.a.vols[i]
	s.a.st.scanTotal.Store(0)
	for _, w := range s.a.vols {
		s.a.st.scanTotal.Add(w.SizeBytes)
	}
	done := int64(0)
	for j := 0; j < i; j++ {
		done += s.a.vols[j].SizeBytes
	}
	s.a.st.scanDone.Store(done)
	n := 0
	err := v.dev.Scan(ctx, s.bs, 0, func(block uint64, data []byte, hash uint64) error {
		s.a.st.scanDone.Add(int64(len(data)))
		if err := s.offer(ctx, i, block, data, hash); err != nil {
			return err
		}
		if n++; n%s.perItem == 0 {
			select {
			case err := <-s.errc:
				s.fail(err)
				return err
			default:
			}
			if s.a.cfg.ScanPause > 0 {
				sleep(ctx, s.a.cfg.ScanPause)
			}
		}
		return nil
	})
	if err != nil {
		var se *sessionError
		if errors.As(err, &se) || ctx.Err() != nil {
			return err
		}
		if errors.Is(err, errSessionEnded) {
			return err
		}
		return &sessionError{state: api.StateStalled, code: api.ErrVolumeNotAccessible, msg: fmt.Sprintf("scanning volume %s failed: %v", v.Name, err)}
	}
	return nil
}

var errSessionEnded = errors.New("the session ended")

// codeHookFailed reports a pre-freeze or post-thaw hook that failed.
const codeHookFailed = "HOOK_FAILED"

// volumeLook is how often the agent looks for new disks and size changes.
const volumeLook = 10 * time.Second

// Liveness of the link to the replicator.
const (
	pingEvery    = 5 * time.Second
	silenceLimit = 20 * time.Second
)

func hashOf(data []byte) uint64 { return wire.Hash(data) }

// verifyStep advances the background verification pass of the eBPF tracker by a
// slice: blocks whose content differs from what the replica holds (and is not on its
// way) were missed by the tracker; they are sent and counted.
func (s *sess) verifyStep(ctx context.Context) error {
	a := s.a
	if a.tr == nil || a.cfg.VerifyEvery < 0 {
		return nil
	}
	if a.verify.vol >= len(a.vols) {
		if time.Since(a.verify.last) < a.cfg.VerifyEvery {
			return nil
		}
		a.verify.vol, a.verify.next, a.verify.found = 0, 0, 0
	}
	v := a.vols[a.verify.vol]
	const slice = 256
	n := v.dev.Blocks(s.bs)
	blocks := make([]uint64, 0, slice)
	for b := a.verify.next; b < n && len(blocks) < slice; b++ {
		blocks = append(blocks, b)
	}
	err := v.dev.ReadBlocks(ctx, blocks, s.bs, func(block uint64, data []byte) error {
		h := hashOf(data)
		s.mu.Lock()
		_, flying := s.inflight[a.verify.vol][block]
		s.mu.Unlock()
		if flying || v.dirty.Dirty(block) || v.table.Matches(block, h) {
			return nil
		}
		a.verify.found++
		return s.offer(ctx, a.verify.vol, block, data, h)
	})
	if err != nil {
		return err
	}
	a.verify.next += uint64(len(blocks))
	if a.verify.next >= n {
		a.verify.vol++
		a.verify.next = 0
		if a.verify.vol >= len(a.vols) {
			a.verify.last = time.Now()
			if a.verify.found > 0 {
				a.log.Warn("the verification pass found blocks the tracker had missed; they were sent", "blocks", a.verify.found)
			}
		}
	}
	return nil
}

// offer queues a block for sending unless the replica holds it already (the hash table
// says so and no other version of it is on its way).
func (s *sess) offer(ctx context.Context, vol int, block uint64, data []byte, hash uint64) error {
	v := s.a.vols[vol]
	s.mu.Lock()
	f, flying := s.inflight[vol][block]
	s.mu.Unlock()
	if flying {
		if f.hash == hash {
			return nil
		}
	} else if v.table.Matches(block, hash) {
		return nil
	}
	it := s.cur[vol]
	if it == nil {
		it = &item{volume: vol, raw: s.rawBuf()}
		s.cur[vol] = it
	}
	it.raw = append(it.raw, data...)
	it.blocks = append(it.blocks, sentBlock{block: block, hash: hash, n: len(data)})
	it.rawLen += int64(len(data))
	if len(it.blocks) >= s.perItem {
		return s.dispatch(ctx, vol)
	}
	return nil
}

// rawBuf returns an empty buffer for an item's data.
func (s *sess) rawBuf() []byte {
	if b, ok := s.raws.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 0, s.perItem*s.bs)
}

// dispatch sends a volume's item to the encoders and the ordered queue.
func (s *sess) dispatch(ctx context.Context, vol int) error {
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
		s.inflight[vol][b.block] = inflight{hash: b.hash, seq: it.seq}
	}
	s.mu.Unlock()
	return s.enqueue(ctx, it, true)
}

func (s *sess) enqueue(ctx context.Context, it *item, encode bool) error {
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
func (s *sess) flushAll(ctx context.Context) {
	for vol := range s.cur {
		_ = s.dispatch(ctx, vol)
	}
}

func (s *sess) emitPing() {
	s.lastSend = time.Now()
	it := &item{ping: true, done: make(chan struct{})}
	close(it.done)
	select {
	case s.queue <- it:
	default:
	}
}

// encoder compresses items into Blocks frames.
func (s *sess) encoder() {
	for it := range s.work {
		b := s.pools.Get().(*wire.Batch)
		b.Reset(it.seq, uint16(it.volume))
		off := 0
		for _, sb := range it.blocks {
			raw := it.raw[off : off+sb.n]
			off += sb.n
			zero, err := s.enc.Encode(b, sb.block, sb.hash, raw)
			if it.err = err; err != nil {
				break
			}
			if zero {
				s.a.st.sentZero.Add(1)
			}
		}
		it.batch = b
		close(it.done)
	}
}

// sender writes items in order, within the window and the bandwidth limit.
func (s *sess) sender(ctx context.Context) error {
	for it := range s.queue {
		select {
		case <-it.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if it.err != nil {
			return it.err
		}
		var msg wire.Msg
		var n int
		switch {
		case it.ping:
			msg = &wire.Ping{Nonce: uint64(time.Now().UnixNano())}
		case it.marker != nil:
			msg, n = it.marker, it.marker.PayloadLen()
		default:
			msg, n = it.batch, it.batch.PayloadLen()
		}
		if !it.ping {
			if !s.win.Fits(n) {
				if err := s.conn.Flush(); err != nil {
					return err
				}
			}
			if err := s.win.Send(ctx, it.seq, n); err != nil {
				return err
			}
			if err := s.limiter.WaitN(ctx, min(n, s.limiter.Burst())); err != nil {
				return err
			}
			s.mu.Lock()
			s.pending = append(s.pending, it)
			s.mu.Unlock()
		}
		if err := s.conn.WriteMsg(msg); err != nil {
			return err
		}
		if it.batch != nil {
			s.a.st.sentBytes.Add(it.rawLen)
			s.a.st.sentBlocks.Add(int64(len(it.blocks)))
			s.pools.Put(it.batch)
			raw := it.raw[:0]
			s.raws.Put(&raw)
			it.batch, it.raw = nil, nil
		}
		s.lastSend = time.Now()
		if len(s.queue) == 0 {
			if err := s.conn.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// receiver reads acknowledgements, seal results and errors.
func (s *sess) receiver() error {
	for {
		// The replicator answers pings (sent after pingEvery without traffic) and
		// acknowledges data within its flush interval: silence means a dead link.
		_ = s.conn.SetReadDeadline(time.Now().Add(silenceLimit))
		m, err := s.conn.ReadMsg()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *wire.Ack:
			if err := s.win.Ack(m.Seq); err != nil {
				return err
			}
			s.ack(m.Seq)
		case *wire.Sealed:
			s.sealed(m)
		case *wire.Pong:
		case *wire.Ping:
		case *wire.Error:
			return fromWireError(m, s.a.currentState())
		default:
			return fmt.Errorf("%w: unexpected %s from the replicator", wire.ErrProtocol, m.Type())
		}
	}
}

// ack applies an acknowledgement: the blocks up to seq are on the replica.
func (s *sess) ack(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, it := range s.pending {
		if it.seq > seq {
			break
		}
		n++
		if it.marker != nil {
			continue
		}
		v := s.a.vols[it.volume]
		for _, b := range it.blocks {
			v.table.Set(b.block, b.hash)
			if f, ok := s.inflight[it.volume][b.block]; ok && f.seq <= seq {
				delete(s.inflight[it.volume], b.block)
			}
		}
	}
	s.pending = s.pending[n:]
	s.acked = max(s.acked, seq)
	if s.matchSeq != 0 && seq >= s.matchSeq {
		s.a.mu.Lock()
		s.a.st.lastMatched = s.matchAt
		s.a.mu.Unlock()
		s.matchSeq = 0
	}
}

func (s *sess) sealed(m *wire.Sealed) {
	s.mu.Lock()
	info, ok := s.markers[m.MarkerID]
	delete(s.markers, m.MarkerID)
	s.mu.Unlock()
	if m.Code != "" {
		s.a.log.Warn("the replicator could not seal a PIT", "code", m.Code, "reason", m.Message)
		s.setPointErr(&api.ReplicationError{Code: api.ErrSnapshotsFailure, Message: "the replication server could not seal a PIT: " + m.Message})
		return
	}
	if !ok {
		return
	}
	s.a.mu.Lock()
	s.a.st.lastPoint = &api.ConsistencyPointInfo{Time: info.at.UTC(), Level: info.level, SnapshotID: m.PITID}
	f := info.freezeMs
	s.a.st.lastFreeze = &f
	s.a.st.changed = true
	s.a.mu.Unlock()
	s.setPointErr(nil)
	s.a.log.Info("PIT sealed", "pit", m.PITID, "level", info.level.String(), "freeze_ms", info.freezeMs)
}

// consistencyPoint takes a consistency point: freeze the filesystems, take every
// block changed before the freeze (read while frozen), thaw, send them and a marker.
// Volumes that cannot be frozen give a point of level none, never silently.
func (s *sess) consistencyPoint(ctx context.Context, bound time.Duration) error {
	a := s.a
	var mounts []string
	for _, v := range a.vols {
		if v.device {
			if ms, err := freeze.MountsOf([]string{v.Path}); err == nil {
				v.mounts = ms
			}
		}
		for _, m := range v.mounts {
			mounts = append(mounts, m.MountPoint)
		}
	}
	// A large backlog is drained before freezing: the freeze must stay short.
	if s.dirtyBytes() > 64<<20 && a.tr != nil {
		return nil
	}
	level := consistency.Filesystem
	var fr *freeze.Frozen
	var freezeErr error
	switch {
	case a.wd == nil:
		level, freezeErr = consistency.None, errors.New(a.freezeReason)
	case len(mounts) == 0:
		level, freezeErr = consistency.None, errors.New("no filesystem of the server's volumes is mounted here, so none can be frozen")
	default:
		if err := a.hook(ctx, "pre-freeze", a.cfg.PreFreeze, mounts); err != nil {
			s.setPointErr(&api.ReplicationError{Code: codeHookFailed,
				Message: "the pre-freeze hook failed, so this consistency point was skipped: " + err.Error() + "; replication continues"})
			return nil
		}
		defer func() {
			if err := a.hook(context.WithoutCancel(ctx), "post-thaw", a.cfg.PostThaw, mounts); err != nil {
				s.setPointErr(&api.ReplicationError{Code: codeHookFailed, Message: "the post-thaw hook failed: " + err.Error()})
			}
		}()
		// Outside the window: write back what the filesystems hold and send it, so the
		// freeze has little left to flush and the window little to read.
		if a.tr != nil && freeze.SyncFilesystems(ctx, mounts) == nil {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			synced := a.tr.Sync(sctx) == nil
			cancel()
			for i := 0; synced && i < 8 && s.dirtyBytes() > 0; i++ {
				if _, err := s.drain(ctx); err != nil {
					return err
				}
			}
		}
		fr, freezeErr = a.wd.Freeze(ctx, mounts, bound)
		if freezeErr != nil {
			s.setPointErr(&api.ReplicationError{Code: api.ErrFreezeFailed,
				Message: "the filesystems could not be frozen for a consistency point: " + freezeErr.Error() + "; replication continues, the point is retried"})
			return nil
		}
	}
	at := time.Now()
	// Where the window's time goes, for the log: the FIFREEZEs, waiting for the
	// tracker's events, reading the blocks.
	var tFreeze, tSync, tRead time.Duration
	if fr != nil {
		tFreeze = fr.Elapsed()
	}
	if fr != nil && a.cfg.FreezeHold > 0 {
		sleep(ctx, a.cfg.FreezeHold)
	}
	// Everything written before the point, read now (under freeze when there is one).
	type taken struct {
		vol   int
		block uint64
		hash  uint64
		data  []byte
	}
	var got []taken
	var readErr error
	if a.tr != nil {
		sctx, cancel := context.WithTimeout(ctx, max(bound, time.Second))
		t := time.Now()
		readErr = a.tr.Sync(sctx)
		cancel()
		tSync = time.Since(t)
		t = time.Now()
		var buf []uint64
		for i, v := range a.vols {
			for readErr == nil && v.dirty.Count() > 0 {
				buf = v.dirty.Take(buf[:0], 4096)
				readErr = v.dev.ReadBlocks(ctx, buf, s.bs, func(block uint64, data []byte) error {
					got = append(got, taken{vol: i, block: block, hash: hashOf(data), data: append([]byte(nil), data...)})
					return nil
				})
			}
		}
		tRead = time.Since(t)
	} else {
		var total int64
		for i, v := range a.vols {
			if readErr != nil {
				break
			}
			readErr = v.dev.Scan(ctx, s.bs, 0, func(block uint64, data []byte, hash uint64) error {
				if v.table.Matches(block, hash) {
					s.mu.Lock()
					_, flying := s.inflight[i][block]
					s.mu.Unlock()
					if !flying {
						return nil
					}
				}
				if total += int64(len(data)); total > 256<<20 {
					return errors.New("more than 256 MiB changed since the last pass")
				}
				got = append(got, taken{vol: i, block: block, hash: hash, data: append([]byte(nil), data...)})
				return nil
			})
		}
	}
	var freezeMs float64
	if fr != nil {
		if err := fr.Thaw(); err != nil {
			var nc *freeze.NotConsistentError
			if errors.As(err, &nc) {
				level, freezeErr = consistency.None, err
			} else if readErr == nil {
				readErr = err
			}
		}
		freezeMs = float64(fr.Elapsed().Microseconds()) / 1000
	}
	if readErr != nil || ctx.Err() != nil {
		// Put back what was taken, so it is sent with the next drain.
		for _, t := range got {
			a.vols[t.vol].dirty.Mark(t.block, t.block)
		}
		s.setPointErr(&api.ReplicationError{Code: api.ErrFreezeFailed,
			Message: "a consistency point failed while reading the volumes: " + readErr.Error()})
		return nil
	}
	for k, t := range got {
		if err := s.offer(ctx, t.vol, t.block, t.data, t.hash); err != nil {
			for _, r := range got[k:] {
				a.vols[r.vol].dirty.Mark(r.block, r.block)
			}
			return err
		}
	}
	s.flushAll(ctx)
	if level == consistency.None && fr != nil {
		s.setPointErr(&api.ReplicationError{Code: api.ErrFreezeFailed,
			Message: fmt.Sprintf("the consistency point took longer than the freeze bound (%s): %v; it is kept as level none", bound, freezeErr)})
	}
	s.markerID++
	m := &wire.Marker{ID: s.markerID, TimeUnixNano: at.UnixNano(), Level: level, FreezeMicros: uint32(freezeMs * 1000)}
	for _, v := range a.vols {
		m.VolumeSizes = append(m.VolumeSizes, uint64(v.SizeBytes))
	}
	s.seq++
	m.Seq = s.seq
	s.mu.Lock()
	s.markers[m.ID] = pointInfo{at: at, level: level, freezeMs: freezeMs}
	s.mu.Unlock()
	it := &item{seq: m.Seq, marker: m, done: make(chan struct{})}
	close(it.done)
	if err := s.enqueue(ctx, it, false); err != nil {
		return err
	}
	if len(got) == 0 && a.tr != nil {
		s.matched(at)
	}
	a.log.Debug("consistency point", "level", level.String(), "freeze_ms", freezeMs, "fifreeze_ms", ms(tFreeze),
		"tracker_sync_ms", ms(tSync), "read_ms", ms(tRead), "blocks", len(got), "reason", freezeErr)
	return nil
}

// ms is d in milliseconds, for logs.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// setPointErr records why a consistency point failed (nil: one succeeded); it is
// reported until a point succeeds.
func (s *sess) setPointErr(e *api.ReplicationError) {
	s.mu.Lock()
	s.pointErr = e
	s.mu.Unlock()
	s.a.setState(s.a.currentState(), e)
}

func (s *sess) pointError() *api.ReplicationError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pointErr
}

func (s *sess) dirtyBytes() int64 {
	var n int64
	for _, v := range s.a.vols {
		n += int64(v.dirty.Count()) * int64(s.bs)
	}
	return n
}
