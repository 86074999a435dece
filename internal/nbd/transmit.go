package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/lifeboat-dr/lifeboat/internal/limit"
)

// transmission is the transmission phase of one connection: one goroutine reads
// requests and answers the cheap ones; reads and block status queries run on their own
// goroutines, at most maxInFlight at once, and each reply is written whole under wmu.
type transmission struct {
	c          *conn
	srv        *Server
	log        *slog.Logger
	gate       *limit.LogGate
	exp        Export
	name       string
	size       uint64
	flags      uint16
	structured bool
	allocation bool // base:allocation was selected for this export

	slots chan struct{}       // requests in flight
	mem   *semaphore.Weighted // bytes of read buffers in flight
	wg    sync.WaitGroup

	wmu  sync.Mutex
	werr error // the first failed write; nothing more is written after it

	reads, readBytes atomic.Int64
}

func newTransmission(c *conn, srv *Server, e Export, name string, size uint64, flags uint16, structured, allocation bool) *transmission {
	return &transmission{c: c, srv: srv, exp: e, name: name, size: size, flags: flags,
		structured: structured, allocation: allocation,
		slots: make(chan struct{}, maxInFlight), mem: semaphore.NewWeighted(maxPayload)}
}

// run serves requests until the client disconnects, breaks the protocol, goes idle or
// ctx ends; it returns once every request in flight is answered.
func (t *transmission) run(ctx context.Context) error {
	defer t.wg.Wait()
	if err := t.c.get().SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear the negotiation's deadline: %w", err)
	}
	br := bufio.NewReaderSize(t.c, 64<<10)
	var hdr [requestLen]byte
	for {
		if err := t.c.readBy(deadline(t.srv.idleTimeout())); err != nil {
			return err
		}
		n, err := io.ReadFull(br, hdr[:])
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && len(t.slots) > 0 && !t.c.isStopped() {
			continue // not idle: the client waits for replies
		}
		if err != nil {
			return t.stopped(t.c.readErr("a request", err))
		}
		req, ok := parseRequest(hdr[:])
		if !ok {
			return fmt.Errorf("the client sent a request with bad magic %#x", hdr[:4])
		}
		if err := t.dispatch(ctx, br, req); err != nil {
			return t.stopped(err)
		}
	}
}

// stopped prefers the reason a write failed, which is why the reader stopped.
func (t *transmission) stopped(err error) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.werr != nil {
		return t.werr
	}
	return err
}

// dispatch answers one request or starts a goroutine that will.
func (t *transmission) dispatch(ctx context.Context, br *bufio.Reader, req request) error {
	switch req.typ {
	case cmdRead:
		return t.startRead(ctx, req)
	case cmdBlockStatus:
		return t.startBlockStatus(ctx, req)
	case cmdWrite:
		if req.length > maxPayload {
			return fmt.Errorf("the client sent a write of %d bytes, more than the %d a request may carry", req.length, maxPayload)
		}
		if _, err := io.CopyN(io.Discard, br, int64(req.length)); err != nil {
			return t.c.readErr("a write's data", err)
		}
		return t.replyErr(req, errPerm, "the export is read-only")
	case cmdTrim, cmdWriteZeroes:
		return t.replyErr(req, errPerm, "the export is read-only")
	case cmdFlush:
		return t.replyOK(req)
	case cmdDisc:
		return errClientDone
	}
	return t.replyErr(req, errInvalid, fmt.Sprintf("command %d is not supported", req.typ))
}

// checkRange refuses a range past the end of the export.
func (t *transmission) checkRange(req request) error {
	if req.offset > t.size || uint64(req.length) > t.size-req.offset {
		return fmt.Errorf("%d bytes at offset %d are past the end of the export (%d bytes)", req.length, req.offset, t.size)
	}
	return nil
}

