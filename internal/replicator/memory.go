package replicator

import (
	"context"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// batchMemory is the replicator's Config.BatchMemory: it bounds the bytes of the
// decoded batches held at once, across all sessions, and keeps a few free batch
// buffers for reuse. When it is used up, sessions stop reading until the store has
// taken some batches.
type batchMemory struct {
	max   int64
	sem   *semaphore.Weighted
	slabs chan []byte // free batch buffers, shared by the sessions
}

func newBatchMemory(max int64) *batchMemory {
	return &batchMemory{max: max, sem: semaphore.NewWeighted(max), slabs: make(chan []byte, 16)}
}

// memHold is one session's share of the batch memory. What it holds when the
// session ends (batches dropped when it failed) goes back with releaseAll.
type memHold struct {
	m    *batchMemory
	held atomic.Int64
}

// slab returns an empty buffer of at least n bytes and its cost, once the batch
// memory has room for it; it reuses a free buffer when one fits. It fails only when
// ctx ends first.
func (h *memHold) slab(ctx context.Context, n int) ([]byte, int64, error) {
	cost := min(int64(n), h.m.max)
	if err := h.m.sem.Acquire(ctx, cost); err != nil {
		return nil, 0, errStopped
	}
	h.held.Add(cost)
	select {
	case b := <-h.m.slabs:
		if cap(b) >= n {
			return b[:0], cost, nil
		}
	default:
	}
	return make([]byte, 0, n), cost, nil
}

// free gives a batch's buffer and memory back.
func (h *memHold) free(b []byte, cost int64) {
	if cost > 0 {
		h.held.Add(-cost)
		h.m.sem.Release(cost)
	}
	if b == nil {
		return
	}
	select {
	case h.m.slabs <- b[:0]:
	default:
	}
}

// releaseAll gives back the memory of the batches still held.
func (h *memHold) releaseAll() {
	if n := h.held.Swap(0); n > 0 {
		h.m.sem.Release(n)
	}
}
