package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/zeebo/xxh3"
)

// MaxEntries is the most entries one Blocks frame may carry.
const MaxEntries = 1 << 16

// Codec says how an entry's payload encodes the block's raw data.
type Codec uint8

// Codecs of protocol version 1.
const (
	CodecNone Codec = 0 // the payload is the raw data
	CodecS2   Codec = 1 // S2 block format (github.com/klauspost/compress/s2 Encode), not the stream format
	CodecZstd Codec = 2 // one Zstandard frame (RFC 8878)
	CodecZero Codec = 3 // the raw data is RawLen zero bytes; no payload
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	case CodecZero:
		return "zero"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// Hash is the block hash the protocol carries: XXH3-64 (seed 0) of the raw data.
func Hash(raw []byte) uint64 { return xxh3.Hash(raw) }

// BlockEntry is one block of a Blocks message.
type BlockEntry struct {
	Block  uint64 // block number: the data starts at byte Block × the session's block size
	RawLen uint32 // length of the raw data: the block size, less for a volume's last block
	Codec  Codec
	Hash   uint64 // Hash of the raw data
	// Payload is the encoded data. In a message returned by Conn.ReadMsg it aliases the
	// connection's read buffer and is valid only until the next ReadMsg.
	Payload []byte
}

// VerifyRaw checks raw (the entry's payload decoded by its codec) against the entry's
// length and hash.
func (e *BlockEntry) VerifyRaw(raw []byte) error {
	if len(raw) != int(e.RawLen) {
		return fmt.Errorf("block %d decodes to %d bytes, the entry says %d", e.Block, len(raw), e.RawLen)
	}
	if h := Hash(raw); h != e.Hash {
		return fmt.Errorf("block %d hash is %016x, the entry says %016x (the agent's data or codec is corrupt)", e.Block, h, e.Hash)
	}
	return nil
}

// checkEntry checks the rules an entry's header must follow.
func checkEntry(block uint64, rawLen uint32, codec Codec, payloadLen int) error {
	if rawLen == 0 || rawLen > MaxBlockSize {
		return fmt.Errorf("block %d raw length %d is not from 1 to %d", block, rawLen, MaxBlockSize)
	}
	switch codec {
	case CodecNone:
		if payloadLen != int(rawLen) {
			return fmt.Errorf("block %d codec none carries %d bytes for a raw length of %d", block, payloadLen, rawLen)
		}
	case CodecS2, CodecZstd:
		if payloadLen == 0 || payloadLen > int(rawLen) {
			return fmt.Errorf("block %d codec %v carries %d bytes; compressed data must be 1 to %d bytes (send codec none when compression does not help)", block, codec, payloadLen, rawLen)
		}
	case CodecZero:
		if payloadLen != 0 {
			return fmt.Errorf("block %d codec zero carries %d bytes of payload, want none", block, payloadLen)
		}
	default:
		return fmt.Errorf("block %d has unknown codec %d", block, uint8(codec))
	}
	return nil
}

// Blocks is a batch of blocks of one volume. It is the decoded form of a Blocks frame;
// to send, a Batch is cheaper (it encodes entries as they are added).
type Blocks struct {
	Seq     uint64 // the session's sequence number, from 1, increasing
	Volume  uint16 // index into Hello's volumes
	Entries []BlockEntry
}

// Type returns TypeBlocks.
func (*Blocks) Type() MsgType { return TypeBlocks }

// PayloadLen is the size of the frame payload m encodes to: what a Window counts.
func (m *Blocks) PayloadLen() int {
	n := BlocksOverhead
	for i := range m.Entries {
		n += EntryOverhead + len(m.Entries[i].Payload)
	}
	return n
}

func checkBlocksHeader(seq uint64, volume uint16, count int) error {
	if seq == 0 {
		return errors.New("sequence 0 (sequence numbers start at 1)")
	}
	if volume >= MaxVolumes {
		return fmt.Errorf("volume index %d is beyond the %d volumes a session may have", volume, MaxVolumes)
	}
	if count > MaxEntries {
		return fmt.Errorf("%d entries, at most %d allowed", count, MaxEntries)
	}
	return nil
}

func (m *Blocks) appendPayload(b []byte) ([]byte, error) {
	if err := checkBlocksHeader(m.Seq, m.Volume, len(m.Entries)); err != nil {
		return b, fmt.Errorf("encode Blocks: %w", err)
	}
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint16(b, m.Volume)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Entries)))
	for i := range m.Entries {
		e := &m.Entries[i]
		if err := checkEntry(e.Block, e.RawLen, e.Codec, len(e.Payload)); err != nil {
			return b, fmt.Errorf("encode Blocks: entry %d: %w", i, err)
		}
		b = appendEntryHeader(b, e.Block, e.RawLen, e.Codec, e.Hash, len(e.Payload))
		b = append(b, e.Payload...)
	}
	return b, nil
}

