package wire

import (
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// CheckPeer checks a Hello against the verified identity of the agent that sent it
// (PeerIdentity): an agent may only send its own server's data.
func (m *Hello) CheckPeer(peer pki.Identity) error {
	if peer.Kind != pki.KindSourceServer {
		return fmt.Errorf("the peer is %s, not a source server's agent", peer)
	}
	if m.SourceServerID != peer.ID {
		return fmt.Errorf("Hello names source server %s but the agent's certificate is for %s", m.SourceServerID, peer.ID)
	}
	return nil
}

// Session holds what a Hello and its Welcome agreed, and checks the sequenced frames of
// the session against it: a replicator calls Check on every Blocks and Marker it reads.
// A Session is not safe for concurrent use.
type Session struct {
	Hello   *Hello
	Welcome *Welcome
	last    uint64 // sequence of the last frame checked
}

// NewSession checks that w answers h: a version h speaks, one replica per volume, and
// a store block size every volume's device block size divides.
func NewSession(h *Hello, w *Welcome) (*Session, error) {
	if w.Version < 1 || w.Version > h.Version {
		return nil, fmt.Errorf("Welcome chose protocol version %d; the agent speaks 1 to %d", w.Version, h.Version)
	}
	if len(w.Volumes) != len(h.Volumes) {
		return nil, fmt.Errorf("Welcome describes %d volumes, Hello %d", len(w.Volumes), len(h.Volumes))
	}
	for i, v := range h.Volumes {
		if w.BlockSize%v.BlockSize != 0 {
			return nil, fmt.Errorf("store block size %d is not a multiple of volume %d (%s) block size %d", w.BlockSize, i, v.Name, v.BlockSize)
		}
	}
	return &Session{Hello: h, Welcome: w}, nil
}

// LastSeq returns the sequence of the last frame Check accepted (0 before any).
func (s *Session) LastSeq() uint64 { return s.last }

// Check checks a sequenced frame (Blocks or Marker; other messages pass) against the
// session: sequence numbers follow each other from 1 with no gap, volume indexes exist,
// every block lies inside its volume with the store's block size (a volume's last block
// may be shorter), and a Marker gives every volume's size as Hello declared it. An error
// matches ErrProtocol.
func (s *Session) Check(m Msg) error {
	switch m := m.(type) {
	case *Blocks:
		if err := s.next(m.Seq, TypeBlocks); err != nil {
			return err
		}
		if int(m.Volume) >= len(s.Hello.Volumes) {
			return protoErr("Blocks %d: volume index %d, but Hello has %d volumes", m.Seq, m.Volume, len(s.Hello.Volumes))
		}
		size, bs := s.Hello.Volumes[m.Volume].SizeBytes, uint64(s.Welcome.BlockSize)
		blocks := size / bs
		if size%bs != 0 {
			blocks++
		}
		for i := range m.Entries {
			e := &m.Entries[i]
			if e.Block >= blocks {
				return protoErr("Blocks %d: entry %d: block %d is past the end of volume %d (%d blocks)", m.Seq, i, e.Block, m.Volume, blocks)
			}
			if want := min(bs, size-e.Block*bs); uint64(e.RawLen) != want {
				return protoErr("Blocks %d: entry %d: block %d raw length is %d, want %d", m.Seq, i, e.Block, e.RawLen, want)
			}
		}
	case *Marker:
		if err := s.next(m.Seq, TypeMarker); err != nil {
			return err
		}
		if len(m.VolumeSizes) != len(s.Hello.Volumes) {
			return protoErr("Marker %d: %d volume sizes, Hello has %d volumes", m.ID, len(m.VolumeSizes), len(s.Hello.Volumes))
		}
		for i, sz := range m.VolumeSizes {
			if sz != s.Hello.Volumes[i].SizeBytes {
				return protoErr("Marker %d: volume %d size %d differs from the %d Hello declared (a resize ends the session)", m.ID, i, sz, s.Hello.Volumes[i].SizeBytes)
			}
		}
	}
	return nil
}

func (s *Session) next(seq uint64, t MsgType) error {
	if seq != s.last+1 {
		return protoErr("%s has sequence %d, want %d", t, seq, s.last+1)
	}
	s.last = seq
	return nil
}

// Open runs the agent's side of the opening of a session (docs/wire.md §6.1): it sends
// hello and reads the answer within timeout. The answer is a Welcome, checked against
// the Hello and returned with the agreed Session, or the replicator's refusal as an
// *Error.
func Open(c *Conn, hello *Hello, timeout time.Duration) (*Welcome, *Session, error) {
	if err := c.WriteMsg(hello); err != nil {
		return nil, nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	m, err := c.ReadMsg()
	if err != nil {
		return nil, nil, fmt.Errorf("no answer from the replication server: %w", err)
	}
	switch m := m.(type) {
	case *Error:
		return nil, nil, m
	case *Welcome:
		s, err := NewSession(hello, m)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		return m, s, nil
	}
	return nil, nil, fmt.Errorf("%w: the replication server answered with %s instead of a Welcome", ErrProtocol, m.Type())
}

// ReadHello runs the first half of the replicator's side of the opening: the agent's
// first frame, read within timeout, must be a Hello within the protocol's bounds (an
// error wrapping ErrProtocol otherwise).
func ReadHello(c *Conn, timeout time.Duration) (*Hello, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	m, err := c.ReadMsg()
	if errors.Is(err, ErrProtocol) {
		return nil, fmt.Errorf("the Hello was refused: %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: no Hello: %v", ErrProtocol, err)
	}
	h, ok := m.(*Hello)
	if !ok {
		return nil, fmt.Errorf("%w: the first frame must be a Hello, not %s", ErrProtocol, m.Type())
	}
	return h, nil
}

// SendWelcome ends the replicator's side of the opening: it checks w against the Hello,
// sends it, and returns the agreed Session, whose frames the replicator then checks.
func SendWelcome(c *Conn, hello *Hello, w *Welcome) (*Session, error) {
	s, err := NewSession(hello, w)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	if err := c.WriteMsg(w); err != nil {
		return nil, err
	}
	return s, c.Flush()
}
