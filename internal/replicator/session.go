package replicator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// Timeouts of a session.
const (
	handshakeTimeout = 15 * time.Second
	helloTimeout     = 30 * time.Second
	// idleTimeout: an agent sends at least a Ping this often, or the session ends.
	idleTimeout = 90 * time.Second
	// idleFlush: when no data arrived for this long, what was written is flushed and
	// acknowledged.
	idleFlush = 20 * time.Millisecond
)

// session is one agent's connection.
type session struct {
	r      *Replicator
	conn   *wire.Conn
	log    *slog.Logger
	server string
	serial string
	hello  *wire.Hello
	ws     *wire.Session
	repo   *store.Repo
	heads  []*store.Head
	served bool // the Welcome went out: the session counts in the replicator's volumes

	out        chan wire.Msg // to the sender
	work       chan work     // from the reader to the writer
	mem        memHold       // the replicator's BatchMemory this session holds
	writerDone chan struct{} // closed when the writer returned
	done       chan struct{} // closed when the session has ended

	mu      sync.Mutex // guards stopped, stopMsg and the read deadline
	stopped bool
	stopMsg *wire.Error
}

// work is a decoded Blocks frame or a Marker, in sequence order.
type work struct {
	seq    uint64
	volume int
	blocks []store.Block
	bytes  int64
	marker *wire.Marker
	slab   []byte // holds the blocks' data; back to the free list once written
	cost   int64  // the BatchMemory the slab holds
}

