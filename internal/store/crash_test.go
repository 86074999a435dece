package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/faulty"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

// TestCrashAtEveryWrite crashes the "process" at each object write of a workload in
// turn (with and without the write landing) and checks what a restart finds: every PIT
// whose seal returned is whole, the head holds every flushed write, no PIT is half
// visible, and verify finds no error.
func TestCrashAtEveryWrite(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 200 << 10
	const size = 48 * testBS
	for crashAt := 0; ; crashAt++ {
		for _, landed := range []bool{false, true} {
			inner, _ := file.Open(t.TempDir())
			fb := faulty.Wrap(inner)
			mk, _ := NewMasterKey()
			r, err := Init(ctx, fb, mk, opts)
			if err != nil {
				t.Fatal(err)
			}
			fb.ResetCalls()
			fb.Add(faulty.Rule{Op: faulty.OpPut, Skip: crashAt, Crash: true, AfterEffect: landed})

			type sealedPIT struct {
				id string
				m  model
			}
			var sealed []sealedPIT
			m, flushed := model{}, model{}
			crashed := func() bool { return fb.Crashed() }
			func() {
				h, err := r.OpenHead(ctx, "s-k", "vda", size, HeadOptions{})
				if err != nil {
					return
				}
				for round := 0; round < 4; round++ {
					blocks := map[uint64]uint32{}
					for b := uint64(round); b < 48; b += 3 {
						blocks[b] = uint32(round%3 + 1)
					}
					var bl []Block
					for b, v := range blocks {
						bl = append(bl, Block{Index: b, Data: content(b, v)})
					}
					if h.WriteBlocks(ctx, bl) != nil {
						return
					}
					for b, v := range blocks {
						m[b] = v
					}
					if h.Flush(ctx) != nil {
						return
					}
					flushed = m.clone()
					if round%2 == 1 {
						id := fmt.Sprintf("pit-%d", round)
						if _, err := r.SealPIT(ctx, SealRequest{ID: id, Server: "s-k", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
							return
						}
						sealed = append(sealed, sealedPIT{id, m.clone()})
					}
				}
			}()
			if !crashed() {
				if landed {
					r.Close()
					return // the workload made fewer writes than crashAt: every point was tried
				}
				r.Close()
				continue
			}
			// Restart on what the crash left.
			r2, err := Open(ctx, inner, mk, opts)
			if err != nil {
				t.Fatalf("crash at write %d (landed %v): reopen: %v", crashAt, landed, err)
			}
			pits, err := r2.ListPITs(ctx, "s-k")
			if err != nil {
				t.Fatal(err)
			}
			if len(pits) < len(sealed) || len(pits) > len(sealed)+1 {
				t.Fatalf("crash at write %d: %d PITs visible, %d sealed", crashAt, len(pits), len(sealed))
			}
			for _, s := range sealed {
				p, err := r2.LoadPIT(ctx, "s-k", s.id)
				if err != nil {
					t.Fatalf("crash at write %d: sealed PIT %s: %v", crashAt, s.id, err)
				}
				checkPITBlocks(t, r2, p, s.m)
			}
			h, err := r2.OpenHead(ctx, "s-k", "vda", size, HeadOptions{})
			if err != nil {
				t.Fatalf("crash at write %d (landed %v): reopen head: %v", crashAt, landed, err)
			}
			p, err := r2.SealPIT(ctx, SealRequest{ID: "pit-after", Server: "s-k", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
			if err != nil {
				t.Fatal(err)
			}
			// The head holds every flushed write; a write that was in flight may or may
			// not be there, but only as a whole block of the version written.
			v, _ := r2.OpenVolume(ctx, p, "vda")
			for b := uint64(0); b < 48; b++ {
				got, err := v.ReadBlock(ctx, b, nil)
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != string(content(b, flushed[b])) && string(got) != string(content(b, m[b])) {
					t.Fatalf("crash at write %d (landed %v): block %d is neither the flushed nor the written version", crashAt, landed, b)
				}
			}
			rep, err := r2.Verify(ctx, VerifyOptions{ReadData: true})
			if err != nil || !rep.OK() {
				t.Fatalf("crash at write %d: verify: %v %v", crashAt, err, rep.Errors)
			}
			r2.Close()
			r.Close()
		}
	}
}

func checkPITBlocks(t *testing.T, r *Repo, p PIT, m model) {
	t.Helper()
	ctx := context.Background()
	v, err := r.OpenVolume(ctx, p, "vda")
	if err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < v.Blocks(); b++ {
		got, err := v.ReadBlock(ctx, b, nil)
		if err != nil || string(got) != string(content(b, m[b])) {
			t.Fatalf("PIT %s block %d is not version %d (%v)", p.ID, b, m[b], err)
		}
	}
}

// newFaultyRepo makes a repository on a local store whose faults the test chooses.
func newFaultyRepo(t *testing.T) (*Repo, *faulty.Backend) {
	t.Helper()
	inner, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fb := faulty.Wrap(inner)
	mk, _ := NewMasterKey()
	r, err := Init(context.Background(), fb, mk, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, fb
}

func TestBackendErrorsKeepTheirKind(t *testing.T) {
	ctx := context.Background()
	r, fb := newFaultyRepo(t)
	h, _ := r.OpenHead(ctx, "s-e", "vda", 8*testBS, HeadOptions{})
	write(t, h, model{}, map[uint64]uint32{1: 1})
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The staging disk fills up: the flush fails with ErrFull (so the replicator reports
	// STAGING_STORAGE_FULL), the head must be reopened, and what was flushed is intact.
	fb.Add(faulty.Rule{Op: faulty.OpPut, Kind: backend.ErrFull})
	write(t, h, model{}, map[uint64]uint32{2: 1})
	err := h.Flush(ctx)
	if !errors.Is(err, backend.ErrFull) {
		t.Fatalf("flush on a full store: %v, want ErrFull", err)
	}
	if err := h.WriteBlocks(ctx, nil); !errors.Is(err, ErrHeadBroken) {
		t.Fatalf("a write after a failed flush: %v, want ErrHeadBroken", err)
	}
	fb.ClearRules()
	h2, err := r.OpenHead(ctx, "s-e", "vda", 8*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	write(t, h2, model{}, map[uint64]uint32{2: 1})
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-e", Server: "s-e", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h2}})
	if err != nil {
		t.Fatal(err)
	}
	checkPITBlocks(t, r, p, model{1: 1, 2: 1})
	// An unreachable store is ErrUnavailable, a transient kind.
	fb.Add(faulty.Rule{Op: faulty.OpGet, Kind: backend.ErrUnavailable})
	if _, err := r.LoadPIT(ctx, "s-e", "pit-e"); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("load with the store unavailable: %v", err)
	}
}

// TestFlushesCompleteInOrder: flushes started one after another complete in order,
// whoever waits; a failed flush fails the ones after it and breaks the head, so no
// journal after a missing one is ever written.
func TestFlushesCompleteInOrder(t *testing.T) {
	ctx := context.Background()
	r, fb := newFaultyRepo(t)
	h, _ := r.OpenHead(ctx, "s-o", "vda", 16*testBS, HeadOptions{})
	var flushes []*Flusher
	for b := uint64(0); b < 4; b++ {
		write(t, h, model{}, map[uint64]uint32{b: 1})
		flushes = append(flushes, h.StartFlush())
	}
	// Waiting for the last makes all of them durable.
	if err := flushes[3].Wait(ctx); err != nil {
		t.Fatal(err)
	}
	var journals int
	fb.List(ctx, "heads/", func(oi backend.ObjectInfo) error {
		if strings.Contains(oi.Name, "/j-") {
			journals++
		}
		return nil
	})
	if journals != 4 {
		t.Fatalf("%d journals after the last of 4 flushes, want 4", journals)
	}
	// The next journal write fails: that flush and the one after it fail, the head breaks.
	fb.Add(faulty.Rule{Op: faulty.OpPut, Prefix: "heads/", Times: 1, Kind: backend.ErrUnavailable})
	write(t, h, model{}, map[uint64]uint32{5: 1})
	f1 := h.StartFlush()
	write(t, h, model{}, map[uint64]uint32{6: 1})
	f2 := h.StartFlush()
	if err := f2.Wait(ctx); err == nil {
		t.Fatal("a flush after a failed one succeeded")
	}
	if err := f1.Wait(ctx); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("the failed flush: %v", err)
	}
	if err := h.WriteBlocks(ctx, nil); !errors.Is(err, ErrHeadBroken) {
		t.Fatalf("after a failed flush the head says %v, want ErrHeadBroken", err)
	}
	// Reopened, the head holds the four durable flushes and nothing of the failed ones.
	h2, err := r.OpenHead(ctx, "s-o", "vda", 16*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-o", Server: "s-o", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h2}})
	if err != nil {
		t.Fatal(err)
	}
	checkPITBlocks(t, r, p, model{0: 1, 1: 1, 2: 1, 3: 1})
}
