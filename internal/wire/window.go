package wire

import (
	"context"
	"fmt"
	"sync"
)

// Window is the agent's side of flow control in one session: it counts the payload
// bytes of sequenced frames (Blocks and Marker) sent and not yet acknowledged, makes
// Send wait while the next frame would pass the limit (the Welcome's WindowBytes), and
// releases frames on cumulative Acks. After a disconnect, Unacked lists the frames the
// replicator may not have made durable: the agent marks their blocks dirty again and
// sends them in the next session. A Window is safe for concurrent use (typically a
// sender goroutine calls Send while the reader goroutine calls Ack).
type Window struct {
	mu       sync.Mutex
	limit    uint64
	inFlight uint64
	frames   []sentFrame // unacknowledged, by increasing sequence from head
	head     int
	last     uint64        // highest sequence sent
	acked    uint64        // highest sequence acknowledged
	released chan struct{} // made by a waiter, closed (and cleared) when frames are acknowledged
}

type sentFrame struct {
	seq   uint64
	bytes uint64
}

// NewWindow returns an empty window of limit bytes.
func NewWindow(limit uint64) *Window {
	return &Window{limit: limit}
}

// Send records that frame seq of n payload bytes is about to be written, waiting while
// it does not fit in the window. seq must be higher than every sequence sent before.
// It returns ctx's error if ctx ends first, and recording nothing.
func (w *Window) Send(ctx context.Context, seq uint64, n int) error {
	if n < 0 || uint64(n) > w.limit {
		return fmt.Errorf("a frame of %d bytes can never fit the window of %d bytes", n, w.limit)
	}
	for {
		w.mu.Lock()
		if seq <= w.last {
			last := w.last
			w.mu.Unlock()
			return fmt.Errorf("sequence %d is not after the last one sent (%d)", seq, last)
		}
		if w.inFlight+uint64(n) <= w.limit {
			w.frames = append(w.frames, sentFrame{seq: seq, bytes: uint64(n)})
			w.inFlight += uint64(n)
			w.last = seq
			w.mu.Unlock()
			return nil
		}
		wait := w.waitLocked()
		w.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return fmt.Errorf("wait for the replicator to acknowledge in-flight data: %w", ctx.Err())
		}
	}
}

// Fits reports whether a frame of n bytes would be sent by Send without waiting. An
// agent that buffers frames calls it first, and flushes its Conn before a Send that
// would wait: frames still in the buffer are never acknowledged.
func (w *Window) Fits(n int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return n >= 0 && w.inFlight+uint64(n) <= w.limit
}

// Ack releases every frame up to and including seq. An Ack of a sequence never sent is
// a protocol violation (the replicator claims durability of data it never got); an Ack
// at or below an earlier one changes nothing.
func (w *Window) Ack(seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq > w.last {
		return protoErr("Ack of sequence %d, but the last frame sent is %d", seq, w.last)
	}
	if seq <= w.acked {
		return nil
	}
	w.acked = seq
	for w.head < len(w.frames) && w.frames[w.head].seq <= seq {
		w.inFlight -= w.frames[w.head].bytes
		w.head++
	}
	if w.head == len(w.frames) {
		w.frames, w.head = w.frames[:0], 0
	} else if w.head >= 1024 && w.head > len(w.frames)/2 {
		w.frames = w.frames[:copy(w.frames, w.frames[w.head:])]
		w.head = 0
	}
	if w.released != nil {
		close(w.released)
		w.released = nil
	}
	return nil
}

// waitLocked returns a channel closed at the next Ack that releases frames.
func (w *Window) waitLocked() <-chan struct{} {
	if w.released == nil {
		w.released = make(chan struct{})
	}
	return w.released
}

// Drain waits until every frame sent is acknowledged (before a clean Goodbye).
func (w *Window) Drain(ctx context.Context) error {
	for {
		w.mu.Lock()
		if w.head == len(w.frames) {
			w.mu.Unlock()
			return nil
		}
		wait := w.waitLocked()
		w.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return fmt.Errorf("wait for the replicator to acknowledge everything sent: %w", ctx.Err())
		}
	}
}

// Unacked returns the sequence numbers sent and not acknowledged, in increasing order.
func (w *Window) Unacked() []uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]uint64, 0, len(w.frames)-w.head)
	for _, f := range w.frames[w.head:] {
		out = append(out, f.seq)
	}
	return out
}

// InFlight returns the payload bytes sent and not acknowledged.
func (w *Window) InFlight() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inFlight
}

// Acked returns the highest sequence acknowledged (0 before any Ack).
func (w *Window) Acked() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}
