package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/volspec"
)

// Version is the protocol version this package speaks.
const Version = 2

// ALPN is the TLS application protocol both sides must negotiate.
const ALPN = "lifeboat/1"

// Limits of the messages, beyond the frame limit.
const (
	MaxVolumes     = volspec.MaxCount // volumes per source server in one session
	MinBlockSize   = 4 << 10          // smallest store block size a Welcome may set
	MaxBlockSize   = 4 << 20          // largest store block size, and largest raw length of an entry
	MinSectorSize  = 512              // smallest device block size a Hello may report
	MaxSectorSize  = 64 << 10
	BlocksOverhead = 14 // Blocks payload bytes before the first entry
	EntryOverhead  = 25 // payload bytes of one entry besides its data
)

// Limits of the volume sizes a Hello declares (docs/wire.md §8): the replicator sets up
// a replica of every volume, so an agent may not make it reserve more than this.
const (
	MaxVolumeBytes = volspec.MaxBytes       // one volume: 64 TiB, the staging store's limit too
	MaxServerBytes = volspec.MaxServerBytes // all of a Hello's volumes together: 256 TiB
)

// Msg is one protocol message. The set is closed: Hello, Welcome, Blocks, Batch (which
// encodes as Blocks), Marker, Ack, Sealed, Ping, Pong, Error and Goodbye.
type Msg interface {
	Type() MsgType
	appendPayload(dst []byte) ([]byte, error)
}

// Volume is one volume of a source server as its agent reports it in Hello.
type Volume struct {
	Name      string // a device's kernel name or an image file's base name (volspec.CheckName), unique in the Hello
	SizeBytes uint64 // at most MaxVolumeBytes, all of a Hello's together at most MaxServerBytes
	BlockSize uint32 // the device's logical block size (what O_DIRECT aligns to): a power of two, 512 to 65536
}

// Hello is the agent's first frame.
type Hello struct {
	Version        uint16 // highest protocol version the agent speaks (≥ 1)
	SourceServerID string // s-…; must equal the id in the agent's certificate
	AgentVersion   string
	Tracker        string // "ebpf" or "scan"
	// TrackerGeneration changes whenever the tracker lost continuity (agent restart,
	// reboot, lost events): blocks written while it was not tracking are unknown, so a
	// new generation means the agent rescans.
	TrackerGeneration uint64
	Volumes           []Volume // at most MaxVolumes; Blocks and Marker refer to them by index
}

// Replica is the replicator's view of one volume, in Hello's order.
type Replica struct {
	Exists    bool   // the store holds a replica of this volume
	Rescan    bool   // the replicator asks the agent to rescan the volume (replica repaired, operator asked)
	SizeBytes uint64 // the replica's size; 0 when it does not exist
}

// Welcome is the replicator's answer to Hello.
type Welcome struct {
	Version       uint16 // the version the session speaks: at most Hello's
	BlockSize     uint32 // the store's block size; the agent must send blocks of this size
	WindowBytes   uint64 // most payload bytes of sequenced frames sent and not acknowledged
	MaxBatchBytes uint32 // largest Blocks or Marker payload the replicator accepts
	Volumes       []Replica
}

// Marker asks the replicator to seal a PIT holding everything sent before it.
type Marker struct {
	Seq          uint64 // shares the session's sequence with Blocks
	ID           uint64 // the agent's marker id, echoed in Sealed
	TimeUnixNano int64  // the consistency point
	Level        consistency.Level
	FreezeMicros uint32   // how long the filesystems were frozen
	VolumeSizes  []uint64 // per volume, in Hello's order, at the point
	// GroupPoint names the consistency group point this marker is the member's part of
	// (gpit-…); empty for the server's own points. Sent only in sessions of version 2
	// or later: a version-1 Marker ends after the volume sizes.
	GroupPoint string
}

// Ack says everything up to and including Seq is durable.
type Ack struct {
	Seq uint64
}

