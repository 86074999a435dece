package store

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec is how a chunk's plaintext is compressed. It is recorded in the first byte of
// every chunk's plaintext, so a repository can mix codecs (fast s2 for ingest, zstd
// for cold data or slow links) and change its default at any time.
type Codec uint8

// Codecs. The numbers are part of the repository format.
const (
	CodecNone Codec = 0
	CodecS2   Codec = 1
	CodecZstd Codec = 2
)

// ParseCodec maps a replication setting's compression name to a Codec.
func ParseCodec(name string) (Codec, error) {
	switch name {
	case "none":
		return CodecNone, nil
	case "s2", "":
		return CodecS2, nil
	case "zstd":
		return CodecZstd, nil
	}
	return 0, fmt.Errorf("compression %q is not known: use s2, zstd or none", name)
}

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// codecs holds the stateful (but concurrency-safe) zstd coders.
type codecs struct {
	zenc *zstd.Encoder
	zdec *zstd.Decoder
	max  int // the largest plaintext a chunk may decode to
}

func newCodecs(maxPlain int) (*codecs, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithZeroFrames(true), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(uint64(maxPlain)+1024))
	if err != nil {
		return nil, err
	}
	return &codecs{zenc: enc, zdec: dec, max: maxPlain}, nil
}

// compress appends codec byte || compressed form of src to dst. When compression
// does not make the data smaller, the chunk is stored uncompressed (CodecNone).
func (c *codecs) compress(dst []byte, codec Codec, src []byte) []byte {
	start := len(dst)
	dst = append(dst, byte(codec))
	switch codec {
	case CodecS2:
		need := s2.MaxEncodedLen(len(src))
		if cap(dst)-len(dst) < need {
			nd := make([]byte, len(dst), len(dst)+need)
			copy(nd, dst)
			dst = nd
		}
		enc := s2.Encode(dst[len(dst):len(dst)+need], src)
		dst = dst[:len(dst)+len(enc)]
	case CodecZstd:
		dst = c.zenc.EncodeAll(src, dst)
	}
	if codec == CodecNone || len(dst)-start-1 >= len(src) {
		dst = append(dst[:start], byte(CodecNone))
		dst = append(dst, src...)
	}
	return dst
}

var errCodec = errors.New("does not decompress")

// decompress appends the plaintext of codec byte || data to dst and checks that it has
// exactly rawLen bytes.
func (c *codecs) decompress(dst, src []byte, rawLen int) ([]byte, error) {
	if len(src) < 1 || rawLen > c.max || rawLen < 0 {
		return nil, errCodec
	}
	codec, data := Codec(src[0]), src[1:]
	start := len(dst)
	switch codec {
	case CodecNone:
		dst = append(dst, data...)
	case CodecS2:
		n, err := s2.DecodedLen(data)
		if err != nil || n != rawLen {
			return nil, errCodec
		}
		if cap(dst)-len(dst) < n {
			nd := make([]byte, len(dst), len(dst)+n)
			copy(nd, dst)
			dst = nd
		}
		out, err := s2.Decode(dst[len(dst):len(dst)+n], data)
		if err != nil || len(out) != n {
			return nil, errCodec
		}
		dst = dst[:len(dst)+n]
	case CodecZstd:
		var err error
		if dst, err = c.zdec.DecodeAll(data, dst); err != nil {
			return nil, errCodec
		}
	default:
		return nil, fmt.Errorf("%w: unknown codec %d", errCodec, codec)
	}
	if len(dst)-start != rawLen {
		return nil, fmt.Errorf("%w: %d bytes instead of %d", errCodec, len(dst)-start, rawLen)
	}
	return dst, nil
}
