package store

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// A garbage collection first reads the repository (surveyGC), then decides what to do
// with every chunk and pack (planGC): a plan that tests inspect without waiting out the
// grace period, since the clock and the grace period are inputs. After the grace period
// and a second mark, the plan is settled (gcPlan.settle) and executed (gc.go).

// gcSurvey is what a collection reads before it decides anything.
type gcSurvey struct {
	now        time.Time            // when the collection started
	indexNames []string             // the index objects read: what the new index replaces
	packs      []packEntries        // the packs they name, each with its entries (once each)
	stored     map[ID]time.Time     // when each pack in the backend was stored
	unindexed  []backend.ObjectInfo // packs no index object names that this process did not write
	live       map[ID]blobType      // chunks reachable from the roots at the mark
}

// surveyGC reads the index as it is now (the objects a collection may replace), lists
// the packs, then marks every chunk reachable from the roots. The packs are listed
// before the mark: a pack stored after the listing is not in the survey, so none of its
// chunks can be condemned.
func (r *Repo) surveyGC(ctx context.Context, now time.Time, progress func(step string, done, total int)) (*gcSurvey, error) {
	s := &gcSurvey{now: now, stored: map[ID]time.Time{}}
	if err := r.refreshView(ctx, true); err != nil {
		return nil, err
	}
	var err error
	if s.indexNames, s.packs, err = r.readAllIndex(ctx); err != nil {
		return nil, err
	}
	inIndex := make(map[ID]bool, len(s.packs))
	for _, p := range s.packs {
		inIndex[p.Pack] = true
	}
	if err := r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		id, err := ParseID(oi.Name[strings.LastIndexByte(oi.Name, '/')+1:])
		if err != nil {
			return nil // not a pack: left alone
		}
		s.stored[id] = oi.ModTime
		if !inIndex[id] && !r.packKnown(id) {
			s.unindexed = append(s.unindexed, oi)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("gc: list packs: %w", err)
	}
	progress(GCStepMark, 0, 0)
	if s.live, err = r.mark(ctx, func(nodes int) { progress(GCStepMark, nodes, 0) }); err != nil {
		return nil, fmt.Errorf("gc: %w (nothing was deleted)", err)
	}
	return s, nil
}

// gcAction is what a collection does with a pack.
type gcAction int

const (
	gcKeep   gcAction = iota // every chunk stays where it is
	gcRepack                 // its live chunks are copied into new packs, then it is deleted
	gcDelete                 // every chunk is dead: it is deleted
)

func (a gcAction) String() string {
	return [...]string{"keep", "repack", "delete"}[a]
}

// packPlan is what a collection does with one pack of the index.
type packPlan struct {
	pack     packEntries
	size     int64 // bytes of its chunks
	deadSize int64 // bytes of its dead chunks
	action   gcAction
	keep     []entry // gcKeep: what the new index lists of it (live chunks no earlier pack holds)
	copy     []entry // gcRepack: the live chunks to copy (those no kept or earlier pack holds)
}

// gcPlan is what a collection decided.
type gcPlan struct {
	survey *gcSurvey
	opts   GCOptions // Grace, RepackThreshold and SmallPack filled in

	chunks      int         // distinct chunks in the index
	young       []ID        // unreachable but spared: in a pack stored less than the grace period ago
	condemned   []ID        // unreachable and in no young pack, sorted
	dead        map[ID]bool // to remove: until settle, every condemned chunk
	resurrected int         // condemned, then reachable again at the second mark
	packs       []packPlan  // one for each pack of the index, in its order
	orphans     []string    // packs no index names, stored more than the grace period ago
}

