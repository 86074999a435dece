package store

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// survey surveys r as a collection starting at now would, without taking the lock.
func survey(t *testing.T, r *Repo, now time.Time) *gcSurvey {
	t.Helper()
	s, err := r.surveyGC(context.Background(), now, func(string, int, int) {})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A chunk only a deleted PIT used is condemned once its pack is older than the grace
// period, and spared while it is younger; chunks a PIT, a head checkpoint or a head
// journal names are live. The clock is the plan's input: no test waits out the grace.
func TestGCPlanCondemnsWhatOnlyADeletedPITUsed(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	h, err := r.OpenHead(ctx, "s-p", "vda", 32*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	v1 := map[uint64]uint32{}
	for b := uint64(0); b < 32; b++ {
		v1[b] = 1
	}
	write(t, h, m, v1)
	seal(t, r, "pit-1", h)
	over := map[uint64]uint32{} // blocks 0..7: version 3, in pit-2 and the head
	for b := uint64(0); b < 8; b++ {
		over[b] = 3
	}
	write(t, h, m, over)
	seal(t, r, "pit-2", h)
	if err := r.DeletePIT(ctx, "s-p", "pit-1"); err != nil {
		t.Fatal(err)
	}
	write(t, h, m, map[uint64]uint32{20: 5}) // named by a journal only
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	id := func(b uint64, v uint32) ID { return r.keys.id(content(b, v)) }
	opts := r.gcDefaults(GCOptions{})

	later := planGC(survey(t, r, time.Now().Add(time.Hour)), opts)
	for b := uint64(0); b < 32; b++ {
		old := id(b, 1)
		if got, want := slices.Contains(later.condemned, old), b < 8; got != want {
			t.Errorf("block %d version 1 condemned: %v, want %v (only the deleted PIT used blocks 0-7 at version 1)", b, got, want)
		}
		if !later.dead[old] && b < 8 {
			t.Errorf("block %d version 1 is condemned but the plan does not treat it as dead", b)
		}
	}
	for _, live := range []ID{id(0, 3), id(7, 3), id(20, 5)} {
		if _, ok := later.survey.live[live]; !ok || slices.Contains(later.condemned, live) {
			t.Errorf("chunk %s of pit-2, the head or its journal is not live", live)
		}
	}
	if len(later.young) != 0 {
		t.Errorf("an hour later, %d chunks are still spared as young", len(later.young))
	}

	now := planGC(survey(t, r, time.Now()), opts)
	if len(now.condemned) != 0 || len(now.dead) != 0 {
		t.Fatalf("chunks stored just now were condemned: %d", len(now.condemned))
	}
	if !slices.Contains(now.young, id(0, 1)) || len(now.young) != len(later.condemned) {
		t.Fatalf("%d chunks spared as young, want the %d condemned an hour later", len(now.young), len(later.condemned))
	}
}

// synthetic builds a survey from packs described as chunk numbers (each chunk 100
// bytes), with the given live chunks, every pack stored at stored.
func synthetic(now, stored time.Time, live []uint64, packs ...[]uint64) *gcSurvey {
	s := &gcSurvey{now: now, stored: map[ID]time.Time{}, live: map[ID]blobType{}}
	for i, chunks := range packs {
		pe := packEntries{Pack: testID(1000 + uint64(i))}
		for k, c := range chunks {
			pe.Entries = append(pe.Entries, entry{ID: testID(c), Offset: uint32(24 + 100*k), Length: 100})
		}
		s.packs = append(s.packs, pe)
		s.stored[pe.Pack] = stored
	}
	for _, c := range live {
		s.live[testID(c)] = blobData
	}
	return s
}

func actions(p *gcPlan) string {
	var out []string
	for _, pp := range p.packs {
		out = append(out, fmt.Sprintf("%s:%d/%d", pp.action, len(pp.keep), len(pp.copy)))
	}
	return fmt.Sprint(out)
}

// Each pack's fate: all dead is deleted, mostly dead is repacked (its live chunks
// copied once, not those a kept pack holds), little dead is kept, small packs are
// merged; a chunk used again during the grace period saves its pack.
func TestGCPlanDecidesEachPack(t *testing.T) {
	now := time.Now()
	old := now.Add(-time.Hour)
	opts := GCOptions{Grace: 10 * time.Minute, RepackThreshold: 0.3, SmallPack: 500}
	s := synthetic(now, old, []uint64{5, 6, 10, 11, 12, 13, 14, 15, 16, 17, 18, 30},
		[]uint64{1, 2, 3, 4},                            // all dead: delete
		[]uint64{5, 6, 7, 8, 10},                        // 2 of 5 dead (40%): repack 5 and 6; 10 is in the kept pack
		[]uint64{10, 11, 12, 13, 14, 15, 16, 17, 18, 9}, // 1 of 10 dead: keep
		[]uint64{30},                                    // small, live
		[]uint64{30},                                    // small, live, same chunk: merged into one copy
	)
	s.unindexed = []backend.ObjectInfo{{Name: "data/aa/old", ModTime: old}, {Name: "data/bb/young", ModTime: now}}
	p := planGC(s, opts)
	if got, want := actions(p), "[delete:0/0 repack:0/2 keep:9/0 repack:0/1 repack:0/0]"; got != want {
		t.Fatalf("actions %s, want %s", got, want)
	}
	if fmt.Sprint(p.orphans) != "[data/aa/old]" {
		t.Fatalf("orphans %v, want the old unindexed pack only", p.orphans)
	}
	st := p.stats()
	if st.Chunks != 19 || st.Condemned != 7 || st.DeadChunks != 7 || st.LiveChunks != 12 ||
		st.DeletedPacks != 1 || st.RepackedPacks != 3 || st.FreedBytes != 400+200 || st.OrphanPacks != 1 {
		t.Fatalf("stats %+v", st)
	}

	// During the grace period a writer used chunk 1 again: its pack is repacked, not
	// deleted, and only the rest is dead.
	live := map[ID]blobType{testID(1): blobData}
	for id := range s.live {
		live[id] = blobData
	}
	p.settle(live)
	if got, want := actions(p), "[repack:0/1 repack:0/2 keep:9/0 repack:0/1 repack:0/0]"; got != want {
		t.Fatalf("after the second mark: actions %s, want %s", got, want)
	}
	if p.resurrected != 1 || len(p.dead) != 6 || p.dead[testID(1)] {
		t.Fatalf("after the second mark: %d resurrected, dead %v", p.resurrected, p.dead)
	}

	// Unreachable chunks in packs stored a minute ago are spared: nothing is condemned,
	// every pack is kept.
	young := planGC(synthetic(now, now.Add(-time.Minute), nil, []uint64{1, 2, 3, 4, 8}, []uint64{30}), opts)
	if len(young.condemned) != 0 || len(young.young) != 6 || actions(young) != "[keep:5/0 keep:1/0]" {
		t.Fatalf("young packs: condemned %d, spared %d, actions %s", len(young.condemned), len(young.young), actions(young))
	}
}
