package replicator

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	// replacedTimeout bounds the wait for the session a new one of its server replaces.
	replacedTimeout = 2 * time.Minute
)

// session is one agent's connection: it opens the session (the Hello, the checks, the
// volume heads, the Welcome), then reads the agent's frames for its ingest (Next),
// answers Pings, and sends the agent what the ingest says and the Error that ends the
// session. What the frames do to the store is the ingest's.
type session struct {
	r      *Replicator
	conn   *wire.Conn
	log    *slog.Logger
	server string
	serial string
	repo   *store.Repo
	heads  []*store.Head
	ws     *wire.Session
	served bool // the Welcome went out: the session counts in the replicator's volumes

	out  chan wire.Msg // to the sender
	done chan struct{} // closed when the session has ended

	mu      sync.Mutex // guards stopped, stopMsg and the read deadline
	stopped bool
	stopMsg *wire.Error
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
		refuse(conn, refusal)
		return
	}
	defer sessionDone()
	r.serve(ctx, conn, peer, pki.SerialHex(cs.PeerCertificates[0]))
}

// serve serves the session of the agent peer, whose certificate has serial serial, on
// conn: an authenticated connection, or one in memory in tests.
func (r *Replicator) serve(ctx context.Context, conn *wire.Conn, peer pki.Identity, serial string) {
	s := &session{r: r, conn: conn, serial: serial, out: make(chan wire.Msg, 64), done: make(chan struct{})}
	s.log = r.log.With("agent", peer.ID, "remote", conn.RemoteAddr().String())
	// close also undoes a refused open: the heads it opened, the server's place.
	defer s.close()
	if werr := s.open(ctx, peer); werr != nil {
		r.caps.logs.Warn(s.log, peer.ID, "refused an agent session", "code", werr.Code, "reason", werr.Message)
		refuse(conn, werr)
		return
	}
	s.run(ctx)
}

// refuse sends the Error that refuses a connection, as best it can.
func refuse(conn *wire.Conn, e *wire.Error) {
	_ = conn.WriteMsg(e)
	_ = conn.Flush()
}

// open reads the Hello, checks who may do what, opens the volume heads and answers
// with the Welcome. A refusal is the Error to send.
func (s *session) open(ctx context.Context, peer pki.Identity) *wire.Error {
	// A Hello beyond the bounds of docs/wire.md §8 (volume sizes, their sum, their count,
	// their names) ends here, before the control plane or the store is asked.
	hello, err := wire.ReadHello(s.conn, helloTimeout)
	if err != nil {
		return &wire.Error{Code: wire.CodeProtocol, Message: err.Error()}
	}
	began := time.Now()
	if err := hello.CheckPeer(peer); err != nil {
		return &wire.Error{Code: wire.CodeNotAuthorized, Message: err.Error()}
	}
	s.server = hello.SourceServerID
	s.log = s.log.With("server", s.server)
	a, werr := s.authorize(ctx)
	if werr != nil {
		return werr
	}
	if werr := s.r.claim(ctx, s); werr != nil {
		return werr
	}
	if s.repo, err = s.r.repo(ctx, a.Settings.StagingStoreURL); err != nil {
		return storeError(err)
	}
	heads := time.Now()
	welcome, werr := s.openHeads(ctx, a, hello)
	if werr != nil {
		return werr
	}
	opened := time.Since(heads)
	if s.ws, err = wire.SendWelcome(s.conn, hello, welcome); err != nil {
		return &wire.Error{Code: wire.CodeProtocol, Message: err.Error()}
	}
	s.conn.SetMaxPayload(int(s.r.cfg.MaxBatchBytes))
	s.r.volumes.Add(int64(len(s.heads)))
	s.r.stats.sessionsOpened.Add(1)
	s.served = true
	s.log.Info("agent session started", "volumes", len(s.heads), "tracker", hello.Tracker, "generation", hello.TrackerGeneration,
		"took", time.Since(began).Round(time.Millisecond), "heads_took", opened.Round(time.Millisecond))
	return nil
}

// authorize returns the session's server's assignment, or the Error that refuses it:
// the server must be assigned to this replicator, with this agent's certificate, and
// its replication not stopped.
func (s *session) authorize(ctx context.Context) (api.AssignedSourceServer, *wire.Error) {
	a, assigned, err := s.r.lookup(ctx, s.server)
	if err != nil {
		return a, &wire.Error{Code: wire.CodeShuttingDown, Message: "the replicator cannot check this server with the control plane: retry later"}
	}
	switch {
	case !assigned:
		return a, &wire.Error{Code: wire.CodeNotAuthorized, Message: fmt.Sprintf("source server %s is not assigned to this replicator: ask the control plane for its replicator", s.server)}
	case !servesSerial(a, s.serial):
		return a, &wire.Error{Code: wire.CodeNotAuthorized, Message: fmt.Sprintf("the certificate of source server %s was replaced (re-registered); this agent's certificate is no longer valid", s.server)}
	case a.Control.Desired == api.DesiredStopped:
		return a, &wire.Error{Code: wire.CodeStopped, Message: fmt.Sprintf("replication of %s is stopped: lifeboat replication start %s", s.server, s.server)}
	}
	return a, nil
}