func appendEntryHeader(b []byte, block uint64, rawLen uint32, codec Codec, hash uint64, payloadLen int) []byte {
	b = binary.BigEndian.AppendUint64(b, block)
	b = binary.BigEndian.AppendUint32(b, rawLen)
	b = append(b, byte(codec))
	b = binary.BigEndian.AppendUint64(b, hash)
	return binary.BigEndian.AppendUint32(b, uint32(payloadLen))
}

// decodeBlocks decodes p into m, reusing m.Entries; payloads alias p.
func decodeBlocks(p []byte, m *Blocks) error {
	m.Entries = m.Entries[:0]
	if len(p) < BlocksOverhead {
		return protoErr("Blocks: payload of %d bytes is shorter than the %d-byte header", len(p), BlocksOverhead)
	}
	m.Seq = binary.BigEndian.Uint64(p[0:8])
	m.Volume = binary.BigEndian.Uint16(p[8:10])
	count := binary.BigEndian.Uint32(p[10:14])
	if err := checkBlocksHeader(m.Seq, m.Volume, int(min(count, MaxEntries+1))); err != nil {
		return protoErr("Blocks: %v", err)
	}
	if rest := len(p) - BlocksOverhead; uint64(count)*EntryOverhead > uint64(rest) {
		return protoErr("Blocks: %d entries cannot fit in the %d bytes that follow the header", count, rest)
	}
	if cap(m.Entries) < int(count) {
		m.Entries = make([]BlockEntry, 0, count)
	}
	off := BlocksOverhead
	for i := 0; i < int(count); i++ {
		if len(p)-off < EntryOverhead {
			return protoErr("Blocks: entry %d of %d: truncated header at offset %d", i, count, off)
		}
		h := p[off : off+EntryOverhead]
		e := BlockEntry{
			Block:  binary.BigEndian.Uint64(h[0:8]),
			RawLen: binary.BigEndian.Uint32(h[8:12]),
			Codec:  Codec(h[12]),
			Hash:   binary.BigEndian.Uint64(h[13:21]),
		}
		n := binary.BigEndian.Uint32(h[21:25])
		off += EntryOverhead
		if uint64(n) > uint64(len(p)-off) {
			return protoErr("Blocks: entry %d (block %d): payload of %d bytes runs past the frame's end (%d bytes left)", i, e.Block, n, len(p)-off)
		}
		if err := checkEntry(e.Block, e.RawLen, e.Codec, int(n)); err != nil {
			return protoErr("Blocks: entry %d: %v", i, err)
		}
		e.Payload = p[off : off+int(n) : off+int(n)]
		off += int(n)
		m.Entries = append(m.Entries, e)
	}
	if off != len(p) {
		return protoErr("Blocks: %d unexpected bytes after the last entry", len(p)-off)
	}
	return nil
}

// Batch builds a Blocks frame in one reusable buffer: entries are encoded as they are
// added, compressors can write straight into it (Reserve, then Commit), and Conn.WriteMsg
// sends it without copying. After its first growth a Batch allocates nothing.
// A Batch is not safe for concurrent use; reuse it after WriteMsg returns.
type Batch struct {
	buf   []byte // frame header, Blocks header, entries
	count int
	limit int // largest payload, at most MaxPayload
}

const batchStart = HeaderSize + BlocksOverhead

// NewBatch returns an empty batch whose payload will not grow beyond limit bytes
// (Welcome.MaxBatchBytes; 0 or more than MaxPayload means MaxPayload).
func NewBatch(limit int) *Batch {
	if limit <= 0 || limit > MaxPayload {
		limit = MaxPayload
	}
	b := &Batch{limit: max(limit, BlocksOverhead)}
	b.buf = make([]byte, batchStart, min(HeaderSize+b.limit+TrailerSize, 1<<20))
	return b
}

// Type returns TypeBlocks: a Batch is sent as a Blocks frame.
func (*Batch) Type() MsgType { return TypeBlocks }

// Reset empties the batch and starts a new one with the given sequence number and
// volume index.
func (b *Batch) Reset(seq uint64, volume uint16) {
	b.buf = b.buf[:batchStart]
	b.count = 0
	binary.BigEndian.PutUint64(b.buf[HeaderSize:], seq)
	binary.BigEndian.PutUint16(b.buf[HeaderSize+8:], volume)
	binary.BigEndian.PutUint32(b.buf[HeaderSize+10:], 0)
}

