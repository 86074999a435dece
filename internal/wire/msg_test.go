package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// sampleMessages returns one or more values of every message type, including empty
// lists and the largest values the limits allow.
func sampleMessages(t testing.TB) map[string]Msg {
	t.Helper()
	// As many volumes as allowed, with the longest names, adding up to the largest total.
	maxVolumes := make([]Volume, MaxVolumes)
	for i := range maxVolumes {
		name := fmt.Sprintf("disk-%04d.", i)
		maxVolumes[i] = Volume{Name: name + strings.Repeat("x", MaxNameLen-len(name)), SizeBytes: MaxServerBytes / MaxVolumes, BlockSize: MaxSectorSize}
	}
	replicas := make([]Replica, MaxVolumes)
	sizes := make([]uint64, MaxVolumes)
	for i := range replicas {
		replicas[i] = Replica{Exists: i%2 == 0, Rescan: i%3 == 0}
		if replicas[i].Exists {
			replicas[i].SizeBytes = uint64(i) << 30
		}
		sizes[i] = ^uint64(0) - uint64(i)
	}
	// The largest Blocks frame: entries of raw data filling MaxPayload exactly.
	var big Blocks
	big.Seq, big.Volume = ^uint64(0), MaxVolumes-1
	data := bytes.Repeat([]byte("0123456789abcdef"), MaxBlockSize/16)
	left := MaxPayload - BlocksOverhead
	for blk := uint64(0); left > 0; blk++ {
		n := min(left-EntryOverhead, MaxBlockSize)
		big.Entries = append(big.Entries, BlockEntry{Block: blk, RawLen: uint32(n), Codec: CodecNone, Hash: Hash(data[:n]), Payload: data[:n]})
		left -= EntryOverhead + n
	}
	zeros := Blocks{Seq: 1, Entries: make([]BlockEntry, MaxEntries)}
	for i := range zeros.Entries {
		zeros.Entries[i] = BlockEntry{Block: uint64(i), RawLen: 64 << 10, Codec: CodecZero, Hash: 1}
	}
	raw := bytes.Repeat([]byte("lifeboat "), 7282)[:64<<10]
	comp := s2.Encode(nil, raw)
	return map[string]Msg{
		"hello": &Hello{Version: 1, SourceServerID: "s-0123456789abcdef0", AgentVersion: "v0.1.0", Tracker: "ebpf", TrackerGeneration: 7,
			Volumes: []Volume{{Name: "vda", SizeBytes: 10 << 30, BlockSize: 512}, {Name: "db.img", SizeBytes: 12345, BlockSize: 4096}}},
		"hello largest volume": &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "scan",
			Volumes: []Volume{{Name: "nvme0n1", SizeBytes: MaxVolumeBytes, BlockSize: 4096}}},
		"hello no volumes": &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "scan"},
		"hello max": &Hello{Version: ^uint16(0), SourceServerID: "s-" + strings.Repeat("x", MaxIDLen-2), AgentVersion: strings.Repeat("v", MaxVersionLen),
			Tracker: strings.Repeat("t", MaxTrackerLen), TrackerGeneration: ^uint64(0), Volumes: maxVolumes},
		"welcome": &Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 64 << 20, MaxBatchBytes: 4 << 20,
			Volumes: []Replica{{Exists: true, SizeBytes: 10 << 30}, {}}},
		"welcome no volumes": &Welcome{Version: 1, BlockSize: MinBlockSize, WindowBytes: BlocksOverhead + EntryOverhead + MinBlockSize, MaxBatchBytes: BlocksOverhead + EntryOverhead + MinBlockSize},
		"welcome max":        &Welcome{Version: ^uint16(0), BlockSize: MaxBlockSize, WindowBytes: ^uint64(0), MaxBatchBytes: MaxPayload, Volumes: replicas},
		"blocks": &Blocks{Seq: 1, Volume: 1, Entries: []BlockEntry{
			{Block: 0, RawLen: 64 << 10, Codec: CodecNone, Hash: Hash(raw), Payload: raw},
			{Block: 1, RawLen: 64 << 10, Codec: CodecS2, Hash: Hash(raw), Payload: comp},
			{Block: 2, RawLen: 64 << 10, Codec: CodecZero, Hash: Hash(make([]byte, 64<<10))},
			{Block: ^uint64(0), RawLen: 3, Codec: CodecZstd, Hash: 0, Payload: []byte{1, 2, 3}},
		}},
		"blocks empty":       &Blocks{Seq: 2, Volume: 0},
		"blocks max payload": &big,
		"blocks max entries": &zeros,
		"marker":             &Marker{Seq: 3, ID: 42, TimeUnixNano: 1_700_000_000_123_456_789, Level: consistency.Filesystem, FreezeMicros: 1800, VolumeSizes: []uint64{10 << 30, 12345}},
		"marker of a group":  &Marker{Seq: 4, ID: 43, TimeUnixNano: 1, Level: consistency.Filesystem, VolumeSizes: []uint64{1 << 20}, GroupPoint: "gpit-0123456789abcdef"},
		"marker no volumes":  &Marker{Seq: 1, ID: 0, TimeUnixNano: -1, Level: consistency.None},
		"marker max":         &Marker{Seq: ^uint64(0), ID: ^uint64(0), TimeUnixNano: -1 << 63, Level: consistency.Crash, FreezeMicros: ^uint32(0), VolumeSizes: sizes},
		"ack":                &Ack{Seq: 99},
		"ack zero":           &Ack{},
		"sealed":             &Sealed{MarkerID: 42, PITID: "pit-0123456789abcdef0"},
		"sealed failed":      &Sealed{MarkerID: 43, Code: CodeSnapshots, Message: "staging store: disk full"},
		"sealed failed max":  &Sealed{MarkerID: ^uint64(0), Code: "A" + strings.Repeat("_", MaxCodeLen-1), Message: strings.Repeat("ü", MaxMessageLen/2)},
		"ping":               &Ping{Nonce: 0xdeadbeefcafef00d},
		"pong":               &Pong{Nonce: 1},
		"error":              &Error{Code: CodeNotAuthorized, Message: "Hello names s-2, certificate is for s-1"},
		"error no message":   &Error{Code: CodeShuttingDown},
		"goodbye":            &Goodbye{},
	}
}