// claim makes s the session of its server. One session per server: a new one
// replaces an old one (its connection is likely dead), and claim returns only once the
// old one has ended — its heads closed — so two sessions never write one server's
// heads.
func (r *Replicator) claim(ctx context.Context, s *session) *wire.Error {
	r.mu.Lock()
	old := r.sessions[s.server]
	r.sessions[s.server] = s
	r.sessionsChangedLocked()
	r.mu.Unlock()
	if old == nil {
		return nil
	}
	old.stop(&wire.Error{Code: wire.CodeShuttingDown, Message: "a new session of this server replaced this one"})
	t := time.NewTimer(replacedTimeout)
	defer t.Stop()
	select {
	case <-old.done:
		return nil
	case <-ctx.Done():
		return &wire.Error{Code: wire.CodeShuttingDown, Message: "the replicator is stopping: reconnect later"}
	case <-t.C:
		return &wire.Error{Code: wire.CodeShuttingDown, Message: "the previous session of this server is still ending: retry later"}
	}
}

// sessionsChangedLocked tells Config.OnSessions how many sessions are open now, in
// order (r.mu held).
func (r *Replicator) sessionsChangedLocked() {
	if r.cfg.OnSessions != nil {
		r.cfg.OnSessions(len(r.sessions))
	}
}

// openHeads opens the head of every volume of the Hello in the session's store, and
// returns the Welcome that describes them.
func (s *session) openHeads(ctx context.Context, a api.AssignedSourceServer, hello *wire.Hello) (*wire.Welcome, *wire.Error) {
	compression := a.Settings.Compression
	if _, err := store.ParseCodec(compression); err != nil {
		compression = ""
	}
	welcome := &wire.Welcome{Version: min(hello.Version, wire.Version), BlockSize: uint32(s.repo.BlockSize()), WindowBytes: s.r.cfg.WindowBytes,
		MaxBatchBytes: s.r.cfg.MaxBatchBytes}
	seeds, err := s.seeds(ctx, a.Seed, hello)
	if err != nil {
		return nil, storeError(err)
	}
	for i, v := range hello.Volumes {
		opts := store.HeadOptions{Compression: compression, Seed: seeds[i]}
		if seeds[i] != nil {
			opts.SeedID, opts.Rebase = a.Seed.SourceServerID+"/"+a.Seed.SnapshotID, a.Seed.Rebase
		}
		if a.HeadVersionsStoreID == s.repo.ID() {
			opts.MinVersion = a.HeadVersions[v.Name] // the control plane's record: no older head is taken
		}
		h, err := s.repo.OpenHead(ctx, s.server, v.Name, int64(v.SizeBytes), opts)
		if errors.Is(err, store.ErrRollback) {
			s.log.Error("the staging store holds an older head than a sealed PIT recorded: refusing the session", "volume", v.Name, "err", err)
		}
		if err != nil {
			return nil, storeError(err)
		}
		if h.Seeded() {
			s.log.Info("the replica starts as a PIT (reversed replication, or rebased after a failback)", "volume", v.Name,
				"pit", a.Seed.SnapshotID, "rebase", a.Seed.Rebase)
		}
		s.heads = append(s.heads, h)
		rep := wire.Replica{Exists: !h.Fresh()}
		if rep.Exists {
			rep.SizeBytes = v.SizeBytes
		}
		welcome.Volumes = append(welcome.Volumes, rep)
	}
	return welcome, nil
}

// seeds are, per volume of the Hello, the PIT volume its head starts as if it does not
// exist yet (a reversed source server), or is rebased onto (after a failback; see
// docs/failback.md): the seed PIT's volume of the
// same name, or else of the same index when both have as many volumes. The PIT must be
// the one the control plane recorded (its manifest digest).
func (s *session) seeds(ctx context.Context, seed *api.ReplicaSeed, hello *wire.Hello) ([]*store.PITVolume, error) {
	out := make([]*store.PITVolume, len(hello.Volumes))
	if seed == nil || (!seed.Rebase && seed.StagingStoreID != s.repo.ID()) {
		return out, nil
	}
	if seed.Rebase && (seed.ManifestDigest == "" || seed.StagingStoreID != s.repo.ID()) {
		return nil, fmt.Errorf("the PIT %s a failback wrote onto this server's machine is no longer recorded in this staging store, so its replica cannot be rebased onto it: the agent's hash tables describe that PIT; remove them (the agent's state directory) so that it resends every block", seed.SnapshotID)
	}
	pit, err := s.repo.LoadPITExpect(ctx, seed.SourceServerID, seed.SnapshotID, seed.ManifestDigest)
	if err != nil && !seed.Rebase {
		// A reversed server's replica that does not exist yet then starts empty (the
		// agent resends every block); one that exists needs no seed.
		s.log.Warn("the seed PIT of reversed replication cannot be read: a new replica starts empty", "pit", seed.SnapshotID, "err", err)
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load the PIT %s a failback wrote, to rebase the replica onto it: %w", seed.SnapshotID, err)
	}
	for i, v := range hello.Volumes {
		for k := range pit.Volumes {
			if pit.Volumes[k].Name == v.Name {
				out[i] = &pit.Volumes[k]
			}
		}
		if out[i] == nil && len(pit.Volumes) == len(hello.Volumes) {
			out[i] = &pit.Volumes[i]
		}
	}
	return out, nil
}

