package chunkindex

import (
	"math/bits"

	"github.com/zeebo/xxh3"
)

const (
	blockBits  = 512 // a filter block is one 64-byte cache line
	blockWords = blockBits / 64
	maxHashes  = 7 // 7 bit positions of 9 bits each come from one 64-bit hash
)

// filter is a blocked Bloom filter: a key sets k bits inside one 512-bit block chosen
// by its hash, so that a query reads one cache line. Ids are hashed again (xxh3) so that
// the filter does not rely on them being random.
type filter struct {
	words []uint64 // blockWords per block
	k     uint32   // bits set per key, 1..maxHashes
}

// filterBlocks is the number of blocks for n keys at bitsPerKey.
func filterBlocks(n uint64, bitsPerKey int) uint64 {
	return max((n*uint64(bitsPerKey)+blockBits-1)/blockBits, 1)
}

// filterHashes is the number of bits to set per key: bitsPerKey·ln 2, the optimum for a
// classic Bloom filter, at most maxHashes.
func filterHashes(bitsPerKey int) uint32 {
	return uint32(min(max((bitsPerKey*69+50)/100, 1), maxHashes))
}

func newFilter(blocks uint64, k uint32) filter {
	return filter{words: make([]uint64, blocks*blockWords), k: k}
}

// locate returns the first word of the key's block and the bit positions' source.
func (f *filter) locate(id *ID) (int, uint64) {
	h := xxh3.Hash128(id[:])
	blk, _ := bits.Mul64(h.Hi, uint64(len(f.words)/blockWords))
	return int(blk) * blockWords, h.Lo
}

func (f *filter) add(id *ID) {
	w, h := f.locate(id)
	for range f.k {
		b := h & (blockBits - 1)
		f.words[w+int(b>>6)] |= 1 << (b & 63)
		h >>= 9
	}
}

// has reports whether the key may be in the set (false: it is not).
func (f *filter) has(id *ID) bool {
	w, h := f.locate(id)
	for range f.k {
		b := h & (blockBits - 1)
		if f.words[w+int(b>>6)]&(1<<(b&63)) == 0 {
			return false
		}
		h >>= 9
	}
	return true
}

// memoryBytes is what the filter holds in RAM.
func (f *filter) memoryBytes() int64 { return int64(len(f.words)) * 8 }
