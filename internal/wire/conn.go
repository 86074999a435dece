package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

const (
	readBufMin    = 64 << 10  // first read buffer; it grows to the frames it must hold
	writeBufFlush = 256 << 10 // buffered frames are written once they reach this
	directWrite   = 32 << 10  // a Batch this large is written from its own buffer
	keepAlive     = 15 * time.Second
)

// Conn carries frames over a connection (a *tls.Conn from Dial or Accept).
//
// Reads are buffered: one read from the connection may bring several frames, and a
// message returned by ReadMsg is decoded in place. Writes are buffered: WriteMsg
// encodes into a buffer that is written when Flush is called or it passes 256 KiB, and a
// large Batch is written straight from its own buffer; so the connection sees one write
// per flush or per large batch.
//
// Concurrency: one goroutine may call ReadMsg while another calls WriteMsg and Flush;
// neither side may be used by two goroutines at once. Close and the deadline setters may
// be called from any goroutine, and make blocked calls return.
type Conn struct {
	c  net.Conn
	r  io.Reader
	nb *netBuf // under the TLS layer of a Dial or Accept connection

	// read side
	rbuf       []byte
	rpos, rend int // unread bytes are rbuf[rpos:rend]
	rlimit     int
	blocks     Blocks // reused by every ReadMsg that returns Blocks

	// write side
	wbuf []byte
	werr error // a failed write leaves the stream unusable
}

// NewConn returns a Conn over c. c should already be authenticated (see Dial, Accept).
func NewConn(c net.Conn) *Conn {
	return &Conn{c: c, r: c, rlimit: MaxPayload}
}

// Dial connects to a replicator at addr (host:port) over TCP and runs the TLS handshake
// with cfg (from ClientTLSConfig); ctx bounds the connection and the handshake. In TLS
// 1.3 the server checks the agent's certificate after the client's handshake is done: a
// refused certificate shows as an error from the first ReadMsg (the Welcome).
func Dial(ctx context.Context, addr string, cfg *tls.Config) (*Conn, error) {
	d := net.Dialer{KeepAlive: keepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to the replicator at %s: %w", addr, err)
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("connect to the replicator at %s: %w", addr, err)
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	nb := newNetBuf(raw)
	tc := tls.Client(nb, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("connect to the replicator at %s: %w", addr, err)
	}
	nb.batching.Store(true)
	return &Conn{c: tc, r: tc, nb: nb, rlimit: MaxPayload}, nil
}

// Accept runs the server side of the TLS handshake on a connection a listener accepted,
// with cfg (from ServerTLSConfig); ctx bounds the handshake. On failure it closes raw.
func Accept(ctx context.Context, raw net.Conn, cfg *tls.Config) (*Conn, error) {
	nb := newNetBuf(raw)
	tc := tls.Server(nb, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", raw.RemoteAddr(), err)
	}
	nb.batching.Store(true)
	return &Conn{c: tc, r: tc, nb: nb, rlimit: MaxPayload}, nil
}

// newReaderConn reads frames from r alone (for tests and fuzzing).
func newReaderConn(r io.Reader) *Conn { return &Conn{r: r, rlimit: MaxPayload} }

// SetMaxPayload lowers the largest frame payload ReadMsg accepts (MaxPayload by
// default): a replicator sets it to the Welcome's MaxBatchBytes once it is sent.
func (c *Conn) SetMaxPayload(n int) {
	c.rlimit = min(max(n, 0), MaxPayload)
}

// ReadMsg reads and decodes the next frame. At a clean end of stream it returns io.EOF;
// a malformed, corrupt or truncated frame returns an error matching ErrProtocol.
//
// A *Blocks it returns is reused by the next ReadMsg, and its entries' payloads alias
// the read buffer: both are valid only until the next ReadMsg. Copy what must outlive it.
// Every other message is a new value the caller owns.
func (c *Conn) ReadMsg() (Msg, error) {
	if err := c.fill(HeaderSize); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, protoErr("connection closed in the middle of a frame header (%d of %d bytes)", c.rend-c.rpos, HeaderSize)
		}
		return nil, err
	}
	t, n, err := parseHeader(c.rbuf[c.rpos:c.rend], c.rlimit)
	if err != nil {
		return nil, err
	}
	total := HeaderSize + n + TrailerSize
	if err := c.fill(total); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, protoErr("connection closed in the middle of a %s frame (%d of %d bytes)", t, c.rend-c.rpos, total)
		}
		return nil, fmt.Errorf("read a %s frame: %w", t, err)
	}
	frame := c.rbuf[c.rpos : c.rpos+total]
	c.rpos += total
	if err := checkCRC(frame, t); err != nil {
		return nil, err
	}
	return decodePayload(t, frame[HeaderSize:HeaderSize+n], &c.blocks)
}

