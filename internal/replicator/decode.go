package replicator

import (
	"context"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// work is a decoded Blocks frame or a Marker, in sequence order: what the ingest's
// reader hands its writer.
type work struct {
	seq    uint64
	volume int
	blocks []store.Block
	bytes  int64 // raw bytes of the blocks
	marker *wire.Marker
	slab   []byte // holds the blocks' data; back to the free list once written
	cost   int64  // the batch memory the slab holds
}

// take cuts the next n bytes off the batch's buffer.
func (w *work) take(n int) []byte {
	b := w.slab[len(w.slab) : len(w.slab)+n : len(w.slab)+n]
	w.slab = w.slab[:len(w.slab)+n]
	return b
}

// batchDecoder turns Blocks frames into store blocks. Each batch lives in one buffer
// of the replicator's batch memory: the raw data of its blocks, and each compressed
// payload as it came, which a head of the same codec stores as it is instead of
// compressing again.
type batchDecoder struct {
	dec  *wire.Decoder
	zero []byte // the data of every zero block
	mem  *memHold
}

func newBatchDecoder(blockSize int, mem *memHold) *batchDecoder {
	return &batchDecoder{dec: wire.NewDecoder(blockSize), zero: make([]byte, blockSize), mem: mem}
}

func (d *batchDecoder) close() { d.dec.Close() }

// decode decodes m, once the batch memory has room for it (it fails when ctx ends
// first). m may be reused after it returns: the work holds copies. A payload that does
// not decode to its length and hash is an error matching wire.ErrProtocol.
func (d *batchDecoder) decode(ctx context.Context, m *wire.Blocks) (work, error) {
	w := work{seq: m.Seq, volume: int(m.Volume), blocks: make([]store.Block, len(m.Entries))}
	need := 0
	for i := range m.Entries {
		if e := &m.Entries[i]; e.Codec != wire.CodecZero {
			need += int(e.RawLen) + len(e.Payload)
		}
	}
	var err error
	if w.slab, w.cost, err = d.mem.slab(ctx, need); err != nil {
		return work{}, err
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		b := store.Block{Index: e.Block}
		if e.Codec == wire.CodecZero {
			b.Data = d.zero[:e.RawLen]
		} else {
			if b.CompressedWith = storeCodec(e.Codec); b.CompressedWith != store.CodecNone {
				b.Compressed = w.take(len(e.Payload))
				copy(b.Compressed, e.Payload)
			}
			if b.Data, err = d.dec.Decode(e, w.take(int(e.RawLen))); err != nil {
				d.mem.free(w.slab, w.cost)
				return work{}, err
			}
		}
		w.blocks[i] = b
		w.bytes += int64(e.RawLen)
	}
	return w, nil
}

// storeCodec is the store's name of a wire codec of compressed data (CodecNone for raw).
func storeCodec(c wire.Codec) store.Codec {
	switch c {
	case wire.CodecS2:
		return store.CodecS2
	case wire.CodecZstd:
		return store.CodecZstd
	}
	return store.CodecNone
}
