package store

import "sync/atomic"

// WriteCounters are what the heads of a repository were given since it was opened in
// this process: the replicator's metrics (docs/metrics.md).
type WriteCounters struct {
	Blocks             int64 // blocks written
	ZeroBlocks         int64 // of them, all zero: nothing is stored
	ChunksWritten      int64 // of them, new chunks: compressed, encrypted and packed
	ChunksDeduplicated int64 // of them, chunks the repository held (or was packing) already
	StoredBytes        int64 // what the new chunks take, as stored
}

// writeCounters is WriteCounters as the heads count them.
type writeCounters struct {
	blocks, zero, written, dedup, stored atomic.Int64
}

// count counts one block written, as WriteBlocks prepared it.
func (c *writeCounters) count(p prepared) {
	c.blocks.Add(1)
	switch {
	case p.id.IsZero():
		c.zero.Add(1)
	case p.sealed != nil:
		c.written.Add(1)
		c.stored.Add(int64(len(p.sealed)))
	default:
		c.dedup.Add(1)
	}
}

// WriteCounters returns what the repository's heads were given so far.
func (r *Repo) WriteCounters() WriteCounters {
	c := &r.counters
	return WriteCounters{Blocks: c.blocks.Load(), ZeroBlocks: c.zero.Load(), ChunksWritten: c.written.Load(),
		ChunksDeduplicated: c.dedup.Load(), StoredBytes: c.stored.Load()}
}

// indexSize sums the data chunks of the index as it changes.
type indexSize struct {
	chunks      int
	raw, stored int64
}

// add counts an entry the index takes, when it is a data chunk (tree nodes are not).
func (s *indexSize) add(e entry) {
	if e.Type == blobData {
		s.chunks++
		s.raw += int64(e.RawLen)
		s.stored += int64(e.Length)
	}
}

// IndexSize is the size of the data chunks (blocks' contents, not tree nodes) in the
// repository's index as this process last read it (every pack it wrote, and those
// others wrote as of its last view): how many, their bytes uncompressed (the unique
// data stored) and as stored. It costs nothing: the sums are kept as the index changes.
func (r *Repo) IndexSize() (chunks int, rawBytes, storedBytes int64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ix.data.chunks, r.ix.data.raw, r.ix.data.stored
}
