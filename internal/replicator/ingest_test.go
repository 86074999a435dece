package replicator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/faulty"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// untilSealed reads what the ingest sends up to the Sealed of a Marker, and returns
// the highest sequence acknowledged before it and the Sealed.
func (s *testSession) untilSealed() (uint64, *wire.Sealed) {
	s.t.Helper()
	var seq uint64
	for {
		switch m := s.expect().(type) {
		case *wire.Ack:
			seq = max(seq, m.Seq)
		case *wire.Sealed:
			return seq, m
		default:
			s.t.Fatalf("unexpected %v before the Sealed", m)
		}
	}
}

// TestIngestSealsAPITOfTheBlocksBeforeItsMarker: a Marker after Blocks of two volumes
// is acknowledged, then sealed into a PIT that holds exactly those blocks — not one
// written after the Marker — and the control plane records the PIT with its manifest
// digest, its repository and the head versions it was sealed from.
func TestIngestSealsAPITOfTheBlocksBeforeItsMarker(t *testing.T) {
	ctx := context.Background()
	e := newIngestEnv(t, store.Options{}, 8, 4)
	vda := map[uint64][]byte{0: content(true), 2: content(false), 7: make([]byte, testBlockSize)}
	vdb := map[uint64][]byte{1: content(true)}
	s := e.start(ctx)
	s.send(e.blocks(1, 0, vda))
	s.send(e.blocks(2, 1, vdb))
	mark := e.marker(3, 42)
	s.send(mark)
	seq, sealed := s.untilSealed()
	if seq != 3 || sealed.MarkerID != 42 || sealed.PITID == "" || sealed.Code != "" {
		t.Fatalf("acknowledged up to %d before %+v; want the Marker (3) acknowledged, then a PIT", seq, sealed)
	}
	after := map[uint64][]byte{2: content(false)}
	s.send(e.blocks(4, 0, after))
	if msgs := s.end(true); acked(msgs) != 4 || s.werr != nil || s.rerr != nil {
		t.Fatalf("the ingest ended with %v, %v after acknowledging %d of 4", s.werr, s.rerr, acked(msgs))
	}

	pit, err := e.repo.LoadPIT(ctx, e.server, sealed.PITID)
	if err != nil {
		t.Fatal(err)
	}
	e.checkVolume(ctx, pit, 0, vda)
	e.checkVolume(ctx, pit, 1, vdb)
	if pit.Labels["freezeMicros"] != "7" || pit.Level != consistency.Crash || !pit.Time.Equal(time.Unix(0, mark.TimeUnixNano)) {
		t.Errorf("the PIT's level, time or labels are not the Marker's: %+v", pit)
	}
	reqs := e.rec.recorded()
	if len(reqs) != 1 {
		t.Fatalf("%d PITs recorded, want 1", len(reqs))
	}
	req := reqs[0]
	if req.ID != pit.ID || req.ManifestDigest == "" || req.ManifestDigest != pit.Digest || req.StagingStoreID != e.repo.ID() ||
		req.Level != pit.Level || !req.Time.Equal(pit.Time) || len(req.Volumes) != len(pit.Volumes) {
		t.Fatalf("the control plane recorded %+v for PIT %+v (store %s)", req, pit, e.repo.ID())
	}
	for i, v := range pit.Volumes {
		rv := req.Volumes[i]
		if rv.Name != v.Name || rv.HeadVersion == 0 || rv.HeadVersion != v.HeadVersion || rv.Ref != v.Ref() || rv.SizeBytes != v.Size {
			t.Errorf("volume %s recorded as %+v, sealed as %+v", v.Name, rv, v)
		}
	}
	// The block written after the Marker is in the store, in the next PIT only.
	vda[2] = after[2]
	e.checkVolume(ctx, e.sealPIT(ctx), 0, vda)
}

// TestIngestRefusesFramesOutOfSequence: a batch sent twice, a batch or Marker that skips
// a sequence number, and a block that does not decode to its hash are protocol
// violations: the ingest stops reading, what came before is acknowledged, and nothing
// of the refused frame is written.
func TestIngestRefusesFramesOutOfSequence(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		frame func(e *ingestEnv) wire.Msg
	}{
		{"a duplicate batch", func(e *ingestEnv) wire.Msg {
			return e.blocks(1, 0, map[uint64][]byte{0: content(false), 1: content(false)})
		}},
		{"a batch out of order", func(e *ingestEnv) wire.Msg {
			return e.blocks(3, 0, map[uint64][]byte{0: content(false), 1: content(false)})
		}},
		{"a marker out of order", func(e *ingestEnv) wire.Msg { return e.marker(5, 1) }},
		{"a block that does not decode to its hash", func(e *ingestEnv) wire.Msg {
			m := e.blocks(2, 0, map[uint64][]byte{0: content(true), 1: content(false)})
			m.Entries[1].Hash++
			return m
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newIngestEnv(t, store.Options{}, 4)
			first := map[uint64][]byte{0: content(false)}
			s := e.start(ctx)
			s.send(e.blocks(1, 0, first))
			s.send(tc.frame(e))
			msgs := s.end(true)
			if !errors.Is(s.rerr, wire.ErrProtocol) || s.werr != nil {
				t.Fatalf("the ingest ended with %v, %v; want a protocol violation", s.werr, s.rerr)
			}
			if acked(msgs) != 1 {
				t.Fatalf("acknowledged up to %d, want 1 (the frame before the violation)", acked(msgs))
			}
			e.checkVolume(ctx, e.sealPIT(ctx), 0, first)
		})
	}
}