// serveConn runs the TLS handshake of an accepted connection (then calls
// handshakeDone) and serves the agent's session.
func (r *Replicator) serveConn(ctx context.Context, raw net.Conn, handshakeDone func()) {
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	conn, err := wire.Accept(hctx, raw, r.cfg.TLS)
	cancel()
	handshakeDone()
	if err != nil {
		r.caps.logs.Warn(r.log, remoteIP(raw), "refused a connection", "remote", raw.RemoteAddr(), "err", err)
		return
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	peer, err := wire.PeerIdentity(cs)
	if err != nil || len(cs.PeerCertificates) == 0 {
		r.caps.logs.Warn(r.log, remoteIP(raw), "refused a connection without an agent identity", "remote", raw.RemoteAddr(), "err", err)
		return
	}
	sessionDone, refusal := r.caps.session(peer.ID)
	if refusal != nil {
		_ = conn.WriteMsg(refusal)
		_ = conn.Flush()
		return
	}
	defer sessionDone()
	s := &session{r: r, conn: conn, serial: pki.SerialHex(cs.PeerCertificates[0]), mem: memHold{m: r.batchMem},
		out: make(chan wire.Msg, 64), work: make(chan work, 2), writerDone: make(chan struct{}), done: make(chan struct{})}
	s.log = r.log.With("agent", peer.ID, "remote", raw.RemoteAddr().String())
	// close also undoes a refused open: the heads it opened, the server's place.
	defer s.close()
	if werr := s.open(ctx, peer); werr != nil {
		r.caps.logs.Warn(s.log, peer.ID, "refused an agent session", "code", werr.Code, "reason", werr.Message)
		_ = conn.WriteMsg(werr)
		_ = conn.Flush()
		return
	}
	s.run(ctx)
}

// open reads the Hello, checks who may do what, opens the volume heads and answers
// with the Welcome. A refusal is the Error to send.
func (s *session) open(ctx context.Context, peer pki.Identity) *wire.Error {
	r := s.r
	// A Hello beyond the bounds of docs/wire.md §8 (volume sizes, their sum, their count,
	// their names) ends here, before the control plane or the store is asked.
	hello, err := wire.ReadHello(s.conn, helloTimeout)
	if err != nil {
		return &wire.Error{Code: wire.CodeProtocol, Message: err.Error()}
	}
	if err := hello.CheckPeer(peer); err != nil {
		return &wire.Error{Code: wire.CodeNotAuthorized, Message: err.Error()}
	}
	s.hello, s.server = hello, hello.SourceServerID
	s.log = s.log.With("server", s.server)
	a, assigned, err := r.lookup(ctx, s.server)
	if err != nil {
		return &wire.Error{Code: wire.CodeShuttingDown, Message: "the replicator cannot check this server with the control plane: retry later"}
	}
	switch {
	case !assigned:
		return &wire.Error{Code: wire.CodeNotAuthorized, Message: fmt.Sprintf("source server %s is not assigned to this replicator: ask the control plane for its replicator", s.server)}
	case !servesSerial(a, s.serial):
		return &wire.Error{Code: wire.CodeNotAuthorized, Message: fmt.Sprintf("the certificate of source server %s was replaced (re-registered); this agent's certificate is no longer valid", s.server)}
	case a.Control.Desired == api.DesiredStopped:
		return &wire.Error{Code: wire.CodeStopped, Message: fmt.Sprintf("replication of %s is stopped: lifeboat replication start %s", s.server, s.server)}
	}
	// One session per server: a new one replaces an old one (its connection is likely
	// dead), after the old one has stopped writing.
	r.mu.Lock()
	old := r.sessions[s.server]
	r.sessions[s.server] = s
	r.mu.Unlock()
	if old != nil {
		old.stop(&wire.Error{Code: wire.CodeShuttingDown, Message: "a new session of this server replaced this one"})
		select {
		case <-old.done:
		case <-ctx.Done():
			return &wire.Error{Code: wire.CodeShuttingDown, Message: "the replicator is stopping: reconnect later"}
		case <-time.After(2 * time.Minute):
			return &wire.Error{Code: wire.CodeShuttingDown, Message: "the previous session of this server is still ending: retry later"}
		}
	}
	repo, err := r.repo(ctx, a.Settings.StagingStoreURL)
	if err != nil {
		return storeError(err)
	}
	s.repo = repo
	compression := a.Settings.Compression
	if _, err := store.ParseCodec(compression); err != nil {
		compression = ""
	}
	welcome := &wire.Welcome{Version: 1, BlockSize: uint32(repo.BlockSize()), WindowBytes: r.cfg.WindowBytes,
		MaxBatchBytes: r.cfg.MaxBatchBytes}
	for _, v := range hello.Volumes {
		opts := store.HeadOptions{Compression: compression}
		if a.HeadVersionsStoreID == repo.ID() {
			opts.MinVersion = a.HeadVersions[v.Name] // the control plane's record: no older head is taken
		}
		h, err := repo.OpenHead(ctx, s.server, v.Name, int64(v.SizeBytes), opts)
		if errors.Is(err, store.ErrRollback) {
			s.log.Error("the staging store holds an older head than a sealed PIT recorded: refusing the session", "volume", v.Name, "err", err)
		}
		if err != nil {
			return storeError(err)
		}
		s.heads = append(s.heads, h)
		rep := wire.Replica{Exists: !h.Fresh()}
		if rep.Exists {
			rep.SizeBytes = v.SizeBytes
		}
		welcome.Volumes = append(welcome.Volumes, rep)
	}
	if s.ws, err = wire.SendWelcome(s.conn, hello, welcome); err != nil {
		return &wire.Error{Code: wire.CodeProtocol, Message: err.Error()}
	}
	s.conn.SetMaxPayload(int(r.cfg.MaxBatchBytes))
	r.volumes.Add(int64(len(s.heads)))
	s.served = true
	s.log.Info("agent session started", "volumes", len(s.heads), "tracker", hello.Tracker, "generation", hello.TrackerGeneration)
	return nil
}

// storeError turns a store failure into the Error the agent gets.
func storeError(err error) *wire.Error {
	if errors.Is(err, backend.ErrFull) {
		return &wire.Error{Code: wire.CodeStagingFull, Message: "the staging storage is full: free space or add capacity; replication resumes by itself (" + err.Error() + ")"}
	}
	if errors.Is(err, store.ErrRollback) {
		return &wire.Error{Code: wire.CodeStagingError, Message: "the staging store's replica of this server is older than a recorded PIT (an old object was put back, or the store was restored from a backup): replication stops until an administrator checks it (lifeboat store verify; docs/security.md): " + err.Error()}
	}
	return &wire.Error{Code: wire.CodeStagingError, Message: "the staging storage failed: " + err.Error()}
}

// stop ends the session, sending e to the agent first when given.
func (s *session) stop(e *wire.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped, s.stopMsg = true, e
	_ = s.conn.SetReadDeadline(time.Now()) // wakes the reader
}

var errStopped = errors.New("the session was stopped")

// armRead sets the read deadline for the next frame, unless the session was stopped.
func (s *session) armRead() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errStopped
	}
	return s.conn.SetReadDeadline(time.Now().Add(idleTimeout))
}