// planGC decides what a collection does from what it surveyed. A chunk stored less than
// a grace period ago may belong to blocks a writer has not journaled yet (writers
// journal within a quarter of it): it is never condemned, nor is a pack that young an
// orphan. Until settle, the plan treats every condemned chunk as dead (what a dry run
// reports).
func planGC(s *gcSurvey, opts GCOptions) *gcPlan {
	p := &gcPlan{survey: s, opts: opts, dead: map[ID]bool{}}
	cutoff := s.now.Add(-opts.Grace)
	recent := map[ID]bool{}
	seen := map[ID]bool{}
	for _, pe := range s.packs {
		t, ok := s.stored[pe.Pack]
		young := ok && !t.Before(cutoff)
		for _, e := range pe.Entries {
			if young {
				recent[e.ID] = true
			}
			seen[e.ID] = true
		}
	}
	p.chunks = len(seen)
	for id := range seen {
		if _, ok := s.live[id]; ok {
			continue
		}
		if recent[id] {
			p.young = append(p.young, id)
		} else {
			p.condemned = append(p.condemned, id)
			p.dead[id] = true
		}
	}
	sortIDs(p.young)
	sortIDs(p.condemned)
	for _, oi := range s.unindexed {
		if oi.ModTime.Before(cutoff) {
			p.orphans = append(p.orphans, oi.Name)
		}
	}
	p.decide()
	return p
}

// settle takes the second mark, made after the grace period: condemned chunks it
// reaches were used again meanwhile and stay; the others are dead. The packs are
// decided again.
func (p *gcPlan) settle(live map[ID]blobType) {
	p.dead = map[ID]bool{}
	p.resurrected = 0
	for _, id := range p.condemned {
		if _, ok := live[id]; ok {
			p.resurrected++
		} else {
			p.dead[id] = true
		}
	}
	p.decide()
}

// decide chooses each pack's action: packs whose chunks are all dead are deleted;
// packs with at least RepackThreshold of dead bytes are repacked, and so are packs
// smaller than SmallPack when there are several; the others are kept. Each live chunk
// ends up in exactly one place: a kept pack that holds it, or else one copy made by
// repacking.
func (p *gcPlan) decide() {
	p.packs = make([]packPlan, 0, len(p.survey.packs))
	small := 0
	for _, pe := range p.survey.packs {
		pp := packPlan{pack: pe}
		for _, e := range pe.Entries {
			pp.size += int64(e.Length)
			if p.dead[e.ID] {
				pp.deadSize += int64(e.Length)
			}
		}
		if pp.deadSize == 0 && pp.size < int64(p.opts.SmallPack) {
			small++
		}
		p.packs = append(p.packs, pp)
	}
	for i := range p.packs {
		pp := &p.packs[i]
		switch {
		case pp.deadSize == pp.size:
			pp.action = gcDelete
		case float64(pp.deadSize) >= p.opts.RepackThreshold*float64(pp.size):
			pp.action = gcRepack
		case pp.size < int64(p.opts.SmallPack) && small > 1:
			pp.action = gcRepack
		default:
			pp.action = gcKeep
		}
	}
	have := map[ID]bool{}
	for _, action := range []gcAction{gcKeep, gcRepack} {
		for i := range p.packs {
			pp := &p.packs[i]
			if pp.action != action {
				continue
			}
			var live []entry
			for _, e := range pp.pack.Entries {
				if !p.dead[e.ID] && !have[e.ID] {
					have[e.ID] = true
					live = append(live, e)
				}
			}
			if action == gcKeep {
				pp.keep = live
			} else {
				pp.copy = live
			}
		}
	}
}

// stats reports the plan: what a dry run says, and what a collection counts before it
// changes anything.
func (p *gcPlan) stats() GCStats {
	st := GCStats{Packs: len(p.survey.packs), Chunks: p.chunks, Condemned: len(p.condemned),
		Resurrected: p.resurrected, DeadChunks: len(p.dead), OrphanPacks: len(p.orphans)}
	st.LiveChunks = st.Chunks - st.DeadChunks
	for _, pp := range p.packs {
		switch pp.action {
		case gcDelete:
			st.DeletedPacks++
			st.FreedBytes += pp.size
		case gcRepack:
			st.RepackedPacks++
			st.FreedBytes += pp.deadSize
		}
	}
	return st
}

func sortIDs(ids []ID) {
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
}
