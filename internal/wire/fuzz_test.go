package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// seedFrames returns the frames of the sample messages small enough (4 KiB) for the
// fuzzer to mutate quickly.
func seedFrames(f *testing.F) map[string][]byte {
	out := map[string][]byte{}
	for name, m := range sampleMessages(f) {
		frame, err := AppendFrame(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		if len(frame) <= 4096 {
			out[name] = frame
		}
	}
	small := &Blocks{Seq: 9, Volume: 2, Entries: []BlockEntry{
		{Block: 1, RawLen: 4, Codec: CodecNone, Hash: 5, Payload: []byte("abcd")},
		{Block: 2, RawLen: 4096, Codec: CodecZero},
		{Block: 3, RawLen: 100, Codec: CodecS2, Hash: 6, Payload: []byte{1, 2}},
	}}
	frame, err := AppendFrame(nil, small)
	if err != nil {
		f.Fatal(err)
	}
	out["blocks small"] = frame
	return out
}

// FuzzReadFrame reads frames from any bytes: ReadMsg must end with io.EOF or an
// ErrProtocol, never panic nor grow its buffer past a frame, and every message it
// returns must encode back to exactly the bytes it was read from.
func FuzzReadFrame(f *testing.F) {
	var all []byte
	for _, frame := range seedFrames(f) {
		f.Add(frame)
		all = append(all, frame...)
		f.Add(frame[:len(frame)-1])
	}
	f.Add(all)
	f.Add([]byte{})
	f.Add(frameOf(TypeBlocks, blocksHeader(1, 0, 1<<20)))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := newReaderConn(bytes.NewReader(data))
		off := 0
		for {
			m, err := c.ReadMsg()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("ReadMsg failed with an error that is neither io.EOF nor ErrProtocol: %v", err)
				}
				break
			}
			frame, err := AppendFrame(nil, m)
			if err != nil {
				t.Fatalf("a decoded %v does not encode: %v", m.Type(), err)
			}
			if !bytes.HasPrefix(data[off:], frame) {
				t.Fatalf("a %v re-encodes to other bytes than it was read from", m.Type())
			}
			off += len(frame)
		}
		if len(c.rbuf) > MaxFrame {
			t.Fatalf("read buffer grew to %d bytes", len(c.rbuf))
		}
	})
}

// fuzzDecode checks a payload decoder: any bytes decode or fail with ErrProtocol, and
// what decodes encodes back to the same bytes (the encoding is canonical).
func fuzzDecode(f *testing.F, ty MsgType) {
	for _, frame := range seedFrames(f) {
		if MsgType(frame[0]) == ty {
			f.Add(frame[HeaderSize : len(frame)-TrailerSize])
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := decodePayload(ty, p, nil)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode failed with an error that is not ErrProtocol: %v", err)
			}
			return
		}
		if m.Type() != ty {
			t.Fatalf("decoding a %v payload gave a %v", ty, m.Type())
		}
		again, err := m.appendPayload(nil)
		if err != nil {
			t.Fatalf("the decoded %v does not encode: %v", ty, err)
		}
		if !bytes.Equal(again, p) {
			t.Fatalf("the decoded %v encodes to other bytes", ty)
		}
	})
}

func FuzzDecodeHello(f *testing.F)   { fuzzDecode(f, TypeHello) }
func FuzzDecodeWelcome(f *testing.F) { fuzzDecode(f, TypeWelcome) }
func FuzzDecodeBlocks(f *testing.F)  { fuzzDecode(f, TypeBlocks) }
func FuzzDecodeMarker(f *testing.F)  { fuzzDecode(f, TypeMarker) }
func FuzzDecodeAck(f *testing.F)     { fuzzDecode(f, TypeAck) }
func FuzzDecodeSealed(f *testing.F)  { fuzzDecode(f, TypeSealed) }
func FuzzDecodePing(f *testing.F)    { fuzzDecode(f, TypePing) }
func FuzzDecodePong(f *testing.F)    { fuzzDecode(f, TypePong) }
func FuzzDecodeError(f *testing.F)   { fuzzDecode(f, TypeError) }
func FuzzDecodeGoodbye(f *testing.F) { fuzzDecode(f, TypeGoodbye) }
