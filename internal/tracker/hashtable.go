package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"os"
	"sync"
	"unicode/utf8"

	"github.com/zeebo/xxh3"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// Hash table file format, version 1, little-endian:
//
//	offset size
//	0      8    magic "LBHASHT\n"
//	8      4    version (1)
//	12     4    block size in bytes
//	16     8    volume size in bytes
//	24     8    number of blocks (ceil(size / block size))
//	32     8    generation (set by the agent)
//	40     8    checksum: xxh3-64 of the whole file with these 8 bytes zeroed
//	48     2    length of the volume name
//	50     n    volume name (UTF-8)
//	...    8*w  known bitmap, w = ceil(blocks / 64) words: bit set = the block's hash is known
//	...    8*b  the blocks' xxh3-64 hashes
const (
	hashMagic         = "LBHASHT\n"
	hashVersion       = 1
	hashHeaderLen     = 50
	hashChecksumAt    = 40
	maxHashNameLen    = 1024
	maxHashBlockSize  = 1 << 26
	minHashBlockSize  = 512
	maxHashVolumeSize = 1 << 60
)

// HashTable holds, for one volume, the xxh3-64 hash of each block as the replica holds
// it (set when the replicator acknowledges the block), so that a scan sends only the
// blocks whose hash differs. It is safe for concurrent use.
type HashTable struct {
	mu         sync.Mutex
	name       string
	size       int64
	blockSize  int
	generation uint64
	known      []uint64 // bitmap
	hashes     []uint64
}

// NewHashTable returns a table in which no block's hash is known.
func NewHashTable(name string, size int64, blockSize int) (*HashTable, error) {
	if err := checkHashParams(name, size, blockSize); err != nil {
		return nil, err
	}
	h := &HashTable{name: name, blockSize: blockSize}
	h.resize(size)
	return h, nil
}

func checkHashParams(name string, size int64, blockSize int) error {
	switch {
	case len(name) > maxHashNameLen || !utf8.ValidString(name):
		return fmt.Errorf("hash table: volume name %q is not valid UTF-8 of at most %d bytes", name, maxHashNameLen)
	case blockSize < minHashBlockSize || blockSize > maxHashBlockSize || blockSize%minHashBlockSize != 0:
		return fmt.Errorf("hash table: block size %d is not a multiple of 512 between 512 and %d", blockSize, maxHashBlockSize)
	case size < 0 || size > maxHashVolumeSize:
		return fmt.Errorf("hash table: volume size %d is out of range", size)
	}
	return nil
}

func blocksOf(size int64, blockSize int) uint64 {
	return uint64((size + int64(blockSize) - 1) / int64(blockSize))
}

// resize changes the volume size. Hashes of the blocks that remain whole are kept; the
// last block before a change is forgotten, because its length (and so its hash) changes.
func (h *HashTable) resize(size int64) {
	oldBlocks := uint64(len(h.hashes))
	n := blocksOf(size, h.blockSize)
	hashes := make([]uint64, n)
	known := make([]uint64, (n+63)/64)
	copy(hashes, h.hashes)
	copy(known, h.known)
	if n%64 != 0 && len(known) > 0 {
		known[len(known)-1] &= ^uint64(0) >> (64 - n%64)
	}
	if h.size != size && oldBlocks > 0 && h.size%int64(h.blockSize) != 0 && oldBlocks-1 < n {
		known[(oldBlocks-1)/64] &^= 1 << ((oldBlocks - 1) % 64)
	}
	if size%int64(h.blockSize) != 0 && n > 0 {
		known[(n-1)/64] &^= 1 << ((n - 1) % 64)
	}
	h.size, h.hashes, h.known = size, hashes, known
}

// Resize changes the volume size the table covers (the volume grew or shrank).
func (h *HashTable) Resize(size int64) error {
	if err := checkHashParams(h.name, size, h.blockSize); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if size != h.size {
		h.resize(size)
	}
	return nil
}

// Name returns the volume name the table belongs to.
func (h *HashTable) Name() string { return h.name }