func TestRoundTripEveryMessage(t *testing.T) {
	msgs := sampleMessages(t)
	seen := map[MsgType]bool{}
	var stream []byte
	var order []Msg
	for name, m := range msgs {
		seen[m.Type()] = true
		frame, err := AppendFrame(nil, m)
		if err != nil {
			t.Fatalf("%s: encode: %v", name, err)
		}
		if len(frame) > MaxFrame {
			t.Fatalf("%s: frame of %d bytes is over MaxFrame", name, len(frame))
		}
		got, err := DecodeFrame(frame)
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(m)) {
			t.Fatalf("%s: round trip changed the message:\n got %.300v\nwant %.300v", name, got, m)
		}
		again, err := AppendFrame(nil, got)
		if err != nil || !bytes.Equal(again, frame) {
			t.Fatalf("%s: re-encoding the decoded message gave other bytes (%v)", name, err)
		}
		stream = append(stream, frame...)
		order = append(order, m)
	}
	for ty := TypeHello; ty <= TypeGoodbye; ty++ {
		if !seen[ty] {
			t.Fatalf("no sample of %v", ty)
		}
	}
	// The same frames back to back through a Conn's buffered reader, read in small and
	// odd-sized pieces.
	c := newReaderConn(&chunkReader{data: stream, chunk: 7777})
	for i, want := range order {
		got, err := c.ReadMsg()
		if err != nil {
			t.Fatalf("frame %d (%v): %v", i, want.Type(), err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(want)) {
			t.Fatalf("frame %d (%v) differs after a buffered read", i, want.Type())
		}
	}
	if _, err := c.ReadMsg(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
	if len(c.rbuf) > MaxFrame {
		t.Fatalf("read buffer grew to %d bytes, more than a frame", len(c.rbuf))
	}
}

// normalize makes nil and empty slices compare equal.
func normalize(m Msg) Msg {
	switch m := m.(type) {
	case *Hello:
		c := *m
		if len(c.Volumes) == 0 {
			c.Volumes = nil
		}
		return &c
	case *Welcome:
		c := *m
		if len(c.Volumes) == 0 {
			c.Volumes = nil
		}
		return &c
	case *Marker:
		c := *m
		if len(c.VolumeSizes) == 0 {
			c.VolumeSizes = nil
		}
		return &c
	case *Blocks:
		c := *m
		c.Entries = nil
		for _, e := range m.Entries {
			if len(e.Payload) == 0 {
				e.Payload = nil
			}
			c.Entries = append(c.Entries, e)
		}
		return &c
	}
	return m
}

// chunkReader returns data in reads of at most chunk bytes.
type chunkReader struct {
	data  []byte
	chunk int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.chunk)], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestEncodeRefusesWhatDecodeWouldRefuse(t *testing.T) {
	long := strings.Repeat("x", 5000)
	cases := map[string]Msg{
		"hello version 0":        &Hello{SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf"},
		"hello no id":            &Hello{Version: 1, AgentVersion: "v", Tracker: "ebpf"},
		"hello id with space":    &Hello{Version: 1, SourceServerID: "s 1", AgentVersion: "v", Tracker: "ebpf"},
		"hello long version":     &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: long, Tracker: "ebpf"},
		"hello tracker case":     &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "EBPF"},
		"hello too many volumes": &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: make([]Volume, MaxVolumes+1)},
		"hello sector size":      &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{{Name: "a", BlockSize: 1000}}},
		"hello duplicate volume": &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{{Name: "a", BlockSize: 512}, {Name: "a", BlockSize: 512}}},
		"hello volume name NUL":  &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{{Name: "a\x00", BlockSize: 512}}},
		"hello volume bad utf8":  &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{{Name: "\xff", BlockSize: 512}}},
		"hello volume path":      &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{{Name: "/dev/vda", BlockSize: 512}}},
		"hello volume dot-dot":   &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{{Name: "..", BlockSize: 512}}},
		"hello volume too large": &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{{Name: "a", SizeBytes: MaxVolumeBytes + 1, BlockSize: 512}}},
		"hello volumes too large": &Hello{Version: 1, SourceServerID: "s-1", AgentVersion: "v", Tracker: "ebpf", Volumes: []Volume{
			{Name: "a", SizeBytes: MaxVolumeBytes, BlockSize: 512}, {Name: "b", SizeBytes: MaxVolumeBytes, BlockSize: 512},
			{Name: "c", SizeBytes: MaxVolumeBytes, BlockSize: 512}, {Name: "d", SizeBytes: MaxVolumeBytes, BlockSize: 512}, {Name: "e", SizeBytes: 1, BlockSize: 512}}},
		"welcome block size":      &Welcome{Version: 1, BlockSize: 3 << 10, WindowBytes: 1 << 20, MaxBatchBytes: 1 << 20},
		"welcome small batch":     &Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 1 << 20, MaxBatchBytes: 64 << 10},
		"welcome small window":    &Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 1 << 19, MaxBatchBytes: 1 << 20},
		"welcome size no replica": &Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 1 << 20, MaxBatchBytes: 1 << 20, Volumes: []Replica{{SizeBytes: 1}}},
		"blocks seq 0":            &Blocks{},
		"blocks volume index":     &Blocks{Seq: 1, Volume: MaxVolumes},
		"blocks raw len 0":        &Blocks{Seq: 1, Entries: []BlockEntry{{Codec: CodecZero}}},
		"blocks raw too long":     &Blocks{Seq: 1, Entries: []BlockEntry{{RawLen: MaxBlockSize + 1, Codec: CodecZero}}},
		"blocks none short":       &Blocks{Seq: 1, Entries: []BlockEntry{{RawLen: 4, Codec: CodecNone, Payload: []byte{1}}}},
		"blocks s2 empty":         &Blocks{Seq: 1, Entries: []BlockEntry{{RawLen: 4, Codec: CodecS2}}},
		"blocks s2 larger":        &Blocks{Seq: 1, Entries: []BlockEntry{{RawLen: 1, Codec: CodecS2, Payload: []byte{1, 2}}}},
		"blocks zero payload":     &Blocks{Seq: 1, Entries: []BlockEntry{{RawLen: 4, Codec: CodecZero, Payload: []byte{0}}}},
		"blocks codec":            &Blocks{Seq: 1, Entries: []BlockEntry{{RawLen: 1, Codec: 4, Payload: []byte{0}}}},
		"blocks too many":         &Blocks{Seq: 1, Entries: make([]BlockEntry, MaxEntries+1)},
		"marker seq 0":            &Marker{ID: 1},
		"marker level":            &Marker{Seq: 1, Level: 3},
		"marker too many":         &Marker{Seq: 1, VolumeSizes: make([]uint64, MaxVolumes+1)},
		"sealed neither":          &Sealed{MarkerID: 1},
		"sealed both":             &Sealed{MarkerID: 1, PITID: "pit-1", Code: "X"},
		"sealed pit and message":  &Sealed{MarkerID: 1, PITID: "pit-1", Message: "ok"},
		"sealed code case":        &Sealed{MarkerID: 1, Code: "disk_full"},
		"error no code":           &Error{Message: "x"},
		"error code digit first":  &Error{Code: "1X"},
		"error long message":      &Error{Code: "X", Message: long},
	}
	for name, m := range cases {
		if _, err := AppendFrame(nil, m); err == nil {
			t.Errorf("%s: encoded without error", name)
		}
	}
	// A payload over the frame limit is refused.
	data := make([]byte, MaxBlockSize)
	var huge Blocks
	huge.Seq = 1
	for i := range MaxPayload/MaxBlockSize + 1 {
		huge.Entries = append(huge.Entries, BlockEntry{Block: uint64(i), RawLen: MaxBlockSize, Codec: CodecNone, Payload: data})
	}
	if _, err := AppendFrame(nil, &huge); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("oversize Blocks: %v", err)
	}
}