// Sealed answers a Marker: a PIT id, or an error code and message when sealing failed.
type Sealed struct {
	MarkerID uint64
	PITID    string // pit-…; empty when Code is set
	Code     string // UPPER_CASE; empty on success
	Message  string
}

// Ping asks the peer for a Pong with the same nonce.
type Ping struct{ Nonce uint64 }

// Pong answers a Ping.
type Pong struct{ Nonce uint64 }

// Error is the last frame before its sender closes: an UPPER_CASE code and a message
// for the operator. It is also an error.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "peer reported " + e.Code
	}
	return "peer reported " + e.Code + ": " + e.Message
}

// Goodbye closes a session cleanly: its sender sends nothing after it.
type Goodbye struct{}

// The error codes of the protocol (docs/wire.md §5.8), in Error frames and, for a
// Marker's outcome, in Sealed frames. They are UPPER_CASE; a peer that gets a code it
// does not know treats it as CodeInternal.
const (
	CodeProtocol           = "PROTOCOL_ERROR"        // a malformed frame or a message out of place
	CodeUnsupportedVersion = "UNSUPPORTED_VERSION"   // no common protocol version
	CodeNotAuthorized      = "NOT_AUTHORIZED"        // Hello names another server than the certificate, or not assigned here
	CodeStagingFull        = "STAGING_STORAGE_FULL"  // the store cannot take more data
	CodeStagingError       = "STAGING_STORAGE_ERROR" // the store failed otherwise (or holds a rolled-back replica)
	CodeStopped            = "REPLICATION_STOPPED"   // an operator stopped replication of the server
	CodeSnapshots          = "SNAPSHOTS_FAILURE"     // in Sealed: the PIT could not be sealed or recorded
	CodeShuttingDown       = "SHUTTING_DOWN"         // the replicator is stopping; reconnect later
	CodeBusy               = "REPLICATOR_BUSY"       // the replicator has all the connections it may take
	CodeInternal           = "INTERNAL_ERROR"
)

func (*Hello) Type() MsgType   { return TypeHello }
func (*Welcome) Type() MsgType { return TypeWelcome }
func (*Marker) Type() MsgType  { return TypeMarker }
func (*Ack) Type() MsgType     { return TypeAck }
func (*Sealed) Type() MsgType  { return TypeSealed }
func (*Ping) Type() MsgType    { return TypePing }
func (*Pong) Type() MsgType    { return TypePong }
func (*Error) Type() MsgType   { return TypeError }
func (*Goodbye) Type() MsgType { return TypeGoodbye }

func isPow2(v uint64) bool { return v != 0 && bits.OnesCount64(v) == 1 }

func (m *Hello) appendPayload(b []byte) ([]byte, error) {
	if m.Version < 1 {
		return b, errors.New("encode Hello: version must be at least 1")
	}
	if err := checkVolumes(m.Volumes); err != nil {
		return b, fmt.Errorf("encode Hello: %w", err)
	}
	var err error
	b = binary.BigEndian.AppendUint16(b, m.Version)
	if b, err = appendStr(b, m.SourceServerID, "source server id", kindID()); err != nil {
		return b, fmt.Errorf("encode Hello: %w", err)
	}
	if b, err = appendStr(b, m.AgentVersion, "agent version", kindVersion()); err != nil {
		return b, fmt.Errorf("encode Hello: %w", err)
	}
	if b, err = appendStr(b, m.Tracker, "tracker", kindTracker()); err != nil {
		return b, fmt.Errorf("encode Hello: %w", err)
	}
	b = binary.BigEndian.AppendUint64(b, m.TrackerGeneration)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Volumes)))
	for i, v := range m.Volumes {
		if b, err = appendStr(b, v.Name, fmt.Sprintf("volume %d name", i), kindName()); err != nil {
			return b, fmt.Errorf("encode Hello: %w", err)
		}
		b = binary.BigEndian.AppendUint64(b, v.SizeBytes)
		b = binary.BigEndian.AppendUint32(b, v.BlockSize)
	}
	return b, nil
}

