package agent

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// run runs the session until the config changes (nil) or something fails. When it
// returns, every goroutine it started has ended and every block not acknowledged is
// dirty again.
func (s *session) run(ctx context.Context, cfg api.ReplicationConfig, rescan, initial bool) error {
	return s.serve(ctx, func(ctx context.Context) error { return s.loop(ctx, cfg, rescan, initial) })
}

// serve runs the encoders, the sender and the receiver around produce, which offers
// blocks and markers on the caller's goroutine; a nil return is a clean end.
func (s *session) serve(ctx context.Context, produce func(context.Context) error) error {
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var encoders sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		encoders.Go(s.encoder)
	}
	senderDone, receiverDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(senderDone)
		if err := s.sender(sctx); err != nil {
			s.fail(err)
		}
	}()
	go func() {
		defer close(receiverDone)
		s.fail(s.receiver())
	}()
	err := produce(sctx)
	if err == nil {
		s.flushAll(sctx)
	}
	close(s.queue) // the producer has returned: nothing is queued any more
	if err == nil {
		// A clean end (the config changed): send what is queued, and let it be
		// acknowledged.
		dctx, c := context.WithTimeout(sctx, 10*time.Second)
		select {
		case <-senderDone:
		case <-dctx.Done():
		}
		_ = s.win.Drain(dctx)
		c()
	}
	stop()
	if err != nil {
		s.link.Close() // unblocks a sender stuck writing to a dead link
	}
	<-senderDone
	close(s.work)
	encoders.Wait()
	if err == nil {
		_ = s.link.WriteMsg(&wire.Goodbye{})
		_ = s.link.Flush()
	}
	s.link.Close()
	<-receiverDone
	s.requeue()
	return err
}

// encoder compresses items into Blocks frames.
func (s *session) encoder() {
	for it := range s.work {
		b := s.pools.Get().(*wire.Batch)
		b.Reset(it.seq, uint16(it.volume))
		off := 0
		for _, sb := range it.blocks {
			raw := it.raw[off : off+sb.bytes]
			off += sb.bytes
			zero, err := s.enc.Encode(b, sb.n, sb.hash, raw)
			if it.err = err; err != nil {
				break
			}
			if zero {
				s.st.sentZero.Add(1)
			}
		}
		it.batch = b
		close(it.done)
	}
}

// sender writes items in order, within the window and the bandwidth limit.
func (s *session) sender(ctx context.Context) error {
	for it := range s.queue {
		select {
		case <-it.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if it.err != nil {
			return it.err
		}
		if err := s.send(ctx, it); err != nil {
			return err
		}
		if len(s.queue) == 0 {
			if err := s.link.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// send writes one item: a ping at once, a batch or marker once the window and the
// bandwidth limit let it (it is pending from then until acknowledged).
func (s *session) send(ctx context.Context, it *item) error {
	var msg wire.Msg
	var n int
	switch {
	case it.ping:
		msg = &wire.Ping{Nonce: uint64(time.Now().UnixNano())}
	case it.marker != nil:
		msg, n = it.marker, it.marker.PayloadLen()
	default:
		msg, n = it.batch, it.batch.PayloadLen()
	}
	if !it.ping {
		if !s.win.Fits(n) {
			if err := s.link.Flush(); err != nil {
				return err
			}
		}
		if err := s.win.Send(ctx, it.seq, n); err != nil {
			return err
		}
		if err := s.limiter.WaitN(ctx, min(n, s.limiter.Burst())); err != nil {
			return err
		}
		s.mu.Lock()
		s.pending = append(s.pending, it)
		s.mu.Unlock()
	}
	if err := s.link.WriteMsg(msg); err != nil {
		return err
	}
	if it.batch != nil {
		s.st.sentBytes.Add(it.rawLen)
		s.st.sentBlocks.Add(int64(len(it.blocks)))
		s.pools.Put(it.batch)
		raw := it.raw[:0]
		s.raws.Put(&raw)
		it.batch, it.raw = nil, nil
	}
	s.mu.Lock()
	s.lastSend = time.Now()
	s.mu.Unlock()
	return nil
}

// ping queues a Ping when nothing was sent for pingEvery: the replicator answers, so
// the receiver hears from a live link.
func (s *session) ping() {
	s.mu.Lock()
	quiet := time.Since(s.lastSend) > pingEvery
	if quiet {
		s.lastSend = time.Now()
	}
	s.mu.Unlock()
	if !quiet {
		return
	}
	it := &item{ping: true, done: make(chan struct{})}
	close(it.done)
	select {
	case s.queue <- it:
	default:
	}
}

// receiver reads acknowledgements, seal results and errors.
func (s *session) receiver() error {
	for {
		// The replicator answers pings (sent after pingEvery without traffic) and
		// acknowledges data within its flush interval: silence means a dead link.
		_ = s.link.SetReadDeadline(time.Now().Add(silenceLimit))
		m, err := s.link.ReadMsg()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *wire.Ack:
			if err := s.win.Ack(m.Seq); err != nil {
				return err
			}
			s.ack(m.Seq)
		case *wire.Sealed:
			s.sealed(m)
		case *wire.Pong, *wire.Ping:
		case *wire.Error:
			return fromWireError(m, s.st.current())
		default:
			return fmt.Errorf("%w: unexpected %s from the replicator", wire.ErrProtocol, m.Type())
		}
	}
}
