package wire

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// netBufSize is how much netBuf reads ahead and gathers before writing.
const netBufSize = 128 << 10

// netBuf sits between tls.Conn and the TCP connection to save system calls: TLS cuts
// data into records of at most 16 KiB and writes each with its own call, and reads a
// record at a time. netBuf reads ahead in large chunks, and once the handshake is done
// it gathers records into one write, made when Conn flushes (or the buffer fills).
type netBuf struct {
	net.Conn
	r        *bufio.Reader
	batching atomic.Bool // set after the handshake; before it, writes go straight out
	mu       sync.Mutex  // guards w and the writes to Conn
	w        []byte
}

func newNetBuf(c net.Conn) *netBuf {
	return &netBuf{Conn: c, r: bufio.NewReaderSize(c, netBufSize)}
}

func (b *netBuf) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *netBuf) Write(p []byte) (int, error) {
	if !b.batching.Load() {
		return b.Conn.Write(p)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.w)+len(p) > netBufSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) >= netBufSize {
		return b.Conn.Write(p)
	}
	if b.w == nil {
		b.w = make([]byte, 0, netBufSize)
	}
	b.w = append(b.w, p...)
	return len(p), nil
}

// Flush writes the gathered records.
func (b *netBuf) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *netBuf) flushLocked() error {
	if len(b.w) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.w)
	b.w = b.w[:0]
	return err
}

// SetWriteDeadline flushes first: tls.Conn sets a deadline around the close_notify
// alert it sends on Close, and that alert must go out. If a flush is under way in
// another goroutine the deadline is set at once (it bounds that flush).
func (b *netBuf) SetWriteDeadline(t time.Time) error {
	if b.mu.TryLock() {
		_ = b.flushLocked()
		b.mu.Unlock()
	}
	return b.Conn.SetWriteDeadline(t)
}

// Close sends what is gathered, unless a write is under way (then closing is what
// ends it), and closes the connection.
func (b *netBuf) Close() error {
	if b.mu.TryLock() {
		_ = b.flushLocked()
		b.mu.Unlock()
	}
	return b.Conn.Close()
}
