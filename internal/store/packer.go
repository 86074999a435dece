package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// packer gathers sealed chunks from every head of the process into packs and uploads
// them in order, one at a time, in the background. Each pack is followed by an index
// object listing its chunks; only then do the chunks enter the in-memory index.
// Writers wait for the generation (pack number) their chunks went into.
type packer struct {
	r *Repo

	mu       sync.Mutex
	cond     *sync.Cond
	cur      *packBuf
	gen      uint64        // generation of cur
	pending  map[ID]uint64 // chunk → generation of the unflushed pack holding it
	durable  uint64        // every generation ≤ durable is done (stored or failed)
	failed   map[uint64]error
	queue    chan *packBuf
	free     chan []byte     // buffers of finished packs, for the next ones
	recent   []completedPack // packs indexed since the last view refresh
	closed   bool
	queuing  int // full packs waiting for the uploader outside the lock (sendLocked)
	lastSent time.Time
	timerGen uint64 // generation a group-commit timer will send (commitLocked)
	senders  sync.WaitGroup
	stopped  chan struct{}
	cancel   context.CancelFunc
	uploadCt context.Context
}

type packBuf struct {
	gen     uint64
	buf     []byte
	entries []entry
}

type completedPack struct {
	index   string
	pack    ID
	entries []entry
	at      time.Time // when its index object was stored
}

func newPacker(r *Repo) *packer {
	ctx, cancel := context.WithCancel(context.Background())
	p := &packer{r: r, gen: 1, pending: map[ID]uint64{}, failed: map[uint64]error{},
		queue: make(chan *packBuf, 1), free: make(chan []byte, 2), stopped: make(chan struct{}), cancel: cancel, uploadCt: ctx}
	p.cond = sync.NewCond(&p.mu)
	p.cur = p.newBuf(1)
	go p.uploader()
	return p
}

// newBuf starts a pack: in a buffer a finished pack left, or in a small one that grows
// as chunks come (a flush often ends a pack early: most packs of a lightly written
// server are small, and each would otherwise hold a full-size buffer).
func (p *packer) newBuf(gen uint64) *packBuf {
	var buf []byte
	select {
	case buf = <-p.free:
	default:
		buf = make([]byte, 0, 256<<10)
	}
	b := &packBuf{gen: gen, buf: appendPackHeader(buf[:0])}
	return b
}

// packSlack is room a pack buffer keeps past PackSize: the chunk that fills the pack
// and the pack's trailer.
const packSlack = 1 << 20

// grow makes room for n more bytes in a pack buffer. It grows by doubling, as append
// would, but to PackSize+packSlack at most, so a full pack's buffer holds the pack and
// its trailer without a last reallocation to 1.25 times its size (every buffer of a busy
// replicator would otherwise be ~20 MiB where 17 do).
func (p *packer) grow(buf []byte, n int) []byte {
	if len(buf)+n <= cap(buf) {
		return buf
	}
	c := max(2*cap(buf), len(buf)+n)
	if limit := p.r.opts.PackSize + packSlack; c > limit {
		c = max(limit, len(buf)+n)
	}
	return append(make([]byte, 0, c), buf...)
}

// release keeps a finished pack's buffer for the next pack, a few at most.
func (p *packer) release(buf []byte) {
	if cap(buf) < p.r.opts.PackSize/2 {
		return
	}
	select {
	case p.free <- buf[:0]:
	default:
	}
}

// has reports whether a chunk waits in an unflushed pack, and in which generation.
func (p *packer) has(id ID) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.pending[id]
	return g, ok
}

// add appends a sealed chunk unless it is already pending, and returns the generation
// that holds it. A full pack is queued for upload (waiting while the uploader is busy
// with the previous one: that is the write path's back-pressure).
func (p *packer) add(ctx context.Context, id ID, typ blobType, rawLen int, sealed []byte) (uint64, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return 0, errors.New("the repository is closed")
	}
	if g, ok := p.pending[id]; ok {
		p.mu.Unlock()
		return g, nil
	}
	b := p.cur
	b.entries = append(b.entries, entry{ID: id, Type: typ, Offset: uint32(len(b.buf)), Length: uint32(len(sealed)), RawLen: uint32(rawLen)})
	b.buf = p.grow(b.buf, len(sealed))
	b.buf = append(b.buf, sealed...)
	p.pending[id] = b.gen
	g := b.gen
	if len(b.buf) >= p.r.opts.PackSize {
		p.sendCurLocked(b)
	}
	p.mu.Unlock()
	return g, ctx.Err()
}

// sendLocked queues a full pack for upload. It is called with p.mu held and returns
// with it held; while the uploader is busy it waits (back-pressure), without the lock.
func (p *packer) sendLocked(full *packBuf) {
	p.senders.Add(1)
	p.queuing++
	p.mu.Unlock()
	p.queue <- full
	p.senders.Done()
	p.mu.Lock()
	p.queuing--
	p.cond.Broadcast()
}

// sendCurLocked queues the current pack b, once no other pack waits to be queued: one
// full pack at most waits for the uploader, so the memory of packs does not grow with
// the number of writers (each could otherwise fill and hold a pack of its own). If
// another writer queued b meanwhile, there is nothing left to do.
func (p *packer) sendCurLocked(b *packBuf) {
	for p.queuing > 0 && p.cur == b && !p.closed {
		p.cond.Wait()
	}
	if p.cur == b && !p.closed {
		p.sendLocked(p.rotateLocked())
	}
}

