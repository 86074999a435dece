package controlplane

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/limit"
)

// Limits bounds the API's clients: how long a request may take to arrive and its answer
// to leave, and how many connections, requests and event streams may be open at once.
// Zero fields take the defaults.
//
// Requests are counted in three ways. Before it is authenticated, a request counts
// against its client's IP address (a flood of bad or missing credentials from one
// address cannot take the whole server). Once authenticated, an ordinary request counts
// against its account, so one account cannot starve the others. Long-polls and streams
// (the agents' replication-config wait, the event stream) hold a connection for long
// by design and every agent of an account holds one, so they do not count against the
// account — a fixed per-account cap would refuse the 300th agent, and one scaled with
// the quota would need the account read on every request — but against their caller (one
// token, one agent or one replicator certificate): an agent needs one, a few more let
// it reconnect, and no single credential can hold many.
type Limits struct {
	// ReadHeaderTimeout bounds the TLS handshake and the request headers (default 10s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds the whole request, body included (default 30s): bodies are
	// small JSON (MaxBodyBytes), so a client that trickles one is cut off.
	ReadTimeout time.Duration
	// WriteTimeout bounds the answer from the end of the request's headers (default
	// 60s). Long-polls and streams extend it: each of their writes gets this long.
	WriteTimeout time.Duration
	// IdleTimeout closes a kept-alive connection with no request (default 2 minutes).
	IdleTimeout time.Duration

	// MaxConns is the number of connections open at once (default 4096); past it, a
	// new connection is closed at once.
	MaxConns int
	// MaxUnauthenticatedPerIP is the number of requests of one client IP address being
	// authenticated, or served without credentials, at once (default 64).
	MaxUnauthenticatedPerIP int
	// MaxRequestsPerAccount is the number of an account's authenticated requests
	// served at once, long-polls and streams apart (default 128).
	MaxRequestsPerAccount int
	// MaxStreamsPerCaller is the number of long-polls and streams one caller (a token,
	// an agent, a replicator) holds at once (default 8).
	MaxStreamsPerCaller int
	// MaxEventStreamsPerAccount is the number of event streams one account holds at
	// once (default 16), out of the 256 the control plane serves.
	MaxEventStreamsPerAccount int
}

func (l Limits) withDefaults() Limits {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defN := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.ReadHeaderTimeout, 10*time.Second)
	def(&l.ReadTimeout, 30*time.Second)
	def(&l.WriteTimeout, 60*time.Second)
	def(&l.IdleTimeout, 2*time.Minute)
	defN(&l.MaxConns, 4096)
	defN(&l.MaxUnauthenticatedPerIP, 64)
	defN(&l.MaxRequestsPerAccount, 128)
	defN(&l.MaxStreamsPerCaller, 8)
	defN(&l.MaxEventStreamsPerAccount, 16)
	return l
}

// guard holds the API's counters of what is in flight.
type guard struct {
	lim     Limits
	unauth  *limit.Counter // by client IP
	account *limit.Counter // by account
	caller  *limit.Counter // long-polls and streams, by caller
	conns   *limit.Counter // connections, one key
	logs    *limit.LogGate // refusals, by source
}

func newGuard(l Limits) *guard {
	return &guard{lim: l, unauth: limit.NewCounter(l.MaxUnauthenticatedPerIP), account: limit.NewCounter(l.MaxRequestsPerAccount),
		caller: limit.NewCounter(l.MaxStreamsPerCaller), conns: limit.NewCounter(l.MaxConns), logs: limit.NewLogGate(time.Minute)}
}

func tooMany(format string, args ...any) *api.Error {
	return api.Errorf(http.StatusTooManyRequests, api.CodeTooManyRequests, format, args...)
}