// checkVolumes checks a Hello's volumes: the bounds of docs/wire.md §5.1 and §8 on
// names, sizes and their sum (volspec), and the device block sizes.
func checkVolumes(vs []Volume) error {
	for i, v := range vs {
		if !isPow2(uint64(v.BlockSize)) || v.BlockSize < MinSectorSize || v.BlockSize > MaxSectorSize {
			return fmt.Errorf("volume %d block size %d is not a power of two from %d to %d", i, v.BlockSize, MinSectorSize, MaxSectorSize)
		}
	}
	return volspec.Check(len(vs), func(i int) (string, uint64) { return vs[i].Name, vs[i].SizeBytes })
}

func decodeHello(p []byte) (*Hello, error) {
	d := dec{msg: TypeHello, b: p}
	m := &Hello{Version: d.u16("version")}
	if d.err == nil && m.Version < 1 {
		d.fail("version 0 is not a protocol version")
	}
	m.SourceServerID = d.str("source server id", kindID())
	m.AgentVersion = d.str("agent version", kindVersion())
	m.Tracker = d.str("tracker", kindTracker())
	m.TrackerGeneration = d.u64("tracker generation")
	n := int(d.u16("volume count"))
	if d.err == nil && n > MaxVolumes {
		d.fail("%d volumes, at most %d allowed", n, MaxVolumes)
	}
	if d.err == nil && n > 0 {
		m.Volumes = make([]Volume, 0, min(n, d.remaining()/14))
	}
	for i := 0; i < n && d.err == nil; i++ {
		v := Volume{Name: d.str(fmt.Sprintf("volume %d name", i), kindName())}
		v.SizeBytes = d.u64(fmt.Sprintf("volume %d size", i))
		v.BlockSize = d.u32(fmt.Sprintf("volume %d block size", i))
		m.Volumes = append(m.Volumes, v)
	}
	if d.err == nil {
		if err := checkVolumes(m.Volumes); err != nil {
			d.fail("%v", err)
		}
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

const (
	replicaExists = 1 << 0
	replicaRescan = 1 << 1
)

func (m *Welcome) check() error {
	if m.Version < 1 {
		return errors.New("version 0 is not a protocol version")
	}
	if !isPow2(uint64(m.BlockSize)) || m.BlockSize < MinBlockSize || m.BlockSize > MaxBlockSize {
		return fmt.Errorf("block size %d is not a power of two from %d to %d", m.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if minBatch := uint64(BlocksOverhead + EntryOverhead + m.BlockSize); uint64(m.MaxBatchBytes) < minBatch || m.MaxBatchBytes > MaxPayload {
		return fmt.Errorf("max batch of %d bytes must hold one block (%d bytes) and be at most %d", m.MaxBatchBytes, minBatch, MaxPayload)
	}
	if m.WindowBytes < uint64(m.MaxBatchBytes) {
		return fmt.Errorf("window of %d bytes is smaller than the max batch of %d bytes: the agent could never send", m.WindowBytes, m.MaxBatchBytes)
	}
	if len(m.Volumes) > MaxVolumes {
		return fmt.Errorf("%d volumes, at most %d allowed", len(m.Volumes), MaxVolumes)
	}
	for i, v := range m.Volumes {
		if !v.Exists && v.SizeBytes != 0 {
			return fmt.Errorf("volume %d has no replica but a replica size of %d", i, v.SizeBytes)
		}
	}
	return nil
}

func (m *Welcome) appendPayload(b []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, fmt.Errorf("encode Welcome: %w", err)
	}
	b = binary.BigEndian.AppendUint16(b, m.Version)
	b = binary.BigEndian.AppendUint32(b, m.BlockSize)
	b = binary.BigEndian.AppendUint64(b, m.WindowBytes)
	b = binary.BigEndian.AppendUint32(b, m.MaxBatchBytes)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Volumes)))
	for _, v := range m.Volumes {
		var f byte
		if v.Exists {
			f |= replicaExists
		}
		if v.Rescan {
			f |= replicaRescan
		}
		b = append(b, f)
		b = binary.BigEndian.AppendUint64(b, v.SizeBytes)
	}
	return b, nil
}

