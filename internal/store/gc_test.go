package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// TestGCWhileWriting runs garbage collections, in this process and from a second
// "process" (another Repo on the same backend), while writers write, seal PITs and
// drop old ones; writers keep rewriting earlier contents, so they deduplicate against
// chunks a GC has condemned. Afterwards every surviving PIT must read back exactly,
// and verify with data must find nothing wrong.
func TestGCWhileWriting(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 256 << 10
	r, be, mk := newTestRepo(t, opts)
	other := reopen(t, be, mk, opts) // a second process's view of the repository

	const nblocks = 96
	const writers = 3
	type sealed struct {
		pit PIT
		m   model
	}
	var mu sync.Mutex
	var kept []sealed
	var wg sync.WaitGroup
	errs := make(chan error, writers+2)
	stop := make(chan struct{})
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			server := fmt.Sprintf("s-g%d", w)
			h, err := r.OpenHead(ctx, server, "vda", nblocks*testBS, HeadOptions{})
			if err != nil {
				errs <- err
				return
			}
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			m := model{}
			var mine []sealed
			for round := 0; round < 40; round++ {
				var bl []Block
				for i := 0; i < 12; i++ {
					b := uint64(rng.IntN(nblocks))
					v := uint32(rng.IntN(4)) // versions recur: old contents come back
					bl = append(bl, Block{Index: b, Data: content(b, v)})
					m[b] = v
				}
				if err := h.WriteBlocks(ctx, bl); err != nil {
					errs <- fmt.Errorf("writer %d round %d: %w", w, round, err)
					return
				}
				if err := h.Flush(ctx); err != nil {
					errs <- fmt.Errorf("writer %d flush %d: %w", w, round, err)
					return
				}
				if round%4 == 3 {
					p, err := r.SealPIT(ctx, SealRequest{ID: fmt.Sprintf("pit-%d", round), Server: server,
						Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
					if err != nil {
						errs <- fmt.Errorf("writer %d seal %d: %w", w, round, err)
						return
					}
					mine = append(mine, sealed{p, m.clone()})
					// Keep the last two PITs: the rest becomes garbage.
					for len(mine) > 2 {
						if err := r.DeletePIT(ctx, server, mine[0].pit.ID); err != nil {
							errs <- err
							return
						}
						mine = mine[1:]
					}
				}
				time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
			}
			mu.Lock()
			kept = append(kept, mine...)
			mu.Unlock()
		}()
	}
	var dead, runs atomic.Int64
	for _, repo := range []*Repo{r, other} {
		go func() {
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				st, err := repo.GC(ctx, GCOptions{})
				if isLockBusy(err) {
					time.Sleep(10 * time.Millisecond) // the other "process" collects now
					continue
				}
				if err != nil {
					errs <- fmt.Errorf("gc: %w", err)
					return
				}
				dead.Add(int64(st.DeadChunks))
				runs.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	// One last collection with everything quiet, then check every PIT.
	if _, err := r.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d collections removed %d dead chunks", runs.Load(), dead.Load())
	if dead.Load() == 0 {
		t.Fatal("the collections removed nothing: the test did not exercise GC")
	}
	fresh := reopen(t, be, mk, opts)
	for _, s := range kept {
		p, err := fresh.LoadPIT(ctx, s.pit.Server, s.pit.ID)
		if err != nil {
			t.Fatal(err)
		}
		checkPIT(t, fresh, p, "vda", nblocks*testBS, s.m)
	}
	rep, err := fresh.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("verify after GC: %v %v", err, rep.Errors)
	}
	if rep.PITs != len(kept) {
		t.Fatalf("verify saw %d PITs, want %d", rep.PITs, len(kept))
	}
}

func isLockBusy(err error) bool {
	return err != nil && contains(err.Error(), "another garbage collection")
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestGCFreesSpaceAndRepacks(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 512 << 10
	r, be, _ := newTestRepo(t, opts)
	h, _ := r.OpenHead(ctx, "s-f", "vda", 64*testBS, HeadOptions{})
	all := map[uint64]uint32{}
	for b := uint64(0); b < 64; b++ {
		all[b] = 1
	}
	write(t, h, model{}, all)
	if _, err := r.SealPIT(ctx, SealRequest{ID: "pit-1", Server: "s-f", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
		t.Fatal(err)
	}
	m := model{}
	for b := uint64(0); b < 64; b++ {
		m[b] = 1
	}
	// Overwrite half the blocks, seal, drop the first PIT: half the data is garbage. The
	// blocks land in packs in no fixed order, so a few packs hold less than the repack
	// threshold of garbage and keep it: at least half of the 2 MiB must be freed.
	half := map[uint64]uint32{}
	for b := uint64(0); b < 64; b += 2 {
		half[b] = 3
	}
	write(t, h, m, half)
	p2, err := r.SealPIT(ctx, SealRequest{ID: "pit-2", Server: "s-f", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.DeletePIT(ctx, "s-f", "pit-1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(opts.GCGrace) // chunks younger than the grace period are never condemned
	before := dirSize(t, be)
	dry, err := r.GC(ctx, GCOptions{DryRun: true})
	if err != nil || dry.DeadChunks < 32 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if dirSize(t, be) != before {
		t.Fatal("a dry run changed the repository")
	}
	gcSteps := &stepLog{}
	st, err := r.GC(ctx, GCOptions{Progress: gcSteps.report})
	if err != nil {
		t.Fatal(err)
	}
	after := dirSize(t, be)
	if st.DeadChunks < 32 || st.RepackedPacks+st.DeletedPacks == 0 || after > before-16*testBS {
		t.Fatalf("gc %+v freed %d bytes of %d", st, before-after, before)
	}
	checkPIT(t, r, p2, "vda", 64*testBS, m)
	verifySteps := &stepLog{}
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true, Progress: verifySteps.report})
	if err != nil || !rep.OK() || len(rep.Warnings) != 0 {
		t.Fatalf("verify: %v %v %v", err, rep.Errors, rep.Warnings)
	}

	// Each reported its steps in order, and how far each went.
	gcSteps.expect(t, GCStepRead, GCStepMark, GCStepGrace, GCStepMarkAgain, GCStepRepack, GCStepIndex, GCStepRemove)
	if d, n := gcSteps.last(GCStepGrace); d != 1 || n != 1 {
		t.Fatalf("the grace period of 400 ms ended at %d of %d seconds, want 1 of 1", d, n)
	}
	if d, n := gcSteps.last(GCStepRepack); d != st.RepackedPacks || n != st.RepackedPacks {
		t.Fatalf("repacking ended at %d of %d packs, want %d of %d", d, n, st.RepackedPacks, st.RepackedPacks)
	}
	if d, n := gcSteps.last(GCStepRemove); d == 0 || d != n || d < st.DeletedPacks+st.RepackedPacks {
		t.Fatalf("removing ended at %d of %d objects, want all of at least %d packs", d, n, st.DeletedPacks+st.RepackedPacks)
	}
	verifySteps.expect(t, "index", "packs", "references", "rollbacks")
	if d, n := verifySteps.most("packs"); d != rep.Packs || n != rep.Packs {
		t.Fatalf("verify checked %d of %d packs, want %d", d, n, rep.Packs)
	}
	if d, _ := verifySteps.most("references"); d < 1 {
		t.Fatalf("verify reported %d tree nodes walked", d)
	}
}

// stepLog records what an operation reports of its steps; safe for concurrent use.
type stepLog struct {
	mu      sync.Mutex
	reports []stepReport
}

type stepReport struct {
	step        string
	done, total int
}

func (l *stepLog) report(step string, done, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reports = append(l.reports, stepReport{step, done, total})
}

// expect checks the steps reported, in order, repeats left out.
func (l *stepLog) expect(t *testing.T, steps ...string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var got []string
	for _, r := range l.reports {
		if len(got) == 0 || got[len(got)-1] != r.step {
			got = append(got, r.step)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(steps) {
		t.Fatalf("steps reported %q, want %q", got, steps)
	}
}

// last is the last report of step.
func (l *stepLog) last(step string) (done, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reports {
		if r.step == step {
			done, total = r.done, r.total
		}
	}
	return done, total
}

// most is the report of step that went furthest.
func (l *stepLog) most(step string) (done, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reports {
		if r.step == step && r.done >= done {
			done, total = r.done, r.total
		}
	}
	return done, total
}

// TestGCTwiceChangesNothing: a collection with nothing to do writes the same
// consolidated index it read (objects are named by content); it must keep it.
func TestGCTwiceChangesNothing(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 256 << 10
	r, be, mk := newTestRepo(t, opts)
	h, _ := r.OpenHead(ctx, "s-t", "vda", 64*testBS, HeadOptions{})
	m := model{}
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < 64; b++ {
		blocks[b] = 1
	}
	write(t, h, m, blocks)
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-t", Server: "s-t", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if _, err := r.GC(ctx, GCOptions{}); err != nil {
			t.Fatal(err)
		}
		fresh := reopen(t, be, mk, opts)
		rep, err := fresh.Verify(ctx, VerifyOptions{})
		if err != nil || !rep.OK() {
			t.Fatalf("after collection %d: %v %v", i+1, err, rep.Errors)
		}
		checkPIT(t, fresh, p, "vda", 64*testBS, m)
	}
}

// TestGCSparesChunksNotYetJournaled: a writer's chunks are in stored packs but no
// journal names them yet (its window is open) when a collection runs; the collection
// must not take them, and the flush that follows makes a PIT that reads back whole.
func TestGCSparesChunksNotYetJournaled(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 256 << 10 // 4 blocks a pack: most of the writes are in stored packs
	r, _, _ := newTestRepo(t, opts)
	h, err := r.OpenHead(ctx, "s-y", "vda", 32*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < 32; b++ {
		blocks[b] = 1
	}
	write(t, h, m, blocks) // not flushed
	if _, err := r.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-y", Server: "s-y", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	checkPITBlocks(t, r, p, m)
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("verify after a collection during an open window: %v %v", err, rep.Errors)
	}
}

// Repacking packs whose chunks are all live copies them unchanged: twice in a row, the
// second pass would write packs identical in content to the first's. Each pack's
// random salt gives it a name of its own, so deleting the packs a pass repacked never
// deletes the packs it wrote.
func TestRepackingTwiceKeepsEveryChunk(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 256 << 10
	r, _, _ := newTestRepo(t, opts)
	h, _ := r.OpenHead(ctx, "s-rp", "vda", 16*testBS, HeadOptions{})
	m := model{}
	for b := uint64(0); b < 16; b++ {
		write(t, h, m, map[uint64]uint32{b: 1})
		if err := h.Flush(ctx); err != nil { // one small pack per block
			t.Fatal(err)
		}
	}
	p := seal(t, r, "pit-rp", h)
	for pass := 1; pass <= 2; pass++ {
		st, err := r.GC(ctx, GCOptions{SmallPack: 64 << 20, Grace: time.Millisecond}) // every pack is small: all are repacked
		if err != nil {
			t.Fatal(err)
		}
		if st.RepackedPacks == 0 || st.DeadChunks != 0 {
			t.Fatalf("pass %d: %+v, want repacks and no dead chunk", pass, st)
		}
		checkPIT(t, r, p, "vda", 16*testBS, m)
	}
}
