package replicator

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/limit"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// Default caps on agents' connections (Config.MaxHandshakes and the others).
const (
	defaultMaxHandshakes      = 64
	defaultMaxHandshakesPerIP = 16
	defaultMaxSessions        = 1024
	// maxConnsPerServer: the connections of one source server past the handshake. It
	// has one session; a new one replaces it (reconnect), and a few more are slack.
	maxConnsPerServer = 4
)

// caps bounds what agents hold at once on TCP 1500: TLS handshakes in flight, overall
// and per remote IP (an unauthenticated peer gets no further), and connections past
// their handshake, overall (a replicator serves one account, so this is that account's
// cap) and per source server.
type caps struct {
	log        *slog.Logger
	handshakes *limit.Counter // one key
	perIP      *limit.Counter // handshakes by remote IP
	sessions   *limit.Counter // one key
	perServer  *limit.Counter // by source server id
	logs       *limit.LogGate // refusals, by source
}

func newCaps(cfg Config, log *slog.Logger) *caps {
	return &caps{log: log, handshakes: limit.NewCounter(cfg.MaxHandshakes), perIP: limit.NewCounter(cfg.MaxHandshakesPerIP),
		sessions: limit.NewCounter(cfg.MaxSessions), perServer: limit.NewCounter(maxConnsPerServer), logs: limit.NewLogGate(time.Minute)}
}

func remoteIP(c net.Conn) string { return limit.Host(c.RemoteAddr().String()) }

// handshake takes a place for raw's TLS handshake, or returns false: the connection
// is closed unanswered (there is no TLS yet to answer in). done gives the place back.
func (c *caps) handshake(raw net.Conn) (done func(), ok bool) {
	ip := remoteIP(raw)
	if !c.handshakes.Acquire("") {
		c.logs.Warn(c.log, ip, "refused a connection: too many TLS handshakes in flight", "remote", ip, "cap", c.handshakes.Max())
		return nil, false
	}
	if !c.perIP.Acquire(ip) {
		c.handshakes.Release("")
		c.logs.Warn(c.log, ip, "refused a connection: too many TLS handshakes in flight from this address", "remote", ip, "cap", c.perIP.Max())
		return nil, false
	}
	return func() {
		c.perIP.Release(ip)
		c.handshakes.Release("")
	}, true
}

// session takes a place for an authenticated agent of source server server, or
// returns the Error that refuses it. done gives the place back.
func (c *caps) session(server string) (done func(), refusal *wire.Error) {
	if !c.sessions.Acquire("") {
		c.logs.Warn(c.log, "sessions", "refused an agent: the replicator serves as many sessions as it may", "server", server, "cap", c.sessions.Max())
		return nil, &wire.Error{Code: wire.CodeBusy, Message: fmt.Sprintf("this replicator serves %d sessions, the most it may: the agent retries later; add a replicator or raise its cap", c.sessions.Max())}
	}
	if !c.perServer.Acquire(server) {
		c.sessions.Release("")
		c.logs.Warn(c.log, server, "refused an agent: its server has too many connections open", "server", server, "cap", c.perServer.Max())
		return nil, &wire.Error{Code: wire.CodeBusy, Message: fmt.Sprintf("source server %s has %d connections open to this replicator, the most it may: close the others (is another agent running with its certificate?)", server, c.perServer.Max())}
	}
	return func() {
		c.perServer.Release(server)
		c.sessions.Release("")
	}, nil
}