// send hands work to the writer, unless the writer has given up.
func (s *session) send(w work) error {
	select {
	case s.work <- w:
		return nil
	case <-s.writerDone:
		return errStopped
	}
}

func (s *session) close() {
	// Batches dropped when the session failed still hold memory.
	s.mem.releaseAll()
	for _, h := range s.heads {
		_ = h.Close()
	}
	s.r.mu.Lock()
	if s.r.sessions[s.server] == s {
		delete(s.r.sessions, s.server)
	}
	s.r.mu.Unlock()
	close(s.done)
	if s.served {
		s.r.volumes.Add(-int64(len(s.heads)))
		s.log.Info("agent session ended")
	}
}

// run reads frames (this goroutine), writes blocks to the store (the writer) and sends
// acknowledgements (the sender), until the agent leaves or something fails.
func (s *session) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		s.sender()
	}()
	writeErr := make(chan *wire.Error, 1)
	wg.Go(func() {
		defer close(s.writerDone)
		if e := s.writer(ctx); e != nil {
			writeErr <- e
			s.stop(e)
		}
	})
	go func() {
		select {
		case <-ctx.Done():
			s.stop(&wire.Error{Code: wire.CodeShuttingDown, Message: "the replicator is stopping: reconnect later"})
		case <-s.writerDone:
		}
	}()
	rctx, rcancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.writerDone:
			rcancel()
		case <-rctx.Done():
		}
	}()
	rerr := s.reader(rctx)
	rcancel()
	close(s.work)
	wg.Wait()
	var final *wire.Error
	select {
	case final = <-writeErr:
	default:
		s.mu.Lock()
		final = s.stopMsg
		s.mu.Unlock()
		if final == nil && rerr != nil && !errors.Is(rerr, errStopped) {
			if errors.Is(rerr, wire.ErrProtocol) {
				final = &wire.Error{Code: wire.CodeProtocol, Message: rerr.Error()}
			}
			s.log.Warn("agent session failed", "err", rerr)
		}
	}
	if final != nil {
		s.out <- final
	}
	close(s.out)
	<-sendDone
}

// storeCodec is the store's name of a wire codec of compressed data (CodecNone for raw).
func storeCodec(c wire.Codec) store.Codec {
	switch c {
	case wire.CodecS2:
		return store.CodecS2
	case wire.CodecZstd:
		return store.CodecZstd
	}
	return store.CodecNone
}