func (p *packer) rotateLocked() *packBuf {
	full := p.cur
	p.gen++
	p.cur = p.newBuf(p.gen)
	p.lastSent = time.Now()
	return full
}

// commitLocked queues the current pack b, which a flush waits for, unless a pack was
// queued less than Options.CommitInterval ago: then b is queued when the interval ends,
// with what other flushes add meanwhile (group commit). A replicator's many servers
// flush a few blocks each, and a pack each would be as many pack and index objects to
// store, and for every other process to list and read.
func (p *packer) commitLocked(b *packBuf) {
	wait := time.Until(p.lastSent.Add(p.r.opts.CommitInterval))
	if wait <= 0 {
		p.sendCurLocked(b)
		return
	}
	if p.timerGen == b.gen {
		return // already set
	}
	p.timerGen = b.gen
	time.AfterFunc(wait, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.cur == b && !p.closed && len(b.entries) > 0 {
			p.sendCurLocked(b)
		}
	})
}

// wait makes every generation up to gen durable and reports whether any generation
// in [since, gen] failed (its chunks are not stored).
func (p *packer) wait(ctx context.Context, since, gen uint64) error {
	p.mu.Lock()
	if p.cur.gen <= gen && len(p.cur.entries) > 0 && !p.closed {
		p.commitLocked(p.cur)
	}
	if p.cur.gen <= gen && len(p.cur.entries) == 0 {
		// Nothing of gen was ever added (an empty generation): it is done.
		gen = p.cur.gen - 1
	}
	// Wake the waiter when the context ends.
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop()
	for p.durable < gen && ctx.Err() == nil && !p.closed {
		p.cond.Wait()
	}
	defer p.mu.Unlock()
	if p.durable < gen {
		if err := ctx.Err(); err != nil {
			return err
		}
		return errors.New("the repository was closed before the pack was stored")
	}
	for g := since; g <= gen; g++ {
		if err := p.failed[g]; err != nil {
			return err
		}
	}
	return nil
}

func (p *packer) uploader() {
	defer close(p.stopped)
	for b := range p.queue {
		err := p.upload(p.uploadCt, b)
		p.mu.Lock()
		for _, e := range b.entries {
			if p.pending[e.ID] == b.gen {
				delete(p.pending, e.ID)
			}
		}
		if err != nil {
			p.failed[b.gen] = err
			p.r.log.Error("storing a pack failed; writers that used it must resend", "err", err)
		}
		p.durable = b.gen
		// Forget old failures nobody can still ask about.
		for g := range p.failed {
			if g+1024 < b.gen {
				delete(p.failed, g)
			}
		}
		p.cond.Broadcast()
		p.mu.Unlock()
	}
}

// upload finishes a pack (trailer, footer), stores it, then its index object, then
// adds its chunks to the in-memory index.
func (p *packer) upload(ctx context.Context, b *packBuf) error {
	r := p.r
	var id ID
	b.buf, id = r.finishPack(b.buf, b.entries)
	if err := r.be.Put(ctx, packName(id), b.buf, backend.PutOptions{}); err != nil {
		return fmt.Errorf("store pack %s: %w", packName(id), err)
	}
	name := indexName(id)
	pe := []packEntries{{Pack: id, Entries: b.entries}}
	if err := r.putSealed(ctx, name, encodeIndex(pe), backend.PutOptions{}); err != nil {
		return fmt.Errorf("store index %s: %w", name, err)
	}
	r.mu.Lock()
	r.addPackLocked(id, b.entries)
	r.ix.loaded[name] = true
	p.recent = append(p.recent, completedPack{index: name, pack: id, entries: b.entries, at: time.Now()})
	r.mu.Unlock()
	p.release(b.buf)
	b.buf = nil
	return nil
}

// finishPack appends a pack's sealed trailer and footer to buf (header and chunks)
// and returns the whole pack and its id: the BLAKE3 hash of the header and chunks,
// which the trailer's additional data names.
func (r *Repo) finishPack(buf []byte, entries []entry) ([]byte, ID) {
	id := ID(blake3.Sum256(buf))
	trailerStart := len(buf)
	buf = r.keys.seal(buf, encodeTrailer(entries), trailerAAD(id))
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(buf)-trailerStart))
	buf = append(buf, packFooterMag...)
	return buf, id
}

// reindexLocked re-adds packs this process stored while a full view refresh was
// listing the index (started is when it began): the listing may have missed them. A
// pack indexed before the listing began was listed, or was removed since by a garbage
// collection, and must not come back. Called with r.mu held.
func (p *packer) reindexLocked(listed map[string]bool, started time.Time) {
	keep := p.recent[:0]
	for _, c := range p.recent {
		if c.at.Before(started) {
			continue // old enough to have been listed; if not listed, a GC removed it
		}
		if !listed[c.index] && !p.r.ix.loaded[c.index] {
			p.r.addPackLocked(c.pack, c.entries)
			p.r.ix.loaded[c.index] = true
		}
		keep = append(keep, c)
	}
	p.recent = keep
}

func (p *packer) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	var last *packBuf
	if len(p.cur.entries) > 0 {
		last = p.rotateLocked()
	}
	if last != nil {
		p.sendLocked(last)
	}
	p.closed = true
	p.mu.Unlock()
	p.senders.Wait()
	close(p.queue)
	<-p.stopped
	p.cancel()
	p.mu.Lock()
	p.cond.Broadcast()
	p.mu.Unlock()
}