// TestDecodeRejectsEveryTruncation feeds every proper prefix of every sample payload,
// and the payload with a byte appended, in a frame with a correct CRC: each must be
// refused with ErrProtocol.
func TestDecodeRejectsEveryTruncation(t *testing.T) {
	for name, m := range sampleMessages(t) {
		if strings.Contains(name, "max") {
			continue // quadratic in the payload size; the small samples cover every field
		}
		frame, err := AppendFrame(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		payload := frame[HeaderSize : len(frame)-TrailerSize]
		for n := 0; n < len(payload); n += 1 + n/64 {
			if mk, ok := m.(*Marker); ok && mk.GroupPoint != "" && n == 31+8*len(mk.VolumeSizes) {
				continue // a Marker without its optional group point
			}
			if _, err := DecodeFrame(frameOf(m.Type(), payload[:n])); !errors.Is(err, ErrProtocol) {
				t.Fatalf("%s cut to %d of %d payload bytes: %v, want ErrProtocol", name, n, len(payload), err)
			}
		}
		longer := append(append([]byte(nil), payload...), 0)
		if _, err := DecodeFrame(frameOf(m.Type(), longer)); !errors.Is(err, ErrProtocol) ||
			!strings.Contains(err.Error(), "unexpected bytes") && !strings.Contains(err.Error(), "group point") {
			t.Fatalf("%s with a trailing byte: %v", name, err)
		}
	}
}

// frameOf wraps any payload in a valid header and CRC.
func frameOf(t MsgType, payload []byte) []byte {
	f := make([]byte, HeaderSize, HeaderSize+len(payload)+TrailerSize)
	putHeader(f, t, len(payload))
	f = append(f, payload...)
	return binary.BigEndian.AppendUint32(f, crc32c(f))
}

func TestBatchEncodesAsBlocks(t *testing.T) {
	raw := bytes.Repeat([]byte("abcdefgh"), 8192)
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(i*7919 + i>>8)
	}
	b := NewBatch(1 << 20)
	for round := range 3 { // reuse after Reset
		b.Reset(uint64(10+round), 3)
		want := &Blocks{Seq: uint64(10 + round), Volume: 3}
		// In place: compress straight into the batch.
		dst, err := b.Reserve(s2.MaxEncodedLen(len(raw)))
		if err != nil {
			t.Fatal(err)
		}
		enc := s2.Encode(dst, raw)
		if &enc[0] != &dst[0] {
			t.Fatal("s2 did not encode into the reserved space")
		}
		if err := b.Commit(5, uint32(len(raw)), CodecS2, Hash(raw), enc); err != nil {
			t.Fatal(err)
		}
		want.Entries = append(want.Entries, BlockEntry{Block: 5, RawLen: uint32(len(raw)), Codec: CodecS2, Hash: Hash(raw), Payload: append([]byte(nil), enc...)})
		// Copied.
		if err := b.Add(6, uint32(len(random)), CodecNone, Hash(random), random); err != nil {
			t.Fatal(err)
		}
		want.Entries = append(want.Entries, BlockEntry{Block: 6, RawLen: uint32(len(random)), Codec: CodecNone, Hash: Hash(random), Payload: random})
		if err := b.Add(7, 4096, CodecZero, 9, nil); err != nil {
			t.Fatal(err)
		}
		want.Entries = append(want.Entries, BlockEntry{Block: 7, RawLen: 4096, Codec: CodecZero, Hash: 9})
		// A Commit of a payload from elsewhere is copied.
		if _, err := b.Reserve(100); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(8, 3, CodecNone, 1, []byte("xyz")); err != nil {
			t.Fatal(err)
		}
		want.Entries = append(want.Entries, BlockEntry{Block: 8, RawLen: 3, Codec: CodecNone, Hash: 1, Payload: []byte("xyz")})

		if b.Len() != 4 || b.PayloadLen() != want.PayloadLen() {
			t.Fatalf("batch has %d entries, %d bytes; want 4, %d", b.Len(), b.PayloadLen(), want.PayloadLen())
		}
		fromBatch, err := AppendFrame(nil, b)
		if err != nil {
			t.Fatal(err)
		}
		fromBlocks, err := AppendFrame(nil, want)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fromBatch, fromBlocks) {
			t.Fatal("a Batch and the equal Blocks encode differently")
		}
		direct, err := b.frame()
		if err != nil || !bytes.Equal(direct, fromBatch) {
			t.Fatalf("the in-place frame differs from AppendFrame (%v)", err)
		}
	}
	// Refusals: bad entries, a full batch, an unset sequence.
	if err := b.Add(1, 10, CodecNone, 0, []byte("short")); err == nil {
		t.Fatal("Add accepted a payload that does not match codec none")
	}
	small := NewBatch(BlocksOverhead + EntryOverhead + 10)
	small.Reset(1, 0)
	if !small.Fits(10) || small.Fits(11) {
		t.Fatal("Fits is wrong at the limit")
	}
	if err := small.Add(1, 11, CodecNone, 0, make([]byte, 11)); err == nil {
		t.Fatal("Add went past the batch limit")
	}
	if _, err := small.Reserve(11); err == nil {
		t.Fatal("Reserve went past the batch limit")
	}
	if err := small.Add(1, 10, CodecNone, 0, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := AppendFrame(nil, NewBatch(0)); err == nil {
		t.Fatal("a batch never Reset (sequence 0) was encoded")
	}
}

func TestBatchAndReadMsgDoNotAllocate(t *testing.T) {
	raw := bytes.Repeat([]byte{7}, 64<<10)
	b := NewBatch(1 << 20)
	var frames []byte
	build := func() {
		b.Reset(1, 0)
		for i := range 15 {
			if err := b.Add(uint64(i), uint32(len(raw)), CodecNone, 0, raw); err != nil {
				t.Fatal(err)
			}
		}
		f, err := b.frame()
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames[:0], f...)
	}
	build()
	if a := testing.AllocsPerRun(50, build); a != 0 {
		t.Fatalf("building a 15-block batch allocates %v times", a)
	}
	stream := bytes.Repeat(frames, 4)
	r := bytes.NewReader(stream)
	c := newReaderConn(r)
	read := func() {
		for range 4 {
			m, err := c.ReadMsg()
			if err != nil {
				t.Fatal(err)
			}
			if len(m.(*Blocks).Entries) != 15 {
				t.Fatal("lost entries")
			}
		}
		r.Reset(stream)
	}
	read()
	if a := testing.AllocsPerRun(50, read); a != 0 {
		t.Fatalf("reading 4 Blocks frames allocates %v times", a)
	}
}