// fill reads until n unread bytes are buffered. It returns io.EOF when the stream ends
// with nothing unread, io.ErrUnexpectedEOF when it ends with a part of a frame.
func (c *Conn) fill(n int) error {
	zero := 0
	for c.rend-c.rpos < n {
		if c.rend == len(c.rbuf) {
			c.makeRoom()
		}
		k, err := c.r.Read(c.rbuf[c.rend:])
		c.rend += k
		if c.rend-c.rpos >= n {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				if c.rend == c.rpos {
					return io.EOF
				}
				return io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read from the connection: %w", err)
		}
		if k == 0 {
			if zero++; zero > 100 {
				return fmt.Errorf("read from the connection: %w", io.ErrNoProgress)
			}
		}
	}
	return nil
}

// makeRoom frees space after rend: it moves the unread bytes to
// the front, or doubles the buffer (up to MaxFrame) when they fill it. The buffer grows
// only as data arrives, so a header that claims a large frame costs nothing until the
// frame's bytes come.
func (c *Conn) makeRoom() {
	if c.rpos > 0 {
		c.rend = copy(c.rbuf, c.rbuf[c.rpos:c.rend])
		c.rpos = 0
		if c.rend < len(c.rbuf) {
			return
		}
	}
	size := min(max(2*len(c.rbuf), readBufMin), MaxFrame)
	grown := make([]byte, size)
	c.rend = copy(grown, c.rbuf[c.rpos:c.rend])
	c.rpos = 0
	c.rbuf = grown
}

// WriteMsg encodes m into the write buffer, and writes the buffer when it is full. A
// Batch of 32 KiB or more is written at once from its own buffer (after what is
// buffered). An encoding error leaves the stream as it was; a write error is returned
// by every later WriteMsg and Flush.
func (c *Conn) WriteMsg(m Msg) error {
	if c.werr != nil {
		return c.werr
	}
	if b, ok := m.(*Batch); ok && b.PayloadLen() >= directWrite {
		f, err := b.frame()
		if err != nil {
			return err
		}
		if err := c.Flush(); err != nil {
			return err
		}
		return c.write(f)
	}
	start := len(c.wbuf)
	buf, err := AppendFrame(c.wbuf, m)
	c.wbuf = buf
	if err != nil {
		c.wbuf = c.wbuf[:start]
		return err
	}
	if len(c.wbuf) >= writeBufFlush {
		return c.Flush()
	}
	return nil
}

// Flush writes what WriteMsg buffered.
func (c *Conn) Flush() error {
	if c.werr != nil {
		return c.werr
	}
	if len(c.wbuf) == 0 {
		return nil
	}
	err := c.write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	return err
}

func (c *Conn) write(p []byte) error {
	_, err := c.c.Write(p)
	if err == nil && c.nb != nil {
		err = c.nb.Flush()
	}
	if err != nil {
		c.werr = fmt.Errorf("write to %s: %w", c.c.RemoteAddr(), err)
	}
	return c.werr
}

// Close closes the connection (without a Goodbye: send one first for a clean close).
func (c *Conn) Close() error { return c.c.Close() }

// SetDeadline sets the read and write deadlines of the connection.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// SetReadDeadline sets the deadline of ReadMsg. A ReadMsg that times out may be called
// again: a partly read frame is kept.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.c.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline of WriteMsg and Flush. A write that times out
// leaves the stream unusable.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }

// LocalAddr returns the local network address.
func (c *Conn) LocalAddr() net.Addr { return c.c.LocalAddr() }

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.c.RemoteAddr() }

// ConnectionState returns the TLS state of the connection (zero when it is not TLS).
func (c *Conn) ConnectionState() tls.ConnectionState {
	if tc, ok := c.c.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}
