package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// A simulated agent keeps what it wrote and was not acknowledged across sessions, as the
// real agent keeps its dirty blocks: its writes go on while it has no session (in light
// mode a writer adds one batch every -period, connected or not), and a new session
// sends first what the last one left unacknowledged, with its original write time, so
// ack latency and lag include an outage. When a session ends it does what the agent's
// replicate loop does (internal/agent, agent.go): waits (1 s, doubling up to 30 s, back
// to 1 s after a session that was acknowledged), asks the control plane for its
// replicator again and opens a session with the one it names.

// pendingWrite is a batch written and not acknowledged yet.
type pendingWrite struct {
	at     time.Time // written: ack latency and lag count from here
	seq    uint64    // its sequence in the current session; 0: not sent in it yet
	blocks []uint64
}

// simState is what the agents share with the measurement.
type simState struct {
	measuring atomic.Bool
	opened    atomic.Int64 // agents whose first session opened
}

// maxPending bounds an agent's unacknowledged writes (a long outage): older ones merge
// into the newest, as a real tracker's dirty set does not grow with time either.
const maxPending = 64

// write records a batch of n random blocks written now, and wakes the session.
func (a *simAgent) write(n int, nblocks uint64) {
	blocks := make([]uint64, n)
	for i := range blocks {
		blocks[i] = a.pick.Uint64N(nblocks)
	}
	a.mu.Lock()
	if len(a.pending) >= maxPending && a.pending[len(a.pending)-1].seq == 0 {
		last := &a.pending[len(a.pending)-1]
		last.blocks = append(last.blocks, blocks...)[:min(len(last.blocks)+n, 32)]
	} else {
		a.pending = append(a.pending, pendingWrite{at: time.Now(), blocks: blocks})
	}
	a.mu.Unlock()
	select {
	case a.wrote <- struct{}{}:
	default:
	}
}

// writer writes one batch every period until ctx ends (light mode).
func (a *simAgent) writer(ctx context.Context, f *simFlags) {
	nblocks := uint64(f.volumeGiB) << 30 / 65536
	t := time.NewTimer(time.Until(a.next))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.write(f.blocks, nblocks)
		a.next = a.next.Add(f.period)
		t.Reset(max(time.Until(a.next), 0))
	}
}

