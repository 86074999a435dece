package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/limit"
)

// Defaults of Server's limits.
const (
	DefaultMaxConnections = 32
	DefaultIdleTimeout    = 10 * time.Minute
)

// Bounds on what a client may send or make the server hold (the package comment lists
// them for operators).
const (
	maxOptionLen       = 8 << 10  // data of one option
	maxNameLen         = 4096     // an export name, as the protocol allows
	maxOptions         = 2048     // options in one negotiation
	maxListed          = 1000     // exports in a reply to NBD_OPT_LIST
	maxPayload         = 32 << 20 // a read's length, a write's payload
	maxInFlight        = 16       // requests in flight per connection
	maxExtents         = 1 << 16  // descriptors in a block status reply
	maxMessageLen      = 256      // an error message sent to a client
	negotiationTimeout = 60 * time.Second
	writeTimeout       = 60 * time.Second
	acceptBackoff      = 100 * time.Millisecond
)

// Server serves read-only exports over NBD. Set its fields before Serve; the zero
// values of the limits are their defaults.
type Server struct {
	// Exports finds the export a client names ("" is the default export). It is called
	// for every NBD_OPT_INFO, NBD_OPT_GO and NBD_OPT_EXPORT_NAME, with a context that
	// ends with the negotiation. An error wrapping ErrUnknownExport tells the client
	// there is no such export; so does any other error, which is also logged.
	Exports func(ctx context.Context, name string) (Export, error)
	// List names the exports for NBD_OPT_LIST (the first 1000 valid names are sent);
	// nil refuses listing.
	List func(ctx context.Context) ([]string, error)
	// TLSConfig, when set, requires NBD_OPT_STARTTLS before any other option (TLS 1.2
	// or later). Its ClientAuth decides whether clients need certificates. nil: no TLS.
	TLSConfig *tls.Config
	// Logger receives the server's log (nil: none).
	Logger *slog.Logger
	// MaxConnections bounds the connections served at once; more are closed as soon
	// as they are accepted (0: DefaultMaxConnections).
	MaxConnections int
	// IdleTimeout closes a connection in transmission that sent no request and has
	// none in flight for this long (0: DefaultIdleTimeout; negative: no limit, for a
	// QEMU whose guest may not touch its disk for hours, which TCP keepalives then
	// watch).
	IdleTimeout time.Duration
}

// Serve accepts connections on l and serves each until ctx ends; then it closes l,
// answers the requests in flight (NBD_ESHUTDOWN where a read cannot finish), closes
// every connection and returns nil. It returns an error when l fails otherwise.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.Exports == nil {
		return errors.New("NBD server has no Exports function: there is nothing to serve")
	}
	log := s.logger()
	var conns sync.WaitGroup
	defer conns.Wait() // after cancel: connections end with Serve
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	slots := make(chan struct{}, s.maxConnections())
	gate := limit.NewLogGate(time.Minute)
	log.Info("serving NBD", "address", l.Addr().String(), "tls", s.TLSConfig != nil)
	var id uint64
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("NBD listener %s was closed while serving: %w", l.Addr(), err)
			}
			gate.Warn(log, "accept", "accepting an NBD connection failed; retrying", "address", l.Addr().String(), "err", err)
			if sleep(ctx, acceptBackoff) != nil {
				return nil
			}
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			remote := c.RemoteAddr().String()
			gate.Warn(log, limit.Host(remote), "refused an NBD connection: the server serves as many as it may",
				"remote", remote, "max_connections", cap(slots))
			c.Close()
			continue
		}
		id++
		connID := id
		conns.Go(func() {
			defer func() { <-slots }()
			s.serveConn(ctx, c, connID, gate)
		})
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) maxConnections() int {
	if s.MaxConnections <= 0 {
		return DefaultMaxConnections
	}
	return s.MaxConnections
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout == 0 {
		return DefaultIdleTimeout
	}
	return s.IdleTimeout
}