// Seq returns the batch's sequence number.
func (b *Batch) Seq() uint64 { return binary.BigEndian.Uint64(b.buf[HeaderSize:]) }

// Volume returns the batch's volume index.
func (b *Batch) Volume() uint16 { return binary.BigEndian.Uint16(b.buf[HeaderSize+8:]) }

// Len returns the number of entries.
func (b *Batch) Len() int { return b.count }

// PayloadLen returns the frame payload's size so far: what a Window counts.
func (b *Batch) PayloadLen() int { return len(b.buf) - HeaderSize }

// Fits reports whether one more entry with payloadLen bytes of payload fits.
func (b *Batch) Fits(payloadLen int) bool {
	return b.count < MaxEntries && payloadLen >= 0 && b.PayloadLen()+EntryOverhead+payloadLen <= b.limit
}

// Add appends an entry, copying payload into the batch.
func (b *Batch) Add(block uint64, rawLen uint32, codec Codec, hash uint64, payload []byte) error {
	if err := b.admit(block, rawLen, codec, len(payload)); err != nil {
		return err
	}
	b.ensure(EntryOverhead + len(payload))
	b.buf = appendEntryHeader(b.buf, block, rawLen, codec, hash, len(payload))
	b.buf = append(b.buf, payload...)
	b.added()
	return nil
}

// ensure makes room for n more bytes and the trailer, so frame never reallocates.
func (b *Batch) ensure(n int) {
	need := len(b.buf) + n + TrailerSize
	if need <= cap(b.buf) {
		return
	}
	grown := make([]byte, len(b.buf), max(need, min(2*cap(b.buf), HeaderSize+b.limit+TrailerSize)))
	copy(grown, b.buf)
	b.buf = grown
}

// Reserve returns n bytes of space for the next entry's payload, for a compressor to
// write into (s2.Encode(dst, raw) or zstd's EncodeAll(raw, dst[:0])). Commit the entry
// with the payload the compressor returned; if nothing is committed the space is unused.
func (b *Batch) Reserve(n int) ([]byte, error) {
	if !b.Fits(n) {
		return nil, fmt.Errorf("batch: %d more bytes do not fit (%d of %d used, %d entries)", n, b.PayloadLen(), b.limit, b.count)
	}
	b.ensure(EntryOverhead + n)
	start := len(b.buf) + EntryOverhead
	return b.buf[start : start+n : start+n], nil
}

// Commit appends an entry whose payload was written into the space Reserve returned
// (it then costs no copy); any other payload is copied, as by Add.
func (b *Batch) Commit(block uint64, rawLen uint32, codec Codec, hash uint64, payload []byte) error {
	start := len(b.buf) + EntryOverhead
	inPlace := len(payload) > 0 && start+len(payload) <= cap(b.buf) && &b.buf[:start+1][start] == &payload[0]
	if !inPlace {
		return b.Add(block, rawLen, codec, hash, payload)
	}
	if err := b.admit(block, rawLen, codec, len(payload)); err != nil {
		return err
	}
	b.buf = appendEntryHeader(b.buf, block, rawLen, codec, hash, len(payload))
	b.buf = b.buf[:start+len(payload)]
	b.added()
	return nil
}

func (b *Batch) admit(block uint64, rawLen uint32, codec Codec, payloadLen int) error {
	if err := checkEntry(block, rawLen, codec, payloadLen); err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	if !b.Fits(payloadLen) {
		return fmt.Errorf("batch: block %d (%d bytes) does not fit (%d of %d bytes used, %d entries)", block, payloadLen, b.PayloadLen(), b.limit, b.count)
	}
	return nil
}

func (b *Batch) added() {
	b.count++
	binary.BigEndian.PutUint32(b.buf[HeaderSize+10:], uint32(b.count))
}

func (b *Batch) appendPayload(dst []byte) ([]byte, error) {
	if err := checkBlocksHeader(b.Seq(), b.Volume(), b.count); err != nil {
		return dst, fmt.Errorf("encode Blocks: %w", err)
	}
	return append(dst, b.buf[HeaderSize:]...), nil
}

// frame completes the batch's frame (header and CRC32C) in place and returns it.
// The entries stay; the CRC is written past the batch's length.
func (b *Batch) frame() ([]byte, error) {
	if err := checkBlocksHeader(b.Seq(), b.Volume(), b.count); err != nil {
		return nil, fmt.Errorf("encode Blocks: %w", err)
	}
	putHeader(b.buf, TypeBlocks, len(b.buf)-HeaderSize)
	return binary.BigEndian.AppendUint32(b.buf, crc32c(b.buf)), nil
}