// Rename gives the table another volume's name: the same content seen under the name
// the volume has on another machine (a reversed agent's seed tables).
func (h *HashTable) Rename(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := checkHashParams(name, h.size, h.blockSize); err != nil {
		return err
	}
	h.name = name
	return nil
}

// BlockSize returns the block size the table was made for.
func (h *HashTable) BlockSize() int { return h.blockSize }

// Size returns the volume size the table covers.
func (h *HashTable) Size() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.size
}

// Blocks returns the number of blocks the table covers.
func (h *HashTable) Blocks() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return uint64(len(h.hashes))
}

// Generation returns the generation the agent stored with the table (for example the
// replica's generation, so that a table made for an older replica is recognised).
func (h *HashTable) Generation() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.generation
}

// SetGeneration stores a generation with the table.
func (h *HashTable) SetGeneration(g uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.generation = g
}

// Set records the hash of a block as the replica now holds it. Blocks past the end are
// ignored.
func (h *HashTable) Set(block, hash uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if block >= uint64(len(h.hashes)) {
		return
	}
	h.hashes[block] = hash
	h.known[block/64] |= 1 << (block % 64)
}

// Forget makes a block's hash unknown, so the next scan sends it.
func (h *HashTable) Forget(block uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if block < uint64(len(h.hashes)) {
		h.known[block/64] &^= 1 << (block % 64)
	}
}

// Reset forgets every hash.
func (h *HashTable) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.known)
	clear(h.hashes)
}

// Get returns the hash of a block and whether it is known.
func (h *HashTable) Get(block uint64) (uint64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if block >= uint64(len(h.hashes)) || h.known[block/64]&(1<<(block%64)) == 0 {
		return 0, false
	}
	return h.hashes[block], true
}

// Matches reports whether the replica is known to hold a block with this hash: a scan
// sends the block when it does not.
func (h *HashTable) Matches(block, hash uint64) bool {
	got, ok := h.Get(block)
	return ok && got == hash
}

// Known returns how many blocks have a known hash.
func (h *HashTable) Known() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, w := range h.known {
		n += bits.OnesCount64(w)
	}
	return uint64(n)
}

// MarshalBinary encodes the table in the file format above.
func (h *HashTable) MarshalBinary() ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := len(h.hashes)
	buf := make([]byte, hashHeaderLen+len(h.name)+8*len(h.known)+8*n)
	copy(buf, hashMagic)
	le := binary.LittleEndian
	le.PutUint32(buf[8:], hashVersion)
	le.PutUint32(buf[12:], uint32(h.blockSize))
	le.PutUint64(buf[16:], uint64(h.size))
	le.PutUint64(buf[24:], uint64(n))
	le.PutUint64(buf[32:], h.generation)
	le.PutUint16(buf[48:], uint16(len(h.name)))
	p := hashHeaderLen + copy(buf[hashHeaderLen:], h.name)
	for _, w := range h.known {
		le.PutUint64(buf[p:], w)
		p += 8
	}
	for _, x := range h.hashes {
		le.PutUint64(buf[p:], x)
		p += 8
	}
	le.PutUint64(buf[hashChecksumAt:], xxh3.Hash(buf))
	return buf, nil
}