// reader decodes frames into work for the writer.
func (s *session) reader(ctx context.Context) error {
	bs := s.repo.BlockSize()
	zero := make([]byte, bs)
	dec := wire.NewDecoder(bs)
	defer dec.Close()
	for {
		if err := s.armRead(); err != nil {
			return err
		}
		m, err := s.conn.ReadMsg()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *wire.Blocks:
			if err := s.ws.Check(m); err != nil {
				return err
			}
			w := work{seq: m.Seq, volume: int(m.Volume), blocks: make([]store.Block, len(m.Entries))}
			// One buffer for the batch: raw data and the compressed payloads kept for the store.
			need := 0
			for i := range m.Entries {
				if e := &m.Entries[i]; e.Codec != wire.CodecZero {
					need += int(e.RawLen) + len(e.Payload)
				}
			}
			if w.slab, w.cost, err = s.mem.slab(ctx, need); err != nil {
				return err
			}
			take := func(n int) []byte {
				b := w.slab[len(w.slab) : len(w.slab)+n : len(w.slab)+n]
				w.slab = w.slab[:len(w.slab)+n]
				return b
			}
			for i := range m.Entries {
				e := &m.Entries[i]
				b := store.Block{Index: e.Block}
				if e.Codec == wire.CodecZero {
					b.Data = zero[:e.RawLen]
				} else {
					// A compressed payload is kept as it came, for a store of the same codec.
					if b.CompressedWith = storeCodec(e.Codec); b.CompressedWith != store.CodecNone {
						b.Compressed = take(len(e.Payload))
						copy(b.Compressed, e.Payload)
					}
					if b.Data, err = dec.Decode(e, take(int(e.RawLen))); err != nil {
						return err
					}
				}
				w.blocks[i] = b
				w.bytes += int64(e.RawLen)
			}
			if err := s.send(w); err != nil {
				return err
			}
		case *wire.Marker:
			if err := s.ws.Check(m); err != nil {
				return err
			}
			if err := s.send(work{seq: m.Seq, marker: m}); err != nil {
				return err
			}
		case *wire.Ping:
			s.out <- &wire.Pong{Nonce: m.Nonce}
		case *wire.Pong:
		case *wire.Goodbye:
			return nil
		case *wire.Error:
			s.log.Warn("the agent ended the session with an error", "code", m.Code, "reason", m.Message)
			return nil
		default:
			return fmt.Errorf("%w: unexpected %s from an agent", wire.ErrProtocol, m.Type())
		}
	}
}

// writer applies work to the heads, flushing and acknowledging as the store makes it
// durable, and seals PITs at markers.
func (s *session) writer(ctx context.Context) *wire.Error {
	var pendingSeq uint64 // last sequence written but not yet in a flush
	var unflushed int64
	var since time.Time
	touched := make([]bool, len(s.heads))

	// Flushes complete in a committer goroutine, in order, while the writer goes on
	// writing the next blocks: the store's fsyncs overlap with hashing and sealing. The
	// agent hears an Ack once a flush is durable.
	type commit struct {
		flushes []*store.Flusher
		seq     uint64
		barrier chan struct{} // closed when everything before is durable
	}
	commits := make(chan commit, 2)
	failed := make(chan *wire.Error, 1)
	committerDone := make(chan struct{})
	go func() {
		defer close(committerDone)
		for c := range commits {
			if c.barrier != nil {
				close(c.barrier)
				continue
			}
			for _, f := range c.flushes {
				if err := f.Wait(ctx); err != nil {
					s.log.Warn("flushing to the staging store failed", "err", err)
					failed <- storeError(err)
					for range commits { // drain: nothing after a failed flush is acknowledged
					}
					return
				}
			}
			s.out <- &wire.Ack{Seq: c.seq}
		}
	}()
	defer func() {
		close(commits)
		<-committerDone
	}()
	send := func(c commit) *wire.Error {
		select {
		case commits <- c:
			return nil
		case e := <-failed:
			return e
		}
	}
	flush := func() *wire.Error {
		if pendingSeq == 0 {
			return nil
		}
		c := commit{seq: pendingSeq}
		for i, h := range s.heads {
			if touched[i] {
				c.flushes = append(c.flushes, h.StartFlush())
				touched[i] = false
			}
		}
		pendingSeq, unflushed = 0, 0
		return send(c)
	}
	// durable waits until every flush started so far is durable.
	durable := func() *wire.Error {
		b := make(chan struct{})
		if e := send(commit{barrier: b}); e != nil {
			return e
		}
		select {
		case <-b:
			return nil
		case e := <-failed:
			return e
		}
	}
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		select {
		case e := <-failed:
			return e
		default:
		}
		var w work
		var ok bool
		if pendingSeq == 0 {
			w, ok = <-s.work
		} else {
			idle.Reset(idleFlush)
			select {
			case w, ok = <-s.work:
			case <-idle.C:
				if e := flush(); e != nil {
					return e
				}
				continue
			}
		}
		if !ok {
			if e := flush(); e != nil {
				return e
			}
			return durable()
		}
		if w.marker != nil {
			pendingSeq = w.seq
			for i := range touched {
				touched[i] = true // every head is checkpointed by the seal anyway
			}
			if e := flush(); e != nil {
				return e
			}
			if e := durable(); e != nil {
				return e
			}
			s.seal(ctx, w.marker)
			continue
		}
		if err := s.heads[w.volume].WriteBlocks(ctx, w.blocks); err != nil {
			if errors.Is(err, wire.ErrProtocol) {
				s.log.Warn("an agent sent a block that does not decode to its hash", "err", err)
				return &wire.Error{Code: wire.CodeProtocol, Message: err.Error()}
			}
			s.log.Warn("writing to the staging store failed", "volume", s.heads[w.volume].Volume(), "err", err)
			return storeError(err)
		}
		s.mem.free(w.slab, w.cost) // the store keeps no reference to the data
		touched[w.volume] = true
		if pendingSeq == 0 {
			since = time.Now()
		}
		pendingSeq = w.seq
		unflushed += w.bytes
		if unflushed >= s.r.cfg.FlushBytes || time.Since(since) >= s.r.cfg.FlushInterval {
			if e := flush(); e != nil {
				return e
			}
		}
	}
}

