package replicator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// A source yields the sequenced frames of a session (Blocks and Markers) in the order
// the agent sent them: the session's connection, or messages in memory in tests. Next
// returns io.EOF when the agent ended the session, and returns soon once ctx ends. A
// *wire.Blocks it returns may be reused by the next call.
type source interface {
	Next(ctx context.Context) (wire.Msg, error)
}

// idleFlush: when no data arrived for this long, what was written is flushed and
// acknowledged.
const idleFlush = 20 * time.Millisecond

// ingest applies one session's sequenced frames to the heads of its server's volumes
// (docs/wire.md §6.5, §6.7): it checks their sequence, writes Blocks to the heads,
// flushes them and acknowledges (Ack) what the store made durable, and at a Marker
// makes every earlier frame durable, seals a PIT of every head, records it with the
// control plane and answers with a Sealed. What it sends the agent goes to out; the
// connection, the handshake and the registry of sessions are the session's.
type ingest struct {
	server string
	repo   *store.Repo
	heads  []*store.Head   // by the Hello's volume index
	ws     *wire.Session   // what the Hello and Welcome agreed: checks each frame
	mem    memHold         // of the replicator's batch memory
	rec    recorder        // the control plane, which lists the PITs
	out    chan<- wire.Msg // Acks and Sealeds, in order
	log    *slog.Logger
	stats  *ingestStats // the replicator's counters (nil: none)

	flushBytes    int64         // flush at least every this many bytes (Config.FlushBytes)
	flushInterval time.Duration // and at least this often while data arrives
	recordRetry   time.Duration // the first wait before recording a PIT again
}

// run applies the frames of src until src ends or fails, a frame is refused, or the
// store fails; then it makes what it wrote durable and acknowledges it. It returns the
// writer's failure (a storage error, or a block that does not decode to its hash) as
// the Error that ends the session, and the reason the reading stopped: src's error, a
// violation matching wire.ErrProtocol, or nil when src ended.
func (in *ingest) run(ctx context.Context, src source) (*wire.Error, error) {
	defer in.mem.releaseAll() // batches dropped by a failure still hold memory
	queue := make(chan work, 2)
	writerDone := make(chan struct{})
	// The reader stops when the writer has (src returns once its context ends).
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var werr *wire.Error
	go func() {
		defer close(writerDone)
		defer cancel()
		werr = in.write(ctx, queue)
	}()
	rerr := in.read(rctx, src, queue, writerDone)
	close(queue)
	<-writerDone
	return werr, rerr
}

// read checks the sequence of the frames of src and decodes them into work for the
// writer, until src ends (nil) or fails, a frame is refused, or the writer is done.
func (in *ingest) read(ctx context.Context, src source, queue chan<- work, writerDone <-chan struct{}) error {
	dec := newBatchDecoder(in.repo.BlockSize(), &in.mem)
	defer dec.close()
	for {
		m, err := src.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := in.ws.Check(m); err != nil {
			return err
		}
		var w work
		switch m := m.(type) {
		case *wire.Blocks:
			if w, err = dec.decode(ctx, m); err != nil {
				return err
			}
		case *wire.Marker:
			w = work{seq: m.Seq, marker: m}
		default:
			return fmt.Errorf("%w: unexpected %s from an agent", wire.ErrProtocol, m.Type())
		}
		select {
		case queue <- w:
		case <-writerDone:
			return errStopped
		}
	}
}

// writer is the state of ingest.write: what was written and not yet flushed.
type writer struct {
	in        *ingest
	c         *committer
	pending   uint64 // last sequence written but not yet in a flush (0: none)
	unflushed int64  // bytes written since the last flush
	since     time.Time
	touched   []bool // heads written since the last flush
}

// write applies the queued work to the heads, flushing and acknowledging as the store
// makes it durable, and seals PITs at markers. When the queue is closed it makes
// everything durable and returns nil; it returns the Error that ends the session when
// the store fails or a block does not decode to its hash. A flush that fails while it
// waits for work ends it too: the agent, waiting for that Ack, may send nothing more.
func (in *ingest) write(ctx context.Context, queue <-chan work) *wire.Error {
	w := &writer{in: in, c: startCommitter(ctx, in.out, in.log), touched: make([]bool, len(in.heads))}
	defer w.c.close()
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		if e := w.c.failure(); e != nil {
			return e
		}
		// While written blocks wait for a flush, wait idleFlush at most for more.
		var idled <-chan time.Time
		if w.pending != 0 {
			idle.Reset(idleFlush)
			idled = idle.C
		}
		var e *wire.Error
		select {
		case e = <-w.c.failed:
			return e
		case <-idled:
			e = w.flush()
		case next, ok := <-queue:
			switch {
			case !ok:
				if e = w.flush(); e == nil {
					e = w.c.durable()
				}
				return e
			case next.marker != nil:
				e = w.marker(ctx, next)
			default:
				e = w.blocks(ctx, next)
			}
		}
		if e != nil {
			return e
		}
	}
}

// blocks writes a batch to its head, and flushes when enough was written or enough
// time has passed since the first unflushed batch.
func (w *writer) blocks(ctx context.Context, b work) *wire.Error {
	h := w.in.heads[b.volume]
	if err := h.WriteBlocks(ctx, b.blocks); err != nil {
		if errors.Is(err, wire.ErrProtocol) {
			w.in.log.Warn("an agent sent a block that does not decode to its hash", "err", err)
			return &wire.Error{Code: wire.CodeProtocol, Message: err.Error()}
		}
		w.in.log.Warn("writing to the staging store failed", "volume", h.Volume(), "err", err)
		return storeError(err)
	}
	w.in.mem.free(b.slab, b.cost) // the store keeps no reference to the data
	w.in.stats.wrote(b.bytes)
	w.touched[b.volume] = true
	if w.pending == 0 {
		w.since = time.Now()
	}
	w.pending = b.seq
	w.unflushed += b.bytes
	if w.unflushed >= w.in.flushBytes || time.Since(w.since) >= w.in.flushInterval {
		return w.flush()
	}
	return nil
}

// marker makes every frame up to a Marker durable (the Ack covering it goes out
// first), then seals the PIT it asks for.
func (w *writer) marker(ctx context.Context, m work) *wire.Error {
	w.pending = m.seq
	for i := range w.touched {
		w.touched[i] = true // every head is checkpointed by the seal anyway
	}
	if e := w.flush(); e != nil {
		return e
	}
	if e := w.c.durable(); e != nil {
		return e
	}
	w.in.seal(ctx, m.marker)
	return nil
}

// flush starts a flush of the heads written since the last one and hands it to the
// committer, which acknowledges the last sequence written once it is durable.
func (w *writer) flush() *wire.Error {
	if w.pending == 0 {
		return nil
	}
	c := commit{seq: w.pending}
	for i, h := range w.in.heads {
		if w.touched[i] {
			c.flushes = append(c.flushes, h.StartFlush())
			w.touched[i] = false
		}
	}
	w.pending, w.unflushed = 0, 0
	return w.c.send(c)
}