// DecodeHashTable decodes and fully validates a hash table file's content. It never
// trusts a field before checking it: a damaged or foreign file is an error.
func DecodeHashTable(data []byte) (*HashTable, error) {
	if len(data) < hashHeaderLen {
		return nil, fmt.Errorf("hash table is truncated: %d bytes, the header alone is %d", len(data), hashHeaderLen)
	}
	if string(data[:8]) != hashMagic {
		return nil, errors.New("not a Lifeboat hash table (bad magic)")
	}
	le := binary.LittleEndian
	if v := le.Uint32(data[8:]); v != hashVersion {
		return nil, fmt.Errorf("hash table version %d is not supported (this agent reads version %d)", v, hashVersion)
	}
	blockSize := le.Uint32(data[12:])
	size := le.Uint64(data[16:])
	nblocks := le.Uint64(data[24:])
	generation := le.Uint64(data[32:])
	sum := le.Uint64(data[hashChecksumAt:])
	nameLen := int(le.Uint16(data[48:]))
	if blockSize < minHashBlockSize || blockSize > maxHashBlockSize || blockSize%minHashBlockSize != 0 {
		return nil, fmt.Errorf("hash table: block size %d is invalid", blockSize)
	}
	if size > maxHashVolumeSize {
		return nil, fmt.Errorf("hash table: volume size %d is out of range", size)
	}
	if want := blocksOf(int64(size), int(blockSize)); nblocks != want {
		return nil, fmt.Errorf("hash table: %d blocks recorded, but %d bytes in blocks of %d make %d", nblocks, size, blockSize, want)
	}
	if nameLen > maxHashNameLen {
		return nil, fmt.Errorf("hash table: volume name length %d is too long", nameLen)
	}
	if len(data)-hashHeaderLen < nameLen {
		return nil, fmt.Errorf("hash table is truncated inside the volume name (%d bytes)", len(data))
	}
	// Every block costs 8 bytes of hash, so this bounds nblocks by the file's length
	// before anything is allocated from it.
	rest := uint64(len(data) - hashHeaderLen - nameLen)
	words := (nblocks + 63) / 64
	if nblocks > rest/8 || rest != 8*words+8*nblocks {
		return nil, fmt.Errorf("hash table is %d bytes, which does not match %d blocks and a name of %d bytes: it is truncated or damaged",
			len(data), nblocks, nameLen)
	}
	h := xxh3.New()
	_, _ = h.Write(data[:hashChecksumAt])
	_, _ = h.Write(make([]byte, 8))
	_, _ = h.Write(data[hashChecksumAt+8:])
	if got := h.Sum64(); got != sum {
		return nil, fmt.Errorf("hash table checksum mismatch (file says %016x, content gives %016x): the file is damaged", sum, got)
	}
	name := string(data[hashHeaderLen : hashHeaderLen+nameLen])
	if !utf8.ValidString(name) {
		return nil, errors.New("hash table: volume name is not valid UTF-8")
	}
	t := &HashTable{
		name:       name,
		size:       int64(size),
		blockSize:  int(blockSize),
		generation: generation,
		known:      make([]uint64, words),
		hashes:     make([]uint64, nblocks),
	}
	p := hashHeaderLen + nameLen
	for i := range t.known {
		t.known[i] = le.Uint64(data[p:])
		p += 8
	}
	if nblocks%64 != 0 && t.known[words-1]>>(nblocks%64) != 0 {
		return nil, errors.New("hash table: bits set past the last block")
	}
	for i := range t.hashes {
		t.hashes[i] = le.Uint64(data[p:])
		p += 8
	}
	return t, nil
}

// Save writes the table to path atomically: a temporary file in the same directory,
// fsynced, renamed over path, and the directory fsynced. A crash leaves either the old
// file or the new one.
func (h *HashTable) Save(path string) error {
	data, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("save hash table: %w", err)
	}
	return nil
}

// LoadHashTable reads the hash table of a volume from path. It always returns a usable
// table: when the file does not exist the table is empty and the error nil; when the
// file is damaged, or belongs to another volume or block size, the table is empty (every
// block will be sent) and the error says why, for the agent to report. A table for a
// volume that changed size is resized.
func LoadHashTable(path, name string, size int64, blockSize int) (*HashTable, error) {
	empty, err := NewHashTable(name, size, blockSize)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return empty, nil
	}
	if err != nil {
		return empty, fmt.Errorf("read hash table %s: %w; treating it as empty, so the next scan sends every block", path, err)
	}
	t, err := DecodeHashTable(data)
	if err != nil {
		return empty, fmt.Errorf("hash table %s is damaged: %w; treating it as empty, so the next scan sends every block", path, err)
	}
	if t.name != name || t.blockSize != blockSize {
		return empty, fmt.Errorf("hash table %s is for volume %q with %d-byte blocks, not %q with %d-byte blocks; treating it as empty",
			path, t.name, t.blockSize, name, blockSize)
	}
	if t.size != size {
		t.resize(size)
	}
	return t, nil
}