// serveConn negotiates with one client and serves its export until it leaves, breaks
// the protocol or ctx ends.
func (s *Server) serveConn(ctx context.Context, raw net.Conn, id uint64, gate *limit.LogGate) {
	remote := raw.RemoteAddr().String()
	log := s.logger().With("conn", id, "remote", remote)
	c := &conn{cur: raw}
	stop := context.AfterFunc(ctx, c.stop)
	defer stop()
	defer c.close()
	log.Debug("NBD client connected")
	t, err := s.negotiate(ctx, c, log)
	if err != nil {
		logEnd(log, gate, remote, slog.LevelDebug, "NBD client left during negotiation", err)
		return
	}
	log = log.With("export", clip(t.name))
	t.log, t.gate = log, gate
	log.Info("NBD client attached", "size", t.size, "structured_replies", t.structured, "tls", c.isTLS())
	err = t.run(ctx)
	log = log.With("reads", t.reads.Load(), "read_bytes", t.readBytes.Load())
	logEnd(log, gate, remote, slog.LevelInfo, "NBD client detached", err)
}

// logEnd logs how a connection ended: at level clean when the client ended it as the
// protocol says or the server stopped, else at info level with the reason (a broken
// client, a timeout), at most once a minute per client host, so that a flood of bad
// clients does not flood the log.
func logEnd(log *slog.Logger, gate *limit.LogGate, remote string, clean slog.Level, msg string, err error) {
	switch {
	case err == nil, errors.Is(err, errClientDone):
		log.Log(context.Background(), clean, msg)
	case errors.Is(err, errServerStopping):
		log.Log(context.Background(), clean, msg, "reason", "the server is stopping")
	default:
		ok, suppressed := gate.Allow("end:" + limit.Host(remote))
		if !ok {
			return
		}
		args := []any{"reason", err.Error()}
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		log.Info(msg, args...)
	}
}

var (
	// errClientDone ends a connection the client ended as the protocol says
	// (NBD_OPT_ABORT, NBD_CMD_DISC).
	errClientDone = errors.New("the client disconnected")
	// errServerStopping ends a connection because the server's context ended.
	errServerStopping = errors.New("the NBD server is stopping")
)

// conn is a client's connection, plain or TLS, whose reads the server can stop from
// another goroutine (when ctx ends) without racing with the deadlines the reader sets.
type conn struct {
	mu      sync.Mutex
	cur     net.Conn
	stopped bool
}

func (c *conn) Read(p []byte) (int, error) { return c.get().Read(p) }

func (c *conn) get() net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

func (c *conn) isTLS() bool {
	_, ok := c.get().(*tls.Conn)
	return ok
}

// upgrade makes the connection a TLS one.
func (c *conn) upgrade(t *tls.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur = t
}

// readBy sets the deadline of the next reads, unless the server is stopping.
func (c *conn) readBy(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errServerStopping
	}
	return c.cur.SetReadDeadline(t)
}

func (c *conn) isStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// stop ends the reads in progress and refuses new ones; writes go on, so requests in
// flight are still answered.
func (c *conn) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	_ = c.cur.SetReadDeadline(time.Now())
}

// close closes the connection (a TLS one says close_notify first, bounded in time).
func (c *conn) close() {
	cur := c.get()
	_ = cur.SetWriteDeadline(time.Now().Add(time.Second))
	_ = cur.Close()
}

// readErr words an error reading from the client.
func (c *conn) readErr(what string, err error) error {
	switch {
	case c.isStopped():
		return errServerStopping
	case errors.Is(err, io.EOF):
		return fmt.Errorf("the client closed the connection while the server waited for %s", what)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("the client closed the connection in the middle of %s", what)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("the client took too long to send %s: %w", what, err)
	}
	return fmt.Errorf("reading %s from the client: %w", what, err)
}

// deadline is now+d, or no deadline for d < 0.
func deadline(d time.Duration) time.Time {
	if d < 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