// admit lets a request in, or says why not. It counts the request against its
// client's address until it is authenticated and authorized, then against its account
// (or its caller, for a long-poll or stream route), and reads its body. release ends
// the count.
func (cp *ControlPlane) admit(c *call, rt *route) (release func(), err error) {
	g := cp.guard
	ip := limit.Host(c.r.RemoteAddr) // (a proxy in front of the API makes its clients one address)
	if !g.unauth.Acquire(ip) {
		g.logs.Warn(cp.log, "ip:"+ip, "refused a request: too many unauthenticated requests from one address", "remote", ip, "cap", g.lim.MaxUnauthenticatedPerIP)
		return nil, tooMany("too many requests from %s are being authenticated at once: retry in a moment", ip)
	}
	if rt.access.public {
		release = func() { g.unauth.Release(ip) }
	} else {
		p, err := cp.authenticate(c)
		if err == nil {
			c.p = p
			err = cp.authorize(c, rt.access)
		}
		g.unauth.Release(ip)
		if err != nil {
			return nil, err
		}
		if release, err = cp.count(c, rt); err != nil {
			return nil, err
		}
	}
	if err := c.readBody(rt); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// count counts an authenticated request against its account, or a long-poll or
// stream against its caller.
func (cp *ControlPlane) count(c *call, rt *route) (release func(), err error) {
	g := cp.guard
	if rt.stream {
		key := c.p.Kind + ":" + c.p.ID
		if !g.caller.Acquire(key) {
			g.logs.Warn(cp.log, key, "refused a long-poll or stream: its caller holds the most it may", "caller", key, "cap", g.lim.MaxStreamsPerCaller)
			return nil, tooMany("%s %s already holds %d long-polls or streams, the most one caller may: close one and retry", c.p.Kind, c.p.ID, g.lim.MaxStreamsPerCaller)
		}
		return func() { g.caller.Release(key) }, nil
	}
	key := c.p.AccountID
	if !g.account.Acquire(key) {
		g.logs.Warn(cp.log, "account:"+key, "refused a request: its account has the most requests in flight it may", "account", key, "cap", g.lim.MaxRequestsPerAccount)
		return nil, tooMany("account %s has %d requests in flight, the most one account may: retry in a moment", key, g.lim.MaxRequestsPerAccount)
	}
	return func() { g.account.Release(key) }, nil
}

// readBody reads a request's body into c.body (routes with a request type), under the
// server's ReadTimeout, or checks there is none.
func (c *call) readBody(rt *route) error {
	if rt.req == nil {
		// Nothing to read, so nothing a client could trickle while a long-poll waits.
		if c.r.ContentLength != 0 {
			return api.Invalid("this endpoint takes no request body")
		}
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(c.r.Body, MaxBodyBytes+1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return api.Errorf(http.StatusRequestTimeout, api.CodeRequestTimeout, "the request body did not arrive within %s: send it at once", c.cp.guard.lim.ReadTimeout)
	}
	if err != nil {
		return api.Invalid("the request body could not be read: %v", err)
	}
	c.body = data // DecodeRequest refuses it when it is over MaxBodyBytes
	return nil
}

// extendWrite gives the next write of a long-poll or stream the API's WriteTimeout:
// the server's deadline runs from the end of the request's headers, and they last
// longer. (The read deadline needs no such care: net/http lifts it once the request
// body is read.)
func (c *call) extendWrite(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(c.cp.guard.lim.WriteTimeout))
}

// capListener closes the connections accepted past the cap of connections open at
// once. It cannot answer them: a refusal in HTTP would need the TLS handshake the cap
// is there to spare.
type capListener struct {
	net.Listener
	cp *ControlPlane
}

func (l capListener) Accept() (net.Conn, error) {
	g := l.cp.guard
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if g.conns.Acquire("") {
			return &countedConn{Conn: c, release: func() { g.conns.Release("") }}, nil
		}
		ip := limit.Host(c.RemoteAddr().String())
		g.logs.Warn(l.cp.log, "conn:"+ip, "refused a connection: the API has the most connections open it may", "remote", ip, "cap", g.lim.MaxConns)
		c.Close()
	}
}

// countedConn gives its place back once, when it is closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