// run replicates until ctx ends, session after session.
func (a *simAgent) run(ctx context.Context, f *simFlags, st *simState) {
	a.rng = rand.NewChaCha8(seedBytes(uint64(a.i) + 1))
	a.pick = rand.New(rand.NewPCG(uint64(a.i), 7))
	a.wrote = make(chan struct{}, 1)
	// A random phase, then one write per period.
	a.next = time.Now().Add(time.Duration(a.pick.Int64N(int64(f.period))))
	a.nextMarker = a.next.Add(time.Duration(a.pick.Int64N(int64(max(f.marker, time.Second)))))
	if f.mode == "light" {
		go a.writer(ctx, f)
	}
	backoff := time.Second
	for first := true; ctx.Err() == nil; first = false {
		var err error
		if !first || a.rep == nil {
			was := a.rep
			if err = a.configure(ctx); err == nil && was != nil && a.rep.ID != was.ID {
				backoff = time.Second // moved: retries on the new replicator start short, as the agent's
			}
		}
		acked := false
		var addr string
		if err == nil {
			addr, acked, err = a.session(ctx, f, st)
		}
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		a.ends++
		if addr != a.movedFrom || a.movedFrom == "" {
			a.unexpected++ // not the kill's doing
		}
		a.mu.Unlock()
		if err != nil {
			a.lastErr.Store(err.Error())
		}
		if acked {
			backoff = time.Second
		}
		a.waitMove(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

// waitMove waits d, or less if the control plane changes this server's config (moves
// it to another replicator), as the agent's config watch wakes its retry.
func (a *simAgent) waitMove(ctx context.Context, d time.Duration) {
	if a.known == "" || d < time.Second {
		sleepCtx(ctx, d)
		return
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, d+5*time.Second)
	defer cancel()
	if _, err := a.client.ReplicationConfigWait(wctx, a.id, a.known, d); err != nil {
		sleepCtx(ctx, d-time.Since(start))
	}
}

// configure asks the control plane which replicator to send to.
func (a *simAgent) configure(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cfg, err := a.client.ReplicationConfig(cctx, a.id)
	if err != nil {
		return fmt.Errorf("read the replication config: %w", err)
	}
	if cfg.Replicator == nil {
		return errors.New("the control plane names no replicator")
	}
	a.mu.Lock()
	a.rep = cfg.Replicator
	a.mu.Unlock()
	a.known = cfg.Fingerprint()
	return nil
}

// simSession is one wire session of an agent.
type simSession struct {
	a        *simAgent
	f        *simFlags
	st       *simState
	rep      api.ReplicatorEndpoint
	conn     *wire.Conn
	win      *wire.Window
	enc      *wire.Encoder
	batch    *wire.Batch
	raw      []byte
	size     uint64
	seq      uint64
	markerAt map[uint64]time.Time // under a.mu
	acked    atomic.Bool
}

// session runs one session with the replicator last named, until it fails or ctx
// ends; it returns that replicator's address and whether anything was acknowledged.
func (a *simAgent) session(ctx context.Context, f *simFlags, st *simState) (string, bool, error) {
	a.mu.Lock()
	rep := *a.rep
	a.mu.Unlock()
	s := &simSession{a: a, f: f, st: st, rep: rep, size: uint64(f.volumeGiB) << 30, markerAt: map[uint64]time.Time{}}
	welcome, err := s.open(ctx)
	if err != nil {
		return rep.Address, false, err
	}
	defer s.conn.Close()
	if a.opened.CompareAndSwap(false, true) {
		st.opened.Add(1)
	}
	s.win = wire.NewWindow(welcome.WindowBytes)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A write blocked on a replicator that stopped reading ends 5 s after the session.
	stopDeadline := context.AfterFunc(sctx, func() { _ = s.conn.SetDeadline(time.Now().Add(5 * time.Second)) })
	defer stopDeadline()
	recvErr := make(chan error, 1)
	go func() {
		recvErr <- s.receive()
		cancel()
	}()
	err = s.send(sctx, welcome)
	cancel()
	s.conn.Close()
	if rerr := <-recvErr; err == nil || errors.Is(err, context.Canceled) {
		err = rerr
	}
	return rep.Address, s.acked.Load(), err
}

// open dials the replicator (only the one named: its id, account and certificate are
// checked), says Hello and counts a Welcome that asks for every block again.
func (s *simSession) open(ctx context.Context) (*wire.Welcome, error) {
	a := s.a
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conn, err := wire.Dial(dctx, s.rep.Address, wire.ClientTLSConfig(a.cert, a.pool, "",
		wire.Assigned{Account: a.account, ID: s.rep.ID, Serials: s.rep.CertificateSerials}))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", s.rep.Address, err)
	}
	hello := &wire.Hello{Version: wire.Version, SourceServerID: a.id, AgentVersion: "replbench", Tracker: "ebpf", TrackerGeneration: 1,
		Volumes: []wire.Volume{{Name: "vda", SizeBytes: s.size, BlockSize: 512}}}
	welcome, _, err := wire.Open(conn, hello, 30*time.Second) // as the agent waits
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open a session with %s: %w", s.rep.Address, err)
	}
	s.conn = conn
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sessions++
	for _, v := range welcome.Volumes {
		if a.acks > 0 && (!v.Exists || v.Rescan) {
			// The replica is gone or must be rescanned: a real agent would send the
			// whole volume again. Counted, not done.
			a.fullResends++
			a.lastErr.Store(fmt.Sprintf("session %d with %s: the replicator asks for every block again (exists %v, rescan %v)",
				a.sessions, s.rep.Address, v.Exists, v.Rescan))
		}
	}
	for i := range a.pending {
		a.pending[i].seq = 0 // sent again in this session
	}
	return welcome, nil
}

// receive reads Acks and Sealed until the connection fails.
func (s *simSession) receive() error {
	for {
		m, err := s.conn.ReadMsg()
		if err != nil {
			return err
		}
		now := time.Now()
		switch m := m.(type) {
		case *wire.Ack:
			if err := s.win.Ack(m.Seq); err != nil {
				return err
			}
			s.ack(m.Seq, now)
		case *wire.Sealed:
			s.a.mu.Lock()
			if t, ok := s.markerAt[m.MarkerID]; ok && s.st.measuring.Load() {
				s.a.sealLat = append(s.a.sealLat, float64(now.Sub(t).Microseconds())/1000)
			}
			delete(s.markerAt, m.MarkerID)
			s.a.mu.Unlock()
			if m.Code != "" {
				return fmt.Errorf("sealing failed: %s %s", m.Code, m.Message)
			}
		case *wire.Error:
			return m
		}
	}
}

// ack forgets the writes an Ack covers and records their latency.
func (s *simSession) ack(seq uint64, now time.Time) {
	a := s.a
	s.acked.Store(true)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acks++
	if a.movedFrom != "" && a.resumedAt.IsZero() && s.rep.Address != a.movedFrom {
		a.resumedAt = now
	}
	n := 0
	for n < len(a.pending) && a.pending[n].seq != 0 && a.pending[n].seq <= seq {
		if s.st.measuring.Load() {
			ms := float64(now.Sub(a.pending[n].at).Microseconds()) / 1000
			a.lat = append(a.lat, ms)
			if a.movedFrom != "" && now.After(a.killAt) {
				a.latMoved = append(a.latMoved, ms)
			}
		}
		n++
	}
	a.pending = slices.Delete(a.pending, 0, n)
}

// send sends what is pending and every write as it comes, and a Marker every -marker
// (light), or batches as fast as the window allows (stream), until ctx ends.
func (s *simSession) send(ctx context.Context, welcome *wire.Welcome) error {
	var err error
	if s.enc, err = wire.NewEncoder("s2"); err != nil {
		return err
	}
	defer s.enc.Close()
	s.batch = wire.NewBatch(int(welcome.MaxBatchBytes))
	s.raw = make([]byte, welcome.BlockSize)
	nblocks := s.size / uint64(welcome.BlockSize)
	for ctx.Err() == nil {
		if s.f.mode == "stream" {
			s.a.write(32, nblocks)
		} else if err := s.wait(ctx); err != nil {
			return err
		}
		if err := s.sendPending(ctx); err != nil {
			return err
		}
	}
	_ = s.conn.WriteMsg(&wire.Goodbye{})
	_ = s.conn.Flush()
	return nil
}

// wait waits for a write, sending a Marker when one is due.
func (s *simSession) wait(ctx context.Context) error {
	a, f := s.a, s.f
	var markerC <-chan time.Time
	if f.marker > 0 {
		t := time.NewTimer(max(time.Until(a.nextMarker), 0))
		defer t.Stop()
		markerC = t.C
	}
	select {
	case <-ctx.Done():
		return nil
	case <-a.wrote:
		return nil
	case now := <-markerC:
		a.nextMarker = a.nextMarker.Add(f.marker)
		s.seq++
		a.markers++
		mk := &wire.Marker{Seq: s.seq, ID: a.markers, TimeUnixNano: now.UnixNano(), Level: consistency.Crash, VolumeSizes: []uint64{s.size}}
		a.mu.Lock()
		s.markerAt[mk.ID] = now
		a.mu.Unlock()
		return s.transmit(ctx, mk, mk.PayloadLen())
	}
}

// sendPending sends every pending write not sent in this session yet, in order.
func (s *simSession) sendPending(ctx context.Context) error {
	a := s.a
	for {
		a.mu.Lock()
		i := slices.IndexFunc(a.pending, func(p pendingWrite) bool { return p.seq == 0 })
		if i < 0 {
			a.mu.Unlock()
			return nil
		}
		s.seq++
		a.pending[i].seq = s.seq
		blocks := a.pending[i].blocks
		a.mu.Unlock()
		s.batch.Reset(s.seq, 0)
		for _, b := range blocks {
			simBlock(s.raw, a.rng, a.i, s.seq)
			if _, err := s.enc.Encode(s.batch, b, wire.Hash(s.raw), s.raw); err != nil {
				return err
			}
		}
		if err := s.transmit(ctx, s.batch, s.batch.PayloadLen()); err != nil {
			return err
		}
		if s.st.measuring.Load() {
			a.sent.Add(int64(len(blocks) * len(s.raw)))
		}
	}
}

// transmit sends a sequenced message within the window.
func (s *simSession) transmit(ctx context.Context, msg wire.Msg, n int) error {
	if err := s.win.Send(ctx, s.seq, n); err != nil {
		return err
	}
	if err := s.conn.WriteMsg(msg); err != nil {
		return err
	}
	return s.conn.Flush()
}