func decodeWelcome(p []byte) (*Welcome, error) {
	d := dec{msg: TypeWelcome, b: p}
	m := &Welcome{
		Version:       d.u16("version"),
		BlockSize:     d.u32("block size"),
		WindowBytes:   d.u64("window"),
		MaxBatchBytes: d.u32("max batch"),
	}
	n := int(d.u16("volume count"))
	if d.err == nil && n > MaxVolumes {
		d.fail("%d volumes, at most %d allowed", n, MaxVolumes)
	}
	if d.err == nil && n > 0 {
		m.Volumes = make([]Replica, 0, min(n, d.remaining()/9))
	}
	for i := 0; i < n && d.err == nil; i++ {
		f := d.u8(fmt.Sprintf("volume %d flags", i))
		if f&^(replicaExists|replicaRescan) != 0 {
			d.fail("volume %d flags 0x%02x have undefined bits", i, f)
		}
		m.Volumes = append(m.Volumes, Replica{
			Exists:    f&replicaExists != 0,
			Rescan:    f&replicaRescan != 0,
			SizeBytes: d.u64(fmt.Sprintf("volume %d size", i)),
		})
	}
	if d.err == nil {
		if err := m.check(); err != nil {
			d.fail("%v", err)
		}
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

// PayloadLen is the size of the frame payload m encodes to: what a Window counts.
func (m *Marker) PayloadLen() int {
	n := 31 + 8*len(m.VolumeSizes)
	if m.GroupPoint != "" {
		n += 2 + len(m.GroupPoint)
	}
	return n
}

func (m *Marker) appendPayload(b []byte) ([]byte, error) {
	if m.Seq == 0 {
		return b, errors.New("encode Marker: sequence numbers start at 1")
	}
	if !m.Level.Valid() {
		return b, fmt.Errorf("encode Marker: unknown consistency %v", m.Level)
	}
	if len(m.VolumeSizes) > MaxVolumes {
		return b, fmt.Errorf("encode Marker: %d volume sizes, at most %d allowed", len(m.VolumeSizes), MaxVolumes)
	}
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = binary.BigEndian.AppendUint64(b, uint64(m.TimeUnixNano))
	b = append(b, byte(m.Level))
	b = binary.BigEndian.AppendUint32(b, m.FreezeMicros)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.VolumeSizes)))
	for _, s := range m.VolumeSizes {
		b = binary.BigEndian.AppendUint64(b, s)
	}
	if m.GroupPoint == "" {
		return b, nil
	}
	return appendStr(b, m.GroupPoint, "encode Marker: group point", kindID())
}

func decodeMarker(p []byte) (*Marker, error) {
	d := dec{msg: TypeMarker, b: p}
	m := &Marker{
		Seq:          d.u64("sequence"),
		ID:           d.u64("marker id"),
		TimeUnixNano: int64(d.u64("time")),
		Level:        consistency.Level(d.u8("level")),
		FreezeMicros: d.u32("freeze duration"),
	}
	if d.err == nil && m.Seq == 0 {
		d.fail("sequence 0 (sequence numbers start at 1)")
	}
	if d.err == nil && !m.Level.Valid() {
		d.fail("unknown consistency level %d", uint8(m.Level))
	}
	n := int(d.u16("volume count"))
	if d.err == nil && n > MaxVolumes {
		d.fail("%d volume sizes, at most %d allowed", n, MaxVolumes)
	}
	if d.err == nil && n > 0 && d.remaining() >= 8*n {
		m.VolumeSizes = make([]uint64, n)
		for i := range m.VolumeSizes {
			m.VolumeSizes[i] = d.u64("volume size")
		}
	} else if n > 0 {
		d.take(8*n, "volume sizes")
	}
	if d.err == nil && d.remaining() > 0 {
		m.GroupPoint = d.str("group point", kindID())
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Ack) appendPayload(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.Seq), nil
}

