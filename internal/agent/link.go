package agent

import (
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// Link carries a session's wire messages to the replicator and its answers back: a
// *wire.Conn, over TLS to a replicator or over an in-memory pipe in tests.
type Link interface {
	WriteMsg(m wire.Msg) error
	Flush() error
	ReadMsg() (wire.Msg, error)
	SetReadDeadline(t time.Time) error
	Close() error
}

// Liveness of the link to the replicator.
const (
	pingEvery    = 5 * time.Second
	silenceLimit = 20 * time.Second
)
