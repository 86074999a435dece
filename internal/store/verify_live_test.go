package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// raceBackend calls its hooks before listings, reads and ranged reads: a way to run a
// writer or a collection at the exact point where a reader is.
type raceBackend struct {
	backend.Backend
	list   func(prefix string)
	get    func(name string)
	readAt func(name string)
}

func (b *raceBackend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if b.list != nil {
		b.list(prefix)
	}
	return b.Backend.List(ctx, prefix, fn)
}

func (b *raceBackend) Get(ctx context.Context, name string) ([]byte, error) {
	if b.get != nil {
		b.get(name)
	}
	return b.Backend.Get(ctx, name)
}

func (b *raceBackend) ReadAt(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if b.readAt != nil {
		b.readAt(name)
	}
	return b.Backend.ReadAt(ctx, name, off, n)
}

// liveStore is a repository in use by other "processes" (Repo instances on the same
// directory): writers that ingest, flush and seal PITs, and a collector that runs GC
// after GC. A test runs Verify from a third instance meanwhile.
type liveStore struct {
	t       *testing.T
	writer  *Repo
	rounds  atomic.Int64 // writer rounds started
	flushed atomic.Int64 // the last round whose flush completed
	sealed  atomic.Int64 // PITs sealed
	gcRuns  atomic.Int64
	gcDead  atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
	errs    chan error
	flushes chan struct{}   // a signal after every completed flush
	repack  chan chan error // asks the collector for a collection that repacks every pack
	once    sync.Once
}

// startLiveStore starts writers of the given servers on w and a collector on gc. Every
// round writes 8 blocks: 4 of content never written before (new chunks, indexed after
// any verify that is under way listed the index) and 4 of contents that recur (so they
// deduplicate against chunks a collection may have condemned). The writers keep the
// last two PITs of each server and delete the older ones: garbage for the collector.
func startLiveStore(t *testing.T, w, gc *Repo, servers ...string) *liveStore {
	ls := &liveStore{t: t, writer: w, stop: make(chan struct{}), errs: make(chan error, len(servers)+1),
		flushes: make(chan struct{}, 1), repack: make(chan chan error)}
	for i, server := range servers {
		ls.wg.Add(1)
		go func() {
			defer ls.wg.Done()
			if err := ls.write(server, uint64(i)); err != nil {
				ls.errs <- fmt.Errorf("writer of %s: %w", server, err)
			}
		}()
	}
	ls.wg.Add(1)
	go func() {
		defer ls.wg.Done()
		if err := ls.collect(gc); err != nil {
			ls.errs <- fmt.Errorf("collector: %w", err)
		}
	}()
	return ls
}

const liveBlocks = 64

