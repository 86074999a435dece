package wire

import (
	"errors"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

func TestNewSessionChecksTheWelcome(t *testing.T) {
	h := streamHello()
	if _, err := NewSession(h, streamWelcome()); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(w *Welcome){
		"newer version":     func(w *Welcome) { w.Version = 2 },
		"version 0":         func(w *Welcome) { w.Version = 0 },
		"volume count":      func(w *Welcome) { w.Volumes = append(w.Volumes, Replica{}) },
		"block size vs dev": func(w *Welcome) { h.Volumes[0].BlockSize = 8192 },
	}
	for name, change := range cases {
		h = streamHello()
		w := streamWelcome()
		change(w)
		if _, err := NewSession(h, w); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSessionCheck(t *testing.T) {
	full := func(block uint64) BlockEntry {
		return BlockEntry{Block: block, RawLen: streamBlockSize, Codec: CodecZero}
	}
	last := BlockEntry{Block: streamBlocks - 1, RawLen: streamSize % streamBlockSize, Codec: CodecZero}
	s, err := NewSession(streamHello(), streamWelcome())
	if err != nil {
		t.Fatal(err)
	}
	good := []Msg{
		&Ping{Nonce: 1}, // not sequenced: passes
		&Blocks{Seq: 1, Entries: []BlockEntry{full(0), last}},
		&Blocks{Seq: 2},
		&Marker{Seq: 3, ID: 1, VolumeSizes: []uint64{streamSize}},
		&Blocks{Seq: 4, Entries: []BlockEntry{full(streamBlocks - 2)}},
	}
	for i, m := range good {
		if err := s.Check(m); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	if s.LastSeq() != 4 {
		t.Fatalf("LastSeq %d", s.LastSeq())
	}
	bad := map[string]struct {
		m    Msg
		want string
	}{
		"gap":             {&Blocks{Seq: 6}, "want 5"},
		"repeat":          {&Blocks{Seq: 4}, "want 5"},
		"marker gap":      {&Marker{Seq: 7, VolumeSizes: []uint64{streamSize}}, "want 5"},
		"volume index":    {&Blocks{Seq: 5, Volume: 1}, "volume index 1"},
		"past the end":    {&Blocks{Seq: 5, Entries: []BlockEntry{full(streamBlocks)}}, "past the end"},
		"huge block":      {&Blocks{Seq: 5, Entries: []BlockEntry{full(^uint64(0))}}, "past the end"},
		"short block":     {&Blocks{Seq: 5, Entries: []BlockEntry{{Block: 3, RawLen: 100, Codec: CodecZero}}}, "raw length is 100, want 4096"},
		"last too long":   {&Blocks{Seq: 5, Entries: []BlockEntry{full(streamBlocks - 1)}}, "want 1234"},
		"marker sizes":    {&Marker{Seq: 5}, "0 volume sizes"},
		"marker resized":  {&Marker{Seq: 5, VolumeSizes: []uint64{streamSize + 1}}, "resize"},
		"marker resized2": {&Marker{Seq: 5, VolumeSizes: []uint64{streamSize - 1}}, "resize"},
	}
	for name, tc := range bad {
		s, _ := NewSession(streamHello(), streamWelcome())
		for _, m := range good {
			_ = s.Check(m)
		}
		err := s.Check(tc.m)
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrProtocol saying %q", name, err, tc.want)
		}
	}
}

func TestHelloCheckPeer(t *testing.T) {
	h := streamHello()
	if err := h.CheckPeer(agentIdentity()); err != nil {
		t.Fatal(err)
	}
	if err := h.CheckPeer(pki.Identity{Kind: pki.KindSourceServer, Account: testAccount, ID: "s-other"}); err == nil {
		t.Fatal("a Hello for another server passed")
	}
	if err := h.CheckPeer(pki.Identity{Kind: pki.KindReplicator, Account: testAccount, ID: agentServerID}); err == nil {
		t.Fatal("a replicator identity passed")
	}
}
