package wire

import (
	"bytes"
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Encoder puts blocks into Blocks frames as docs/wire.md §5.3 says: an all-zero block as
// CodecZero with no payload, any other compressed with the session's codec when that
// makes it smaller, else raw. It is safe for concurrent use.
type Encoder struct {
	codec Codec // CodecS2, CodecZstd or CodecNone
	zenc  *zstd.Encoder
}

// NewEncoder returns an encoder for the compression of the replication settings: "s2"
// (also ""), "zstd" or "none".
func NewEncoder(compression string) (*Encoder, error) {
	e := &Encoder{}
	switch compression {
	case "", "s2":
		e.codec = CodecS2
	case "zstd":
		e.codec = CodecZstd
		zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("start the zstd encoder: %w", err)
		}
		e.zenc = zenc
	case "none":
		e.codec = CodecNone
	default:
		return nil, fmt.Errorf("compression %q is not s2, zstd or none", compression)
	}
	return e, nil
}

// Encode adds block, whose raw data is raw and hash Hash(raw), to b. It reports whether
// the block was all zeros (sent as a flag). The error is the batch's: full, or a block
// out of order.
func (e *Encoder) Encode(b *Batch, block, hash uint64, raw []byte) (zero bool, err error) {
	if isZero(raw) {
		return true, b.Commit(block, uint32(len(raw)), CodecZero, hash, nil)
	}
	switch e.codec {
	case CodecZstd:
		if dst, err := b.Reserve(len(raw) + 64); err == nil {
			if enc := e.zenc.EncodeAll(raw, dst[:0]); len(enc) < len(raw) {
				return false, b.Commit(block, uint32(len(raw)), CodecZstd, hash, enc)
			}
		}
	case CodecS2:
		if dst, err := b.Reserve(s2.MaxEncodedLen(len(raw))); err == nil {
			if enc := s2.Encode(dst, raw); len(enc) < len(raw) {
				return false, b.Commit(block, uint32(len(raw)), CodecS2, hash, enc)
			}
		}
	}
	return false, b.Add(block, uint32(len(raw)), CodecNone, hash, raw)
}

// Close releases the encoder's resources.
func (e *Encoder) Close() {
	if e.zenc != nil {
		_ = e.zenc.Close()
	}
}

var zeros = make([]byte, MaxBlockSize)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Decoder decodes the payloads of Blocks entries (docs/wire.md §5.3) and checks each
// against its entry's length and hash. It is not safe for concurrent use: a session's
// reader owns one.
type Decoder struct {
	maxRaw int
	zdec   *zstd.Decoder
}

// NewDecoder returns a decoder for a session of blockSize-byte blocks.
func NewDecoder(blockSize int) *Decoder { return &Decoder{maxRaw: blockSize} }

// Decode writes the raw data of e into raw (of at least e.RawLen bytes) and returns it,
// checked against the entry's length and hash. A CodecZero entry is the caller's to
// handle (its data is zeros; there is nothing to decode). Every failure wraps
// ErrProtocol: the agent sent something that does not decode to what it said.
func (d *Decoder) Decode(e *BlockEntry, raw []byte) ([]byte, error) {
	if int(e.RawLen) > len(raw) || int(e.RawLen) > d.maxRaw {
		return nil, fmt.Errorf("%w: block %d of %d bytes in a session of %d-byte blocks", ErrProtocol, e.Block, e.RawLen, d.maxRaw)
	}
	raw = raw[:e.RawLen]
	var err error
	switch e.Codec {
	case CodecNone:
		if len(e.Payload) != len(raw) {
			return nil, fmt.Errorf("%w: block %d has %d bytes of raw payload for %d", ErrProtocol, e.Block, len(e.Payload), len(raw))
		}
		copy(raw, e.Payload)
	case CodecS2:
		raw, err = s2.Decode(raw, e.Payload)
	case CodecZstd:
		if d.zdec == nil {
			if d.zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(d.maxRaw)+1024)); err != nil {
				return nil, fmt.Errorf("start the zstd decoder: %w", err)
			}
		}
		raw, err = d.zdec.DecodeAll(e.Payload, raw[:0])
	default:
		return nil, fmt.Errorf("%w: block %d has no payload to decode (%s)", ErrProtocol, e.Block, e.Codec)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: block %d does not decode: %v", ErrProtocol, e.Block, err)
	}
	if err := e.VerifyRaw(raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return raw, nil
}

// Close releases the decoder's resources.
func (d *Decoder) Close() {
	if d.zdec != nil {
		d.zdec.Close()
	}
}
