package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestReadFrameRejectsMalformations gives ReadMsg every kind of broken frame: each must
// fail with ErrProtocol and an error that names the problem.
func TestReadFrameRejectsMalformations(t *testing.T) {
	good, err := AppendFrame(nil, &Ack{Seq: 5})
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	header := func(t MsgType, n uint32) []byte {
		h := make([]byte, HeaderSize)
		h[0] = byte(t)
		binary.BigEndian.PutUint32(h[4:], n)
		return h
	}
	cases := []struct {
		name, data, want string
	}{
		{"unknown type 0", string(mod(func(b []byte) []byte { b[0] = 0; return b })), "unknown frame type 0x00"},
		{"unknown type 0x0b", string(mod(func(b []byte) []byte { b[0] = 0x0b; return b })), "unknown frame type 0x0b"},
		{"unknown type 0xff", string(mod(func(b []byte) []byte { b[0] = 0xff; return b })), "unknown frame type 0xff"},
		{"flags", string(mod(func(b []byte) []byte { b[1] = 1; return b })), "flags 0x01"},
		{"reserved", string(mod(func(b []byte) []byte { b[3] = 1; return b })), "reserved header bytes"},
		{"oversize", string(header(TypeBlocks, MaxPayload+1)), "exceeds the limit"},
		{"oversize max uint32", string(header(TypeHello, ^uint32(0))), "exceeds the limit"},
		{"bad CRC in payload", string(mod(func(b []byte) []byte { b[HeaderSize+7] ^= 1; return b })), "CRC32C"},
		{"bad CRC in header", string(mod(func(b []byte) []byte { b[4] = 0; b[7] = 7; return b })), "CRC32C"},
		{"bad CRC trailer", string(mod(func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b })), "CRC32C"},
		{"truncated header", string(good[:5]), "middle of a frame header"},
		{"truncated payload", string(good[:HeaderSize+3]), "middle of a Ack frame"},
		{"truncated trailer", string(good[:len(good)-1]), "middle of a Ack frame"},
		{"payload too short for its type", string(frameOf(TypeAck, []byte{1, 2, 3})), "sequence: truncated"},
		{"payload too long for its type", string(frameOf(TypePing, make([]byte, 9))), "unexpected bytes"},
		{"goodbye with payload", string(frameOf(TypeGoodbye, []byte{0})), "unexpected bytes"},
		{"blocks count lies", string(frameOf(TypeBlocks, blocksHeader(1, 0, 3))), "3 entries cannot fit"},
		{"blocks huge count", string(frameOf(TypeBlocks, blocksHeader(1, 0, ^uint32(0)))), "entries, at most"},
		{"blocks payload past end", string(frameOf(TypeBlocks, append(blocksHeader(1, 0, 1), appendEntryHeader(nil, 0, 100, CodecNone, 0, 100)...))), "runs past the frame's end"},
		{"welcome bad boolean flags", string(frameOf(TypeWelcome, welcomeWithFlags(4))), "undefined bits"},
		{"hello bad utf8", string(frameOf(TypeHello, helloWithID("s-\xff"))), "printable ASCII"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newReaderConn(strings.NewReader(tc.data))
			m, err := c.ReadMsg()
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, %v; want ErrProtocol", m, err)
			}
			var pe *ProtocolError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			// The same bytes through DecodeFrame fail too (it sees them as one frame).
			if _, err := DecodeFrame([]byte(tc.data)); err == nil {
				t.Fatal("DecodeFrame accepted it")
			}
		})
	}
}

func blocksHeader(seq uint64, vol uint16, count uint32) []byte {
	b := binary.BigEndian.AppendUint64(nil, seq)
	b = binary.BigEndian.AppendUint16(b, vol)
	return binary.BigEndian.AppendUint32(b, count)
}

func welcomeWithFlags(f byte) []byte {
	w := &Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 1 << 20, MaxBatchBytes: 1 << 20, Volumes: []Replica{{}}}
	b, err := w.appendPayload(nil)
	if err != nil {
		panic(err)
	}
	b[len(b)-9] = f
	return b
}

func helloWithID(id string) []byte {
	b := binary.BigEndian.AppendUint16(nil, 1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	b = append(b, id...)
	return b
}

func TestReadMsgEndOfStream(t *testing.T) {
	if _, err := newReaderConn(strings.NewReader("")).ReadMsg(); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
	// A frame, then a clean end.
	f, _ := AppendFrame(nil, &Goodbye{})
	c := newReaderConn(bytes.NewReader(f))
	if m, err := c.ReadMsg(); err != nil || m.Type() != TypeGoodbye {
		t.Fatalf("%v, %v", m, err)
	}
	if _, err := c.ReadMsg(); err != io.EOF {
		t.Fatalf("after Goodbye: %v, want io.EOF", err)
	}
}

// TestReadMsgLimitsMemory checks that a header claiming a huge frame costs nothing until
// its bytes arrive, and that SetMaxPayload lowers the limit.
func TestReadMsgLimitsMemory(t *testing.T) {
	h := make([]byte, HeaderSize)
	putHeader(h, TypeBlocks, MaxPayload)
	c := newReaderConn(io.MultiReader(bytes.NewReader(h), bytes.NewReader(make([]byte, 1000))))
	if _, err := c.ReadMsg(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("truncated 16 MiB frame: %v", err)
	}
	if len(c.rbuf) > readBufMin {
		t.Fatalf("a header claiming 16 MiB made a %d-byte buffer before its bytes came", len(c.rbuf))
	}

	f, _ := AppendFrame(nil, &Error{Code: "X", Message: strings.Repeat("m", 200)})
	c = newReaderConn(bytes.NewReader(f))
	c.SetMaxPayload(100)
	if _, err := c.ReadMsg(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "limit of 100") {
		t.Fatalf("frame over SetMaxPayload: %v", err)
	}
}

// TestGoldenFrames pins the bytes of the examples in docs/wire.md §9, and the standard
// check values of CRC-32C and XXH3-64, so the specification and the code agree.
func TestGoldenFrames(t *testing.T) {
	if got := crc32c([]byte("123456789")); got != 0xe3069283 {
		t.Fatalf("CRC-32C check value %08x, want e3069283", got)
	}
	if got := Hash([]byte("abc")); got != 0x78af5f94892f3950 {
		t.Fatalf("XXH3-64(abc) = %016x", got)
	}
	golden := []struct {
		m   Msg
		hex string
	}{
		{&Ack{Seq: 1}, "05000000" + "00000008" + "0000000000000001" + "3c604a6b"},
		{&Blocks{Seq: 2, Volume: 0, Entries: []BlockEntry{
			{Block: 5, RawLen: 65536, Codec: CodecZero, Hash: Hash(make([]byte, 65536))},
			{Block: 6, RawLen: 3, Codec: CodecNone, Hash: Hash([]byte("abc")), Payload: []byte("abc")},
		}}, "03000000" + "00000043" +
			"0000000000000002" + "0000" + "00000002" +
			"0000000000000005" + "00010000" + "03" + "33b202d302b65caa" + "00000000" +
			"0000000000000006" + "00000003" + "00" + "78af5f94892f3950" + "00000003" + "616263" +
			"f0cb27c3"},
		{&Error{Code: "SHUTTING_DOWN", Message: "bye"}, "09000000" + "00000014" +
			"000d" + "5348555454494e475f444f574e" + "0003" + "627965" + "c6174c23"},
	}
	for _, g := range golden {
		f, err := AppendFrame(nil, g.m)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(f); got != g.hex {
			t.Fatalf("%v frame\n got %s\nwant %s", g.m.Type(), got, g.hex)
		}
	}
}
