package wire

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// TestEncoderAndDecoderRoundTrip: every codec carries zero, compressible and random
// blocks through a real Blocks frame; the decoder gives back the bytes, a zero block
// goes as a flag, an incompressible one raw, and a payload that does not decode to its
// hash is a protocol error.
func TestEncoderAndDecoderRoundTrip(t *testing.T) {
	const bs = 64 << 10
	rng := rand.NewChaCha8([32]byte{1})
	random := make([]byte, bs)
	_, _ = rng.Read(random)
	text := bytes.Repeat([]byte("lifeboat replicates blocks "), bs/27+1)[:bs]
	blocks := [][]byte{make([]byte, bs), text, random, text[:1234]}
	for _, compression := range []string{"", "s2", "zstd", "none"} {
		enc, err := NewEncoder(compression)
		if err != nil {
			t.Fatal(err)
		}
		b := NewBatch(MaxPayload)
		b.Reset(1, 0)
		for i, raw := range blocks {
			zero, err := enc.Encode(b, uint64(i), Hash(raw), raw)
			if err != nil || zero != (i == 0) {
				t.Fatalf("%q block %d: zero=%v, %v", compression, i, zero, err)
			}
		}
		enc.Close()
		frame, err := b.frame()
		if err != nil {
			t.Fatal(err)
		}
		m, err := DecodeFrame(frame)
		if err != nil {
			t.Fatal(err)
		}
		entries := m.(*Blocks).Entries
		want := map[string][]Codec{"": {CodecZero, CodecS2, CodecNone, CodecS2}, "s2": {CodecZero, CodecS2, CodecNone, CodecS2},
			"zstd": {CodecZero, CodecZstd, CodecNone, CodecZstd}, "none": {CodecZero, CodecNone, CodecNone, CodecNone}}[compression]
		dec := NewDecoder(bs)
		for i, e := range entries {
			if e.Codec != want[i] {
				t.Fatalf("%q block %d went as %s, want %s", compression, i, e.Codec, want[i])
			}
			if e.Codec == CodecZero {
				continue
			}
			got, err := dec.Decode(&e, make([]byte, bs))
			if err != nil || !bytes.Equal(got, blocks[i]) {
				t.Fatalf("%q block %d: decoded %d bytes, %v", compression, i, len(got), err)
			}
			bad := e
			bad.Hash++
			if _, err := dec.Decode(&bad, make([]byte, bs)); !errors.Is(err, ErrProtocol) {
				t.Fatalf("%q block %d with a wrong hash: %v", compression, i, err)
			}
		}
		dec.Close()
	}
	if _, err := NewEncoder("lz4"); err == nil {
		t.Fatal("an unknown compression was accepted")
	}
}

// TestDecoderBoundsWhatItDecodes: a block longer than the session's blocks, or a
// payload that expands past its declared length (a zstd frame of 1 MiB of zeros
// declared as 64 KiB), is refused as a protocol error.
func TestDecoderBoundsWhatItDecodes(t *testing.T) {
	const bs = 64 << 10
	dec := NewDecoder(bs)
	defer dec.Close()
	if _, err := dec.Decode(&BlockEntry{Block: 1, RawLen: bs + 1, Codec: CodecNone, Hash: Hash(make([]byte, bs+1)), Payload: make([]byte, bs+1)}, make([]byte, 2*bs)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("a block longer than the session's: %v", err)
	}
	enc, _ := NewEncoder("zstd")
	defer enc.Close()
	bomb := enc.zenc.EncodeAll(make([]byte, 1<<20), nil)
	if _, err := dec.Decode(&BlockEntry{Block: 1, RawLen: bs, Codec: CodecZstd, Hash: Hash(make([]byte, bs)), Payload: bomb}, make([]byte, bs)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("a zstd frame that expands past its block: %v", err)
	}
}

// TestOpeningBothSides: Open (the agent) and ReadHello + SendWelcome (the replicator)
// agree a session; a refusal reaches the agent as the replicator's *Error; a first frame
// that is not a Hello is a protocol error at the replicator.
func TestOpeningBothSides(t *testing.T) {
	hello := &Hello{Version: 1, SourceServerID: agentServerID, AgentVersion: "test", Tracker: "scan", TrackerGeneration: 1,
		Volumes: []Volume{{Name: "vda", SizeBytes: 1 << 30, BlockSize: 512}}}
	welcome := &Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 8 << 20, MaxBatchBytes: 1 << 20, Volumes: []Replica{{}}}
	pair := func(server func(c *Conn)) *Conn {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		go server(NewConn(b))
		return NewConn(a)
	}
	// Agreed.
	got := make(chan *Session, 1)
	c := pair(func(c *Conn) {
		h, err := ReadHello(c, 5*time.Second)
		if err != nil {
			t.Error(err)
			got <- nil
			return
		}
		s, err := SendWelcome(c, h, welcome)
		if err != nil {
			t.Error(err)
		}
		got <- s
	})
	w, s, err := Open(c, hello, 5*time.Second)
	if err != nil || w.BlockSize != welcome.BlockSize || s == nil || (<-got) == nil {
		t.Fatalf("open: %+v, %v", w, err)
	}
	// Refused.
	c = pair(func(c *Conn) {
		if _, err := ReadHello(c, 5*time.Second); err == nil {
			_ = c.WriteMsg(&Error{Code: CodeNotAuthorized, Message: "not here"})
			_ = c.Flush()
		}
	})
	var refused *Error
	if _, _, err := Open(c, hello, 5*time.Second); !errors.As(err, &refused) || refused.Code != CodeNotAuthorized {
		t.Fatalf("a refusal reached the agent as %v", err)
	}
	// A Welcome that does not answer the Hello (two replicas for one volume).
	c = pair(func(c *Conn) {
		if _, err := ReadHello(c, 5*time.Second); err == nil {
			_ = c.WriteMsg(&Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 8 << 20, MaxBatchBytes: 1 << 20, Volumes: []Replica{{}, {}}})
			_ = c.Flush()
		}
	})
	if _, _, err := Open(c, hello, 5*time.Second); !errors.Is(err, ErrProtocol) {
		t.Fatalf("a Welcome for two volumes: %v", err)
	}
	// Not a Hello first.
	done := make(chan error, 1)
	c = pair(func(c *Conn) {
		_, err := ReadHello(c, 5*time.Second)
		done <- err
	})
	_ = c.WriteMsg(&Ping{Nonce: 1})
	_ = c.Flush()
	if err := <-done; !errors.Is(err, ErrProtocol) {
		t.Fatalf("a Ping first: %v", err)
	}
}