// seal makes a PIT of every volume at a marker and records it with the control plane.
func (s *session) seal(ctx context.Context, m *wire.Marker) {
	id := api.NewID(api.PrefixSnapshot)
	at := time.Unix(0, m.TimeUnixNano).UTC()
	pit, err := s.repo.SealPIT(ctx, store.SealRequest{ID: id, Server: s.server, Time: at, Level: m.Level, Heads: s.heads,
		Labels: map[string]string{"freezeMicros": fmt.Sprint(m.FreezeMicros)}})
	if err != nil {
		s.log.Warn("sealing a PIT failed", "err", err)
		s.out <- &wire.Sealed{MarkerID: m.ID, Code: wire.CodeSnapshots, Message: "sealing the PIT failed: " + err.Error()}
		return
	}
	req := api.CreateRecoverySnapshotRequest{ID: pit.ID, Time: pit.Time, Level: pit.Level, SizeBytes: pit.AddedBytes,
		ManifestDigest: pit.Digest, StagingStoreID: s.repo.ID()}
	for _, v := range pit.Volumes {
		req.Volumes = append(req.Volumes, api.SnapshotVolume{Name: v.Name, SizeBytes: v.Size, Ref: v.Ref(), HeadVersion: v.HeadVersion})
	}
	for attempt := 0; ; attempt++ {
		_, err = s.r.cfg.ControlPlane.CreateRecoverySnapshot(ctx, s.server, req)
		if err == nil || attempt == 3 || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
	}
	if err != nil {
		s.log.Warn("recording a PIT with the control plane failed; it is in the store but not listed", "pit", pit.ID, "err", err)
		s.out <- &wire.Sealed{MarkerID: m.ID, Code: wire.CodeSnapshots, Message: "the PIT was sealed but the control plane could not record it: " + err.Error()}
		return
	}
	s.log.Debug("PIT sealed", "pit", pit.ID, "level", pit.Level, "added", pit.AddedBytes)
	s.out <- &wire.Sealed{MarkerID: m.ID, PITID: pit.ID}
}

// sender writes messages to the agent, flushing when no more are queued.
func (s *session) sender() {
	failed := false
	for m := range s.out {
		if failed {
			continue
		}
		if err := s.conn.WriteMsg(m); err != nil {
			failed = true
			s.stop(nil)
			continue
		}
		if len(s.out) == 0 {
			if err := s.conn.Flush(); err != nil {
				failed = true
				s.stop(nil)
			}
		}
	}
}