// TestIngestStorageFailureAcknowledgesOnlyWhatIsDurable: the staging storage fails
// while a batch is written (a pack of its blocks, or the journal of its flush): the
// ingest ends with STAGING_STORAGE_FULL or STAGING_STORAGE_ERROR and acknowledges
// nothing after what was durable before; once the storage works again, a new session
// on the same store takes the batch sent again, and the store holds both.
func TestIngestStorageFailureAcknowledgesOnlyWhatIsDurable(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		prefix string
		kind   error
		code   string
	}{
		{"a pack fails mid-batch", "data/", backend.ErrFull, wire.CodeStagingFull},
		{"the journal of a flush fails", "heads/", backend.ErrUnavailable, wire.CodeStagingError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Packs of three blocks: the failing batch fills several.
			e := newIngestEnv(t, store.Options{PackSize: 3 * testBlockSize}, 16)
			first, second := map[uint64][]byte{}, map[uint64][]byte{}
			for i := range uint64(8) {
				first[i], second[8+i] = content(false), content(i%2 == 0)
			}
			s := e.start(ctx)
			s.send(e.blocks(1, 0, first))
			s.expectAck(1)
			e.be.FailAfter(faulty.OpPut, tc.prefix, 0, tc.kind)
			s.send(e.blocks(2, 0, second))
			msgs := s.end(false)
			if s.werr == nil || s.werr.Code != tc.code {
				t.Fatalf("the ingest ended with %v (read: %v), want %s", s.werr, s.rerr, tc.code)
			}
			if n := acked(msgs); n != 0 {
				t.Fatalf("Ack %d after the storage failed: the batch is not durable", n)
			}
			e.be.ClearRules()
			// The agent sends again what was not acknowledged, in a new session.
			s = e.start(ctx)
			s.send(e.blocks(1, 0, second))
			s.expectAck(1)
			s.end(true)
			all := maps.Clone(first)
			maps.Copy(all, second)
			e.checkVolume(ctx, e.sealPIT(ctx), 0, all)
		})
	}
}

// TestIngestSealFailureIsReportedAndTheSessionGoesOn: a PIT that cannot be stored is
// answered with a Sealed carrying SNAPSHOTS_FAILURE; the session goes on.
func TestIngestSealFailureIsReportedAndTheSessionGoesOn(t *testing.T) {
	ctx := context.Background()
	e := newIngestEnv(t, store.Options{}, 4)
	s := e.start(ctx)
	s.send(e.blocks(1, 0, map[uint64][]byte{1: content(true)}))
	e.be.FailOnce(faulty.OpPut, "snapshots/", 0, backend.ErrUnavailable)
	s.send(e.marker(2, 9))
	if seq, sealed := s.untilSealed(); seq != 2 || sealed.Code != wire.CodeSnapshots || sealed.PITID != "" || sealed.MarkerID != 9 ||
		!strings.Contains(sealed.Message, "sealing the PIT failed") {
		t.Fatalf("acknowledged %d, then %+v; want the Marker acknowledged and a SNAPSHOTS_FAILURE", seq, sealed)
	}
	s.send(e.blocks(3, 0, map[uint64][]byte{2: content(false)}))
	if msgs := s.end(true); acked(msgs) != 3 || s.werr != nil || len(e.rec.recorded()) != 0 {
		t.Fatalf("after a failed seal: acknowledged %d of 3, ended with %v, %d PITs recorded", acked(msgs), s.werr, len(e.rec.recorded()))
	}
}

// TestIngestRecordsAPITAgainButNotPastItsContext: recording a sealed PIT with the
// control plane is tried again after a failure, four times at most, and a stopping
// replicator (its context ended) does not wait to try again.
func TestIngestRecordsAPITAgainButNotPastItsContext(t *testing.T) {
	for _, tc := range []struct {
		name      string
		retry     time.Duration
		failCalls int  // the first calls that fail (0: all)
		cancel    bool // the first call ends the ingest's context
		wantCalls int
		wantPIT   bool
	}{
		{"two failures, then recorded", time.Millisecond, 2, false, 3, true},
		{"four failures", time.Millisecond, 0, false, recordAttempts, false},
		{"the replicator stops while the control plane fails", time.Hour, 0, true, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			e := newIngestEnv(t, store.Options{}, 4)
			e.rec.fail = func(_ context.Context, call int) error {
				if tc.cancel {
					cancel()
				}
				if tc.failCalls == 0 || call <= tc.failCalls {
					return fmt.Errorf("control plane down (call %d)", call)
				}
				return nil
			}
			s := e.start(ctx)
			s.in.recordRetry = tc.retry
			s.send(e.marker(1, 5))
			_, sealed := s.untilSealed()
			if got := sealed.PITID != ""; got != tc.wantPIT || (!got && !strings.Contains(sealed.Message, "could not record")) {
				t.Fatalf("Sealed %+v; want a PIT: %v", sealed, tc.wantPIT)
			}
			if !tc.cancel {
				s.end(true)
			} else {
				s.end(false)
			}
			e.rec.mu.Lock()
			defer e.rec.mu.Unlock()
			if e.rec.calls != tc.wantCalls {
				t.Fatalf("the control plane was asked %d times, want %d", e.rec.calls, tc.wantCalls)
			}
		})
	}
}
