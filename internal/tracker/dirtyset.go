package tracker

import (
	"math/bits"
	"slices"
	"sync"
)

// DirtySet is the set of dirty blocks of one volume: a bitmap with a summary level (one
// bit per non-empty word), safe for concurrent use, so Mark from the tracker's goroutine
// and Take from the sender may run at the same time.
//
// The invariant it serves (docs/architecture.md §4, invariant 1): Take removes a block's mark before the caller
// reads the block, so a write that completes after Take marks it again.
type DirtySet struct {
	mu      sync.Mutex
	blocks  uint64
	words   []uint64 // bit b%64 of words[b/64] is block b
	summary []uint64 // bit w%64 of summary[w/64] is set when words[w] != 0
	count   uint64
	cursor  uint64 // where the next Take starts
}

// NewDirtySet returns an empty set for a volume of the given number of blocks.
func NewDirtySet(blocks uint64) *DirtySet {
	d := &DirtySet{}
	d.alloc(blocks)
	return d
}

func (d *DirtySet) alloc(blocks uint64) {
	nw := (blocks + 63) / 64
	d.blocks = blocks
	d.words = make([]uint64, nw)
	d.summary = make([]uint64, (nw+63)/64)
	d.count = 0
}

// Blocks returns the number of blocks the set covers.
func (d *DirtySet) Blocks() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.blocks
}

// Mark marks blocks first..last (inclusive) dirty. The range is clamped to the volume;
// a range wholly past its end is ignored.
func (d *DirtySet) Mark(first, last uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mark(first, last)
}

func (d *DirtySet) mark(first, last uint64) {
	if d.blocks == 0 || first >= d.blocks || first > last {
		return
	}
	last = min(last, d.blocks-1)
	fw, lw := first/64, last/64
	for w := fw; w <= lw; w++ {
		mask := ^uint64(0)
		if w == fw {
			mask &= ^uint64(0) << (first % 64)
		}
		if w == lw {
			mask &= ^uint64(0) >> (63 - last%64)
		}
		old := d.words[w]
		nw := old | mask
		if nw == old {
			continue
		}
		d.words[w] = nw
		d.count += uint64(bits.OnesCount64(nw) - bits.OnesCount64(old))
		if old == 0 {
			d.summary[w/64] |= 1 << (w % 64)
		}
	}
}

// MarkAll marks every block dirty (a full sync or a RESCAN that sends everything).
func (d *DirtySet) MarkAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.blocks > 0 {
		d.mark(0, d.blocks-1)
	}
}

// Dirty reports whether block is marked.
func (d *DirtySet) Dirty(block uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if block >= d.blocks {
		return false
	}
	return d.words[block/64]&(1<<(block%64)) != 0
}

// Count returns the number of dirty blocks.
func (d *DirtySet) Count() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.count
}

// Take removes up to max dirty blocks from the set and appends them to dst in ascending
// order. It resumes after the last block the previous Take removed and wraps around at
// the end of the volume, so a region written all the time cannot starve the rest.
//
// The marks are cleared before Take returns, that is before the caller reads the
// blocks: a write completing after that marks them again. A caller that fails to send
// a taken block (connection lost, no acknowledgement) must Mark it again.
func (d *DirtySet) Take(dst []uint64, max int) []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if max <= 0 || d.count == 0 {
		return dst
	}
	start := d.cursor
	if start >= d.blocks {
		start = 0
	}
	base := len(dst)
	dst, next := d.collect(dst, start, d.blocks, max)
	high := len(dst) - base
	if high < max && start > 0 && d.count > 0 {
		dst, next = d.collect(dst, 0, start, max-high)
		// The wrapped part holds lower block numbers: put it first.
		if high > 0 && len(dst)-base > high {
			slices.Reverse(dst[base : base+high])
			slices.Reverse(dst[base+high:])
			slices.Reverse(dst[base:])
		}
	}
	if len(dst) > base {
		d.cursor = next
	}
	return dst
}

// collect removes up to n dirty blocks in [from, to), appending them to dst. It returns
// the block after the last one removed.
func (d *DirtySet) collect(dst []uint64, from, to uint64, n int) ([]uint64, uint64) {
	next := from
	taken := 0
	w := from / 64
	lastWord := (to + 63) / 64 // exclusive
	for taken < n && w < lastWord {
		word := d.words[w]
		if word == 0 {
			nw, ok := d.nextWord(w + 1)
			if !ok || nw >= lastWord {
				break
			}
			w = nw
			continue
		}
		m := word
		if w == from/64 {
			m &= ^uint64(0) << (from % 64)
		}
		if w == (to-1)/64 && to%64 != 0 {
			m &= ^uint64(0) >> (64 - to%64)
		}
		cleared := uint64(0)
		for m != 0 && taken < n {
			b := uint64(bits.TrailingZeros64(m))
			bit := uint64(1) << b
			m &^= bit
			cleared |= bit
			block := w*64 + b
			dst = append(dst, block)
			next = block + 1
			taken++
		}
		if cleared != 0 {
			d.words[w] = word &^ cleared
			d.count -= uint64(bits.OnesCount64(cleared))
			if d.words[w] == 0 {
				d.summary[w/64] &^= 1 << (w % 64)
			}
		}
		w++
	}
	return dst, next
}

// nextWord returns the index of the first non-empty word at or after w.
func (d *DirtySet) nextWord(w uint64) (uint64, bool) {
	s := w / 64
	if s >= uint64(len(d.summary)) {
		return 0, false
	}
	m := d.summary[s] & (^uint64(0) << (w % 64))
	for {
		if m != 0 {
			return s*64 + uint64(bits.TrailingZeros64(m)), true
		}
		s++
		if s >= uint64(len(d.summary)) {
			return 0, false
		}
		m = d.summary[s]
	}
}

// Resize changes the number of blocks the set covers (the volume grew or shrank).
// Marks of blocks that remain are kept; marks past a new, smaller end are dropped;
// blocks added by growth are marked, because the replica has never seen them.
func (d *DirtySet) Resize(blocks uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.words
	oldBlocks := d.blocks
	d.alloc(blocks)
	copy(d.words, old)
	if blocks < oldBlocks && blocks%64 != 0 {
		d.words[len(d.words)-1] &= ^uint64(0) >> (64 - blocks%64)
	}
	for w, word := range d.words {
		if word != 0 {
			d.count += uint64(bits.OnesCount64(word))
			d.summary[w/64] |= 1 << (uint(w) % 64)
		}
	}
	if blocks > oldBlocks {
		d.mark(oldBlocks, blocks-1)
	}
	if d.cursor >= blocks {
		d.cursor = 0
	}
}