// startRead checks a read and starts the goroutine that answers it once it has a slot
// and the memory for its buffer.
func (t *transmission) startRead(ctx context.Context, req request) error {
	allowed := cmdFlagFUA // clients set it on reads; it means nothing here
	if t.structured {
		allowed |= cmdFlagDF // a read is always one chunk
	}
	switch {
	case req.flags&^allowed != 0:
		return t.replyErr(req, errInvalid, fmt.Sprintf("flags %#x do not apply to a read", req.flags))
	case req.length > maxPayload && t.structured:
		return t.replyErr(req, errOverflow, fmt.Sprintf("a read is limited to %d bytes", maxPayload))
	case req.length > maxPayload:
		return t.replyErr(req, errInvalid, fmt.Sprintf("a read is limited to %d bytes", maxPayload))
	}
	if err := t.checkRange(req); err != nil {
		return t.replyErr(req, errInvalid, err.Error())
	}
	if req.length == 0 {
		return t.replyOK(req)
	}
	if err := t.acquire(ctx, int64(req.length)); err != nil {
		return err
	}
	t.wg.Go(func() {
		defer t.release(int64(req.length))
		t.read(ctx, req)
	})
	return nil
}

// acquire takes a slot for a request and n bytes of buffer memory.
func (t *transmission) acquire(ctx context.Context, n int64) error {
	select {
	case t.slots <- struct{}{}:
	case <-ctx.Done():
		return errServerStopping
	}
	if err := t.mem.Acquire(ctx, n); err != nil {
		<-t.slots
		return errServerStopping
	}
	return nil
}

func (t *transmission) release(n int64) {
	t.mem.Release(n)
	<-t.slots
}

// read answers a read whose range was checked.
func (t *transmission) read(ctx context.Context, req request) {
	buf := make([]byte, req.length)
	if err := readFull(ctx, t.exp, buf, int64(req.offset)); err != nil {
		if ctx.Err() != nil {
			_ = t.replyErr(req, errShutdown, "the server is stopping")
			return
		}
		t.gate.Warn(t.log, "read:"+t.name, "reading an NBD export failed; the client gets an I/O error",
			"offset", req.offset, "length", req.length, "err", err)
		_ = t.replyErr(req, errIO, "reading the export failed")
		return
	}
	t.reads.Add(1)
	t.readBytes.Add(int64(req.length))
	if !t.structured {
		_ = t.send(simpleReply(0, req.cookie), buf)
		return
	}
	h := chunkHeader(replyFlagDone, replyOffsetData, req.cookie, 8+req.length)
	_ = t.send(binaryOffset(h, req.offset), buf)
}

// binaryOffset appends a 64-bit offset to b.
func binaryOffset(b []byte, off uint64) []byte {
	return append(b, byte(off>>56), byte(off>>48), byte(off>>40), byte(off>>32),
		byte(off>>24), byte(off>>16), byte(off>>8), byte(off))
}

// replyOK answers a request that succeeded without data.
func (t *transmission) replyOK(req request) error {
	if t.structured {
		return t.send(chunkHeader(replyFlagDone, replyNone, req.cookie, 0))
	}
	return t.send(simpleReply(0, req.cookie))
}

// replyErr answers a request that failed, with a message when replies are structured.
func (t *transmission) replyErr(req request, errno uint32, msg string) error {
	t.log.Debug("NBD request refused", "command", cmdName(req.typ), "offset", req.offset,
		"length", req.length, "errno", errno, "why", msg)
	if !t.structured {
		return t.send(simpleReply(errno, req.cookie))
	}
	msg = clip(msg)
	b := chunkHeader(replyFlagDone, replyError, req.cookie, uint32(6+len(msg)))
	b = append(b, byte(errno>>24), byte(errno>>16), byte(errno>>8), byte(errno),
		byte(len(msg)>>8), byte(len(msg)))
	return t.send(append(b, msg...))
}

// send writes one reply whole. After a failed write (the client is gone or does not
// take its replies in time) the connection is closed, which ends the reader too.
func (t *transmission) send(parts ...[]byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.werr != nil {
		return t.werr
	}
	nc := t.c.get()
	if err := nc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		t.werr = fmt.Errorf("set a reply's deadline: %w", err)
		return t.werr
	}
	bufs := net.Buffers(parts) // one writev on TCP and Unix sockets
	if _, err := bufs.WriteTo(nc); err != nil {
		t.werr = fmt.Errorf("writing a reply to the client: %w", err)
		_ = nc.Close()
		return t.werr
	}
	return nil
}