// storeError turns a store failure into the Error the agent gets.
func storeError(err error) *wire.Error {
	if errors.Is(err, backend.ErrFull) {
		return &wire.Error{Code: wire.CodeStagingFull, Message: "the staging storage is full: free space or add capacity; replication resumes by itself (" + err.Error() + ")"}
	}
	if errors.Is(err, store.ErrFenced) {
		return &wire.Error{Code: wire.CodeShuttingDown, Message: "another replicator opened this server's replica since this session did (the server was moved, or two replicators believe they serve it): reconnect, to the replicator the control plane names (" + err.Error() + ")"}
	}
	if errors.Is(err, store.ErrRollback) {
		return &wire.Error{Code: wire.CodeStagingError, Message: "the staging store's replica of this server is older than a recorded PIT (an old object was put back, or the store was restored from a backup): replication stops until an administrator checks it (lifeboat store verify; docs/security.md): " + err.Error()}
	}
	return &wire.Error{Code: wire.CodeStagingError, Message: "the staging storage failed: " + err.Error()}
}

// stop ends the session, sending e to the agent first when given. The first reason
// given is the one sent: a stop without one (the sender failed, or the ingest's
// reading ended) only wakes the reader, so it hides no reason given after it.
func (s *session) stop(e *wire.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopMsg == nil {
		s.stopMsg = e
	}
	if s.stopped {
		return
	}
	s.stopped = true
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

func (s *session) close() {
	for _, h := range s.heads {
		_ = h.Close()
	}
	s.r.mu.Lock()
	if s.r.sessions[s.server] == s {
		delete(s.r.sessions, s.server)
	}
	s.r.sessionsChangedLocked()
	s.r.mu.Unlock()
	close(s.done)
	if s.served {
		s.r.volumes.Add(-int64(len(s.heads)))
		s.log.Info("agent session ended")
	}
}

// run feeds the agent's frames to the session's ingest (reading them in this
// goroutine) and sends what it answers (the sender), until the agent leaves or
// something fails; then it sends the Error that ends the session, if any.
func (s *session) run(ctx context.Context) {
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		s.sender()
	}()
	stopWatch := context.AfterFunc(ctx, func() {
		s.stop(&wire.Error{Code: wire.CodeShuttingDown, Message: "the replicator is stopping: reconnect later"})
	})
	cfg := &s.r.cfg
	in := &ingest{server: s.server, repo: s.repo, heads: s.heads, ws: s.ws, mem: memHold{m: s.r.batchMem},
		rec: cfg.ControlPlane, out: s.out, log: s.log, stats: &s.r.stats,
		flushBytes: cfg.FlushBytes, flushInterval: cfg.FlushInterval, recordRetry: recordRetry}
	werr, rerr := in.run(ctx, s)
	stopWatch()
	if final := s.final(werr, rerr); final != nil {
		s.out <- final
	}
	close(s.out)
	<-sendDone
}

// final is the Error the session ends with: the ingest's failure, else the reason it
// was stopped, else a violation in what the agent sent (rerr, why the reading ended).
func (s *session) final(werr *wire.Error, rerr error) *wire.Error {
	if werr != nil {
		return werr
	}
	s.mu.Lock()
	final := s.stopMsg
	s.mu.Unlock()
	if final == nil && rerr != nil && !errors.Is(rerr, errStopped) {
		if errors.Is(rerr, wire.ErrProtocol) {
			final = &wire.Error{Code: wire.CodeProtocol, Message: rerr.Error()}
		}
		s.log.Warn("agent session failed", "err", rerr)
	}
	return final
}

// Next reads the agent's next sequenced frame for the ingest (the session is its
// source), answering Pings on the way. It returns io.EOF when the agent ends the
// session (Goodbye, or an Error of its own); once ctx ends, the session stops.
func (s *session) Next(ctx context.Context) (wire.Msg, error) {
	defer context.AfterFunc(ctx, func() { s.stop(nil) })()
	for {
		if err := s.armRead(); err != nil {
			return nil, err
		}
		m, err := s.conn.ReadMsg()
		if err == io.EOF {
			return nil, fmt.Errorf("the agent closed the connection without a Goodbye: %w", io.ErrUnexpectedEOF)
		}
		if err != nil {
			return nil, err
		}
		switch m := m.(type) {
		case *wire.Blocks, *wire.Marker:
			return m, nil
		case *wire.Ping:
			s.out <- &wire.Pong{Nonce: m.Nonce}
		case *wire.Pong:
		case *wire.Goodbye:
			return nil, io.EOF
		case *wire.Error:
			s.log.Warn("the agent ended the session with an error", "code", m.Code, "reason", m.Message)
			return nil, io.EOF
		default:
			return nil, fmt.Errorf("%w: unexpected %s from an agent", wire.ErrProtocol, m.Type())
		}
	}
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