func (ls *liveStore) write(server string, seed uint64) error {
	ctx := context.Background()
	h, err := ls.writer.OpenHead(ctx, server, "vda", liveBlocks*testBS, HeadOptions{})
	if err != nil {
		return err
	}
	defer h.Close()
	rng := rand.New(rand.NewPCG(seed, 13))
	var pits []string
	for round := 0; round < 5000; round++ {
		select {
		case <-ls.stop:
			return nil
		default:
		}
		n := ls.rounds.Add(1)
		var bl []Block
		for i := 0; i < 8; i++ {
			b := uint64(rng.IntN(liveBlocks))
			v := uint32(rng.IntN(4) + 1) // recurs
			if i < 4 {
				v = uint32(1000 + 4*n + int64(seed)) // never written before (odd and even: random and text)
			}
			bl = append(bl, Block{Index: b, Data: content(b, v)})
		}
		if err := h.WriteBlocks(ctx, bl); err != nil {
			return err
		}
		if err := h.Flush(ctx); err != nil {
			return err
		}
		ls.flushed.Store(n)
		select {
		case ls.flushes <- struct{}{}:
		default:
		}
		if round%3 == 2 {
			id := fmt.Sprintf("pit-%d", round)
			if _, err := ls.writer.SealPIT(ctx, SealRequest{ID: id, Server: server, Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
				return err
			}
			ls.sealed.Add(1)
			pits = append(pits, id)
			for len(pits) > 2 {
				if err := ls.writer.DeletePIT(ctx, server, pits[0]); err != nil {
					return err
				}
				pits = pits[1:]
			}
		}
	}
	return nil
}

func (ls *liveStore) collect(gc *Repo) error {
	for range 5000 { // each takes 50 ms at least (lockGC): longer than any test runs
		opts := GCOptions{}
		var asked chan error
		select {
		case <-ls.stop:
			return nil
		case asked = <-ls.repack:
			opts.SmallPack = 64 << 20 // every pack is small: all are repacked, and deleted
		default:
		}
		st, err := gc.GC(context.Background(), opts)
		if isLockBusy(err) && asked == nil {
			continue
		}
		if asked != nil {
			if err == nil && st.RepackedPacks == 0 {
				err = errors.New("the collection asked to repack every pack repacked none")
			}
			asked <- err
		}
		if err != nil {
			return err
		}
		ls.gcRuns.Add(1)
		ls.gcDead.Add(int64(st.DeadChunks))
	}
	return nil
}

// repackAll has the collector run a collection that repacks, then deletes, every pack,
// and waits for it.
func (ls *liveStore) repackAll() {
	done := make(chan error, 1)
	select {
	case ls.repack <- done:
	case <-time.After(30 * time.Second):
		ls.t.Errorf("the collector took no request for 30 s")
		return
	}
	if err := <-done; err != nil {
		ls.t.Errorf("repacking collection: %v", err)
	}
}

// awaitFlush waits until a writer round that started after the call has flushed: its
// journal, and the packs and index objects of its new chunks, were all stored after.
func (ls *liveStore) awaitFlush() {
	after := ls.rounds.Load() + 1
	ls.await(func() bool { return ls.flushed.Load() >= after })
}

// await waits, 30 s at most, for cond to hold after a flush.
func (ls *liveStore) await(cond func() bool) {
	timeout := time.After(30 * time.Second)
	for !cond() {
		select {
		case <-ls.flushes:
		case err := <-ls.errs:
			ls.errs <- err
			return
		case <-timeout:
			ls.t.Errorf("no writer flushed for 30 s")
			return
		}
	}
}

// finish stops the writers and the collector and fails the test if any failed.
func (ls *liveStore) finish() {
	ls.once.Do(func() {
		close(ls.stop)
		ls.wg.Wait()
		close(ls.errs)
		for err := range ls.errs {
			ls.t.Error(err)
		}
	})
}

// Verify with ReadData tells the truth on a live store: run again and again while
// another instance ingests (new chunks, PITs sealed and deleted) and a third collects
// garbage, it finds nothing wrong. Three races are forced at every run: between
// listing the index and reading it, and again when Verify lists the packs, a collection
// repacks and deletes every pack (and replaces every index object) its view names; when
// it starts walking the heads, a writer round that began after it listed the index has
// flushed (its journal, or the checkpoint that folded it, names chunks indexed after
// that listing). A Verify that reports what is missing without looking again at the
// index fails here.
func TestVerifyDuringIngestAndGC(t *testing.T) {
	opts := testOptions()
	opts.PackSize = 256 << 10
	opts.GCGrace = 200 * time.Millisecond
	w, be, mk := newTestRepo(t, opts)
	collector := reopen(t, be, mk, opts)
	hb := &raceBackend{Backend: be}
	checker := reopen(t, hb, mk, opts)
	ls := startLiveStore(t, w, collector, "s-v0", "s-v1")
	defer ls.finish()
	ls.await(func() bool { return ls.sealed.Load() >= 2 })
	var indexRead atomic.Bool // armed at the start of each run
	hb.get = func(name string) {
		if strings.HasPrefix(name, "index/") && indexRead.CompareAndSwap(true, false) {
			ls.repackAll()
		}
	}
	hb.list = func(prefix string) {
		switch prefix {
		case "heads/":
			ls.awaitFlush()
		case "data/":
			ls.repackAll()
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	runs := 0
	for ; runs < 5 && time.Now().Before(deadline); runs++ {
		indexRead.Store(true)
		rep, err := checker.Verify(context.Background(), VerifyOptions{ReadData: true})
		if err != nil {
			t.Fatalf("verify run %d: %v", runs+1, err)
		}
		if len(rep.Errors) > 0 {
			t.Fatalf("verify run %d on a live store reported %d errors, the first: %s", runs+1, len(rep.Errors), rep.Errors[0])
		}
		if rep.ReadChunks == 0 || rep.Heads == 0 {
			t.Fatalf("verify run %d checked nothing: %+v", runs+1, rep)
		}
	}
	hb.list, hb.get = nil, nil
	ls.finish()
	t.Logf("%d verify runs; %d PITs sealed, %d collections removed %d chunks meanwhile", runs, ls.sealed.Load(), ls.gcRuns.Load(), ls.gcDead.Load())
	if runs < 2 || ls.sealed.Load() == 0 || ls.gcDead.Load() == 0 {
		t.Fatalf("the test did not exercise a live store: %d runs, %d PITs sealed, %d chunks collected", runs, ls.sealed.Load(), ls.gcDead.Load())
	}
}

// A pack deleted in the middle of a live run (as Verify lists the packs of its third
// run, while another instance ingests and a third collects garbage) is reported
// exactly: the pack, and each object that loses blocks with it — the head and the PIT
// of the server whose data it held — and nothing else, at that run and the next.
func TestVerifyReportsExactlyALostPack(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.PackSize = 256 << 10 // 4 blocks of random content fill a pack
	opts.GCGrace = 200 * time.Millisecond
	w, be, mk := newTestRepo(t, opts)

	// Server s-cold: 8 blocks of content no other writer writes (versions 101 and 103),
	// sealed into pit-cold; its head does not move after.
	h, err := w.OpenHead(ctx, "s-cold", "vda", 16*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cold := map[uint64]uint32{}
	for b := uint64(0); b < 8; b++ {
		cold[b] = 101 + 2*uint32(b%2)
	}
	write(t, h, model{}, cold)
	seal(t, w, "pit-cold", h)
	h.Close()
	// The pack to lose: one that holds 4 of those blocks and nothing else.
	_, packs, err := w.readAllIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	coldIDs := map[ID]bool{}
	for b, v := range cold {
		coldIDs[w.keys.id(content(b, v))] = true
	}
	var victim ID
	for _, p := range packs {
		all := len(p.Entries) == 4
		for _, e := range p.Entries {
			all = all && coldIDs[e.ID]
		}
		if all {
			victim = p.Pack
		}
	}
	if victim.IsZero() {
		t.Fatal("no pack holds exactly 4 of s-cold's blocks")
	}

	collector := reopen(t, be, mk, opts)
	hb := &raceBackend{Backend: be}
	checker := reopen(t, hb, mk, opts)
	ls := startLiveStore(t, w, collector, "s-l0", "s-l1")
	defer ls.finish()
	ls.await(func() bool { return ls.sealed.Load() >= 2 })

	var lose atomic.Bool
	hb.list = func(prefix string) {
		if prefix == "data/" && lose.CompareAndSwap(true, false) {
			if err := be.Delete(ctx, packName(victim)); err != nil {
				t.Error(err)
			}
		}
	}
	want := []string{
		packName(victim) + ": the index lists this pack but it does not exist (its 4 chunks are lost)",
		"heads/s-cold/vda/head.0000000000000001: volume vda: 4 of its blocks are lost: their chunks were in packs that are missing",
		"snapshots/s-cold/pit-cold: volume vda: 4 of its blocks are lost: their chunks were in packs that are missing",
	}
	deadline := time.Now().Add(60 * time.Second)
	for run := 1; run <= 5 && time.Now().Before(deadline); run++ {
		lose.Store(run == 3)
		rep, err := checker.Verify(ctx, VerifyOptions{ReadData: true})
		if err != nil {
			t.Fatalf("verify run %d: %v", run, err)
		}
		got := slices.Clone(rep.Errors)
		slices.Sort(got)
		if run < 3 && len(got) != 0 {
			t.Fatalf("verify run %d, before the loss, reported %d errors: %q", run, len(got), got)
		}
		if run >= 3 && !slices.Equal(got, want) {
			t.Fatalf("verify run %d, after the loss, reported\n%s\nwant exactly\n%s", run, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// What a root gone during Verify loses is no loss. Verify has read the head when, just
// as it reads the head's tree, the head moves on and a collection removes the old
// tree; later it has read the manifest of pit-1 when, just as it reads pit-1's
// tree, the PIT is deleted and a collection removes its chunks. Both tree nodes are
// then missing, but so are the roots that named them: nothing is reported. (pit-1 is
// walked before pit-2: the PITs are read in the order of their names.)
func TestVerifyIgnoresWhatARemovedRootLost(t *testing.T) {
	ctx := context.Background()
	w, be, mk := newTestRepo(t, testOptions())
	h, err := w.OpenHead(ctx, "s-g", "vda", 16*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	blocks := func(v uint32) map[uint64]uint32 {
		m := map[uint64]uint32{}
		for b := uint64(0); b < 16; b++ {
			m[b] = v
		}
		return m
	}
	write(t, h, model{}, blocks(1))
	seal(t, w, "pit-1", h)
	write(t, h, model{}, blocks(3)) // pit-2 and the head no longer use pit-1's tree
	seal(t, w, "pit-2", h)
	write(t, h, model{}, blocks(5)) // the head no longer uses pit-2's tree
	if _, err := h.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}

	// The collector's clock is an hour ahead: no pack is too young to collect.
	ahead := testOptions()
	ahead.Now = func() time.Time { return time.Now().Add(time.Hour) }
	collector := reopen(t, be, mk, ahead)
	hb := &raceBackend{Backend: be}
	checker := reopen(t, hb, mk, testOptions())
	// Phase 1 is armed when the walk lists the heads, phase 2 when it lists the PITs
	// (after every head): the next pack read is the head's tree, then pit-1's.
	var armed, phase atomic.Int32
	hb.list = func(prefix string) {
		switch {
		case prefix == "heads/" && phase.Load() == 0:
			armed.Store(1)
		case prefix == "snapshots/" && phase.Load() == 1:
			armed.Store(2)
		}
	}
	collect := func() {
		// Every pack that holds a dead chunk is repacked, then deleted.
		st, err := collector.GC(ctx, GCOptions{Grace: time.Millisecond, RepackThreshold: 1e-9})
		if err != nil || st.DeadChunks == 0 {
			t.Errorf("the collection during verify: %+v %v", st, err)
		}
	}
	hb.readAt = func(string) {
		switch armed.Swap(0) {
		case 1:
			write(t, h, model{}, blocks(7))
			if _, err := h.checkpoint(ctx); err != nil {
				t.Error(err)
			}
			collect()
		case 2:
			if err := w.DeletePIT(ctx, "s-g", "pit-1"); err != nil {
				t.Error(err)
			}
			collect()
		default:
			return
		}
		phase.Add(1)
	}
	rep, err := checker.Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if phase.Load() != 2 {
		t.Fatalf("%d of the 2 races ran", phase.Load())
	}
	if len(rep.Errors) != 0 {
		t.Fatalf("verify reported what removed roots lost: %q", rep.Errors)
	}
}

// A pack no index names is reported (a warning, lifeboat store gc removes it) once it
// is older than the grace period: a younger one may be a writer's, about to be indexed.
func TestVerifyWarnsOfOldUnindexedPacksOnly(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, testOptions())
	data := content(1, 1)
	id := r.keys.id(data)
	sealed := r.sealChunk(CodecNone, blobData, id, data, nil)
	buf := appendPackHeader(nil)
	e := entry{ID: id, Type: blobData, Offset: uint32(len(buf)), Length: uint32(len(sealed)), RawLen: uint32(len(data))}
	buf, pack := r.finishPack(append(buf, sealed...), []entry{e})
	if err := be.Put(ctx, packName(pack), buf, backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || len(rep.Errors) != 0 || len(rep.Warnings) != 0 {
		t.Fatalf("a pack stored just now: %v, errors %q, warnings %q; want none", err, rep.Errors, rep.Warnings)
	}
	later := testOptions()
	later.Now = func() time.Time { return time.Now().Add(time.Hour) }
	rep, err = reopen(t, be, mk, later).Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || len(rep.Errors) != 0 || len(rep.Warnings) != 1 || !strings.HasPrefix(rep.Warnings[0], packName(pack)+": no index names this pack") {
		t.Fatalf("the same pack an hour later: %v, errors %q, warnings %q; want one warning naming it", err, rep.Errors, rep.Warnings)
	}
}