func decodeAck(p []byte) (*Ack, error) {
	d := dec{msg: TypeAck, b: p}
	m := &Ack{Seq: d.u64("sequence")}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Sealed) check() error {
	if (m.PITID == "") == (m.Code == "") {
		return errors.New("exactly one of PIT id and error code must be set")
	}
	if m.PITID != "" && m.Message != "" {
		return errors.New("a message goes with an error code, not with a PIT id")
	}
	return nil
}

func (m *Sealed) appendPayload(b []byte) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, fmt.Errorf("encode Sealed: %w", err)
	}
	var err error
	b = binary.BigEndian.AppendUint64(b, m.MarkerID)
	if b, err = appendStr(b, m.PITID, "PIT id", kindOptionalID()); err != nil {
		return b, fmt.Errorf("encode Sealed: %w", err)
	}
	if b, err = appendStr(b, m.Code, "error code", kindOptionalCode()); err != nil {
		return b, fmt.Errorf("encode Sealed: %w", err)
	}
	if b, err = appendStr(b, m.Message, "error message", kindMessage()); err != nil {
		return b, fmt.Errorf("encode Sealed: %w", err)
	}
	return b, nil
}

func decodeSealed(p []byte) (*Sealed, error) {
	d := dec{msg: TypeSealed, b: p}
	m := &Sealed{
		MarkerID: d.u64("marker id"),
		PITID:    d.str("PIT id", kindOptionalID()),
		Code:     d.str("error code", kindOptionalCode()),
		Message:  d.str("error message", kindMessage()),
	}
	if d.err == nil {
		if err := m.check(); err != nil {
			d.fail("%v", err)
		}
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Ping) appendPayload(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.Nonce), nil
}

func (m *Pong) appendPayload(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(b, m.Nonce), nil
}

func decodePing(p []byte) (*Ping, error) {
	d := dec{msg: TypePing, b: p}
	m := &Ping{Nonce: d.u64("nonce")}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

func decodePong(p []byte) (*Pong, error) {
	d := dec{msg: TypePong, b: p}
	m := &Pong{Nonce: d.u64("nonce")}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Error) appendPayload(b []byte) ([]byte, error) {
	var err error
	if b, err = appendStr(b, m.Code, "error code", kindCode()); err != nil {
		return b, fmt.Errorf("encode Error: %w", err)
	}
	if b, err = appendStr(b, m.Message, "error message", kindMessage()); err != nil {
		return b, fmt.Errorf("encode Error: %w", err)
	}
	return b, nil
}

func decodeError(p []byte) (*Error, error) {
	d := dec{msg: TypeError, b: p}
	m := &Error{Code: d.str("error code", kindCode()), Message: d.str("error message", kindMessage())}
	if err := d.done(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Goodbye) appendPayload(b []byte) ([]byte, error) { return b, nil }

func decodeGoodbye(p []byte) (*Goodbye, error) {
	d := dec{msg: TypeGoodbye, b: p}
	if err := d.done(); err != nil {
		return nil, err
	}
	return &Goodbye{}, nil
}

// decodePayload decodes a payload of type t. A Blocks payload is decoded into blocks
// when it is not nil (reusing its entries), and its payloads alias p.
func decodePayload(t MsgType, p []byte, blocks *Blocks) (Msg, error) {
	switch t {
	case TypeHello:
		return decodeHello(p)
	case TypeWelcome:
		return decodeWelcome(p)
	case TypeBlocks:
		if blocks == nil {
			blocks = new(Blocks)
		}
		if err := decodeBlocks(p, blocks); err != nil {
			return nil, err
		}
		return blocks, nil
	case TypeMarker:
		return decodeMarker(p)
	case TypeAck:
		return decodeAck(p)
	case TypeSealed:
		return decodeSealed(p)
	case TypePing:
		return decodePing(p)
	case TypePong:
		return decodePong(p)
	case TypeError:
		return decodeError(p)
	case TypeGoodbye:
		return decodeGoodbye(p)
	}
	return nil, protoErr("unknown frame type 0x%02x", uint8(t))
}
