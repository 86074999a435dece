// Package wire is the agent → replicator protocol, version 1 (docs/wire.md is its
// specification): TLS 1.3 with mutual authentication over TCP, a stream of frames each
// made of a fixed 8-byte header (type, flags, payload length), a payload of explicit
// big-endian fields and a CRC32C trailer, and the messages a session exchanges: Hello
// and Welcome, Blocks batches, Markers that ask for a point-in-time snapshot, cumulative
// Acks of what is durable, Sealed, Ping/Pong, Error and Goodbye.
//
// The hot path is built for throughput: a Batch encodes block entries into one reusable
// buffer that is written as a frame without a copy, Conn buffers writes so small frames
// share a TLS write, and ReadMsg decodes a Blocks frame into a reused value whose
// payloads alias the read buffer. Window is the agent's side of flow control.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Frame layout and limits. Every frame is HeaderSize bytes of header, the payload, and
// TrailerSize bytes of CRC32C (Castagnoli) over header and payload.
const (
	HeaderSize  = 8
	TrailerSize = 4
	// MaxPayload is the largest payload a frame may carry.
	MaxPayload = 16 << 20
	// MaxFrame is the largest frame on the wire, header and trailer included.
	MaxFrame = HeaderSize + MaxPayload + TrailerSize
)

// MsgType is a frame's type byte.
type MsgType uint8

// The message types of protocol version 1.
const (
	TypeHello   MsgType = 0x01 // agent → replicator, first frame
	TypeWelcome MsgType = 0x02 // replicator → agent, answer to Hello
	TypeBlocks  MsgType = 0x03 // agent → replicator, sequenced
	TypeMarker  MsgType = 0x04 // agent → replicator, sequenced
	TypeAck     MsgType = 0x05 // replicator → agent
	TypeSealed  MsgType = 0x06 // replicator → agent
	TypePing    MsgType = 0x07 // either way
	TypePong    MsgType = 0x08 // either way, answer to Ping
	TypeError   MsgType = 0x09 // either way, then the sender closes
	TypeGoodbye MsgType = 0x0A // either way, clean close
)

func (t MsgType) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeWelcome:
		return "Welcome"
	case TypeBlocks:
		return "Blocks"
	case TypeMarker:
		return "Marker"
	case TypeAck:
		return "Ack"
	case TypeSealed:
		return "Sealed"
	case TypePing:
		return "Ping"
	case TypePong:
		return "Pong"
	case TypeError:
		return "Error"
	case TypeGoodbye:
		return "Goodbye"
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

func (t MsgType) known() bool { return t >= TypeHello && t <= TypeGoodbye }

// ErrProtocol is what every protocol violation matches with errors.Is: a malformed,
// oversized, corrupt or truncated frame, or a message that breaks the specification.
// The connection cannot be trusted after one and must be closed (after sending an
// Error frame with code PROTOCOL_ERROR where the writer still works).
var ErrProtocol = errors.New("wire protocol violation")

// ProtocolError says what exactly was wrong. It matches ErrProtocol.
type ProtocolError struct {
	Problem string
}

func (e *ProtocolError) Error() string { return "wire protocol violation: " + e.Problem }

// Unwrap makes errors.Is(err, ErrProtocol) true.
func (e *ProtocolError) Unwrap() error { return ErrProtocol }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Problem: fmt.Sprintf(format, args...)}
}

func crc32c(b []byte) uint32 {
	return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
}

// putHeader writes a frame header into h[:HeaderSize].
func putHeader(h []byte, t MsgType, payloadLen int) {
	h[0] = byte(t)
	h[1] = 0 // flags: none are defined in version 1
	h[2], h[3] = 0, 0
	binary.BigEndian.PutUint32(h[4:8], uint32(payloadLen))
}

// parseHeader checks a frame header and returns its type and payload length. limit is
// the largest payload the reader accepts (at most MaxPayload).
func parseHeader(h []byte, limit int) (MsgType, int, error) {
	t := MsgType(h[0])
	if !t.known() {
		return 0, 0, protoErr("unknown frame type 0x%02x", h[0])
	}
	if h[1] != 0 {
		return 0, 0, protoErr("%s frame has flags 0x%02x; version 1 defines none", t, h[1])
	}
	if h[2] != 0 || h[3] != 0 {
		return 0, 0, protoErr("%s frame has non-zero reserved header bytes", t)
	}
	n := binary.BigEndian.Uint32(h[4:8])
	if uint64(n) > uint64(limit) {
		return 0, 0, protoErr("%s frame payload of %d bytes exceeds the limit of %d bytes", t, n, limit)
	}
	return t, int(n), nil
}

// AppendFrame appends m as a complete frame (header, payload, CRC32C) to dst.
func AppendFrame(dst []byte, m Msg) ([]byte, error) {
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	dst, err := m.appendPayload(dst)
	if err != nil {
		return dst[:start], err
	}
	n := len(dst) - start - HeaderSize
	if n > MaxPayload {
		return dst[:start], fmt.Errorf("encode %s: payload of %d bytes exceeds the %d-byte frame limit", m.Type(), n, MaxPayload)
	}
	putHeader(dst[start:], m.Type(), n)
	return binary.BigEndian.AppendUint32(dst, crc32c(dst[start:])), nil
}

// DecodeFrame decodes the single complete frame in frame (no bytes may follow it).
// A Blocks message's payloads alias frame.
func DecodeFrame(frame []byte) (Msg, error) {
	if len(frame) < HeaderSize+TrailerSize {
		return nil, protoErr("frame of %d bytes is shorter than header and trailer", len(frame))
	}
	t, n, err := parseHeader(frame, MaxPayload)
	if err != nil {
		return nil, err
	}
	if want := HeaderSize + n + TrailerSize; len(frame) != want {
		return nil, protoErr("%s frame is %d bytes, its header says %d", t, len(frame), want)
	}
	if err := checkCRC(frame, t); err != nil {
		return nil, err
	}
	return decodePayload(t, frame[HeaderSize:HeaderSize+n], nil)
}

func checkCRC(frame []byte, t MsgType) error {
	body := frame[:len(frame)-TrailerSize]
	want := binary.BigEndian.Uint32(frame[len(body):])
	if got := crc32c(body); got != want {
		return protoErr("%s frame CRC32C is 0x%08x, its trailer says 0x%08x (corrupted in transit or by the sender)", t, got, want)
	}
	return nil
}
