// Package limit is what the servers use to bound their clients: a Counter of things in
// flight per key (a client address, an account, a caller) under a cap, and a LogGate
// that lets a refusal be logged at most once per interval per source, so that a flood
// of refused clients cannot flood the log too.
package limit

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// Host is the host part of a client's host:port address (addr itself when it has no
// port): what a client is counted and logged by.
func Host(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// Counter counts what is in flight per key and refuses to go past a cap. The zero
// Counter refuses everything; use NewCounter.
type Counter struct {
	mu  sync.Mutex
	max int
	n   map[string]int
}

// NewCounter returns a Counter that allows max in flight per key.
func NewCounter(max int) *Counter { return &Counter{max: max, n: map[string]int{}} }

// Acquire takes one for key unless key already holds the cap; it reports whether it
// did. Every successful Acquire needs one Release.
func (c *Counter) Acquire(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] >= c.max {
		return false
	}
	c.n[key]++
	return true
}

// Release gives back one Acquire of key.
func (c *Counter) Release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] <= 1 {
		delete(c.n, key) // the map holds only keys with something in flight
		return
	}
	c.n[key]--
}

// Max is the cap per key.
func (c *Counter) Max() int { return c.max }

// maxGateKeys bounds the sources a LogGate remembers: past it, new sources share one
// entry, so a flood from many addresses costs a bounded amount of memory and log.
const maxGateKeys = 4096

// otherSources is the shared entry of the sources past maxGateKeys.
const otherSources = "(other sources)"

// LogGate lets each source log at most once per interval. Safe for concurrent use.
type LogGate struct {
	mu    sync.Mutex
	every time.Duration
	now   func() time.Time
	last  map[string]*gateEntry
}

type gateEntry struct {
	at         time.Time // when the source last logged
	suppressed int       // messages held back since
}

// NewLogGate returns a gate that lets a source log once per every.
func NewLogGate(every time.Duration) *LogGate {
	return &LogGate{every: every, now: time.Now, last: map[string]*gateEntry{}}
}

// Allow reports whether source may log now and, when it may, how many of its messages
// were held back since it last did.
func (g *LogGate) Allow(source string) (ok bool, suppressed int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	e := g.last[source]
	if e == nil {
		if len(g.last) >= maxGateKeys {
			g.prune(now)
		}
		if len(g.last) >= maxGateKeys {
			source = otherSources
			e = g.last[source]
		}
	}
	if e == nil {
		g.last[source] = &gateEntry{at: now}
		return true, 0
	}
	if now.Sub(e.at) < g.every {
		e.suppressed++
		return false, 0
	}
	n := e.suppressed
	e.at, e.suppressed = now, 0
	return true, n
}

// prune forgets the sources that have not logged for an interval (their count of held
// back messages is lost: they logged nothing for that long anyway).
func (g *LogGate) prune(now time.Time) {
	for k, e := range g.last {
		if now.Sub(e.at) >= g.every {
			delete(g.last, k)
		}
	}
}

// Warn logs msg at warning level with args when source may log now, adding how many
// messages of source were held back since its last one.
func (g *LogGate) Warn(log *slog.Logger, source, msg string, args ...any) {
	ok, n := g.Allow(source)
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Warn(msg, args...)
}
