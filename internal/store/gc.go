package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// Garbage collection, safe while ingest continues (in this process or others):
//
//  1. Mark every chunk reachable from the roots: PIT manifests, head checkpoints and
//     head journals. Chunks in the index that are not reachable are condemned: they are
//     written to a gc/pending-… object.
//  2. Wait the grace period. Writers refresh their view at least every grace/4 and
//     never deduplicate against a condemned chunk (they store the block again), and a
//     flush rechecks its deduplicated chunks against a view younger than grace/2
//     before it writes its journal. So after the grace period, every journal that
//     references a condemned chunk has been written.
//  3. Mark again. Condemned chunks still unreachable are dead. Packs holding only dead
//     chunks are deleted; packs with much dead space, and small packs, are repacked
//     (their live chunks copied, still encrypted, into new packs); a new index replaces
//     the index objects read in step 1; then old packs and index objects are deleted
//     and the pending object removed. Other processes notice the removed index objects
//     and reload their index.

// GCOptions tune a garbage collection.
type GCOptions struct {
	Grace           time.Duration // default: the repository's GCGrace
	RepackThreshold float64       // repack packs with at least this fraction dead (default 0.3)
	SmallPack       int           // packs smaller than this are merged (default PackSize/4)
	DryRun          bool          // plan only: report, change nothing
	// Progress, when set, is told of each step (one of the GCStep names) as it starts,
	// with done and total 0, and then how far it is: done of total in the step's unit
	// (total 0: not known).
	Progress func(step string, done, total int)
}

// The steps of a garbage collection, as GCOptions.Progress names them, with what their
// done and total count.
const (
	GCStepRead      = "reading the index"
	GCStepMark      = "marking reachable chunks" // tree nodes walked; the total is not known
	GCStepGrace     = "waiting for writers"      // seconds of the grace period
	GCStepMarkAgain = "marking again"            // tree nodes walked
	GCStepRepack    = "repacking"                // packs
	GCStepIndex     = "writing the new index"
	GCStepRemove    = "removing what the new index replaces" // index objects and packs
)

// GCStats reports what a garbage collection found and did.
type GCStats struct {
	Packs         int           `json:"packs"`         // packs in the index when it started
	Chunks        int           `json:"chunks"`        // chunks in the index
	LiveChunks    int           `json:"liveChunks"`    // reachable
	Condemned     int           `json:"condemned"`     // unreachable at the first mark
	Resurrected   int           `json:"resurrected"`   // condemned, then referenced again during the grace period
	DeadChunks    int           `json:"deadChunks"`    // removed
	DeletedPacks  int           `json:"deletedPacks"`  // removed whole
	RepackedPacks int           `json:"repackedPacks"` // rewritten into new packs
	NewPacks      int           `json:"newPacks"`      // written by repacking
	OrphanPacks   int           `json:"orphanPacks"`   // packs no index named (a crashed writer's), removed
	LockedPacks   int           `json:"lockedPacks"`   // could not be deleted: under backend retention
	FreedBytes    int64         `json:"freedBytes"`    // pack bytes deleted minus new pack bytes
	Duration      time.Duration `json:"duration"`
}

type gcLock struct {
	Holder string    `json:"holder"`
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until"`
}

// GC collects garbage: chunks no PIT or head references. See the comment above for
// why it is safe while replicators write. It surveys the repository and plans
// (gcplan.go); a dry run reports the plan. Otherwise it executes the plan in steps:
// condemn, wait the grace period and mark again (settle), repack, write the new index,
// remove what it replaces.
func (r *Repo) GC(ctx context.Context, opts GCOptions) (GCStats, error) {
	c := &collection{r: r, opts: r.gcDefaults(opts), start: r.opts.Now(), stillHeld: func() error { return nil }}
	if !c.opts.DryRun {
		release, held, err := r.lockGC(ctx, c.start, c.opts.Grace)
		if err != nil {
			return c.st, err
		}
		defer release()
		c.stillHeld = held
	}
	c.stage(GCStepRead)
	s, err := r.surveyGC(ctx, c.start, c.progress)
	if err != nil {
		return c.st, err
	}
	c.plan = planGC(s, c.opts)
	c.st = c.plan.stats()
	if !c.opts.DryRun {
		if err := c.execute(ctx); err != nil {
			return c.st, err
		}
	}
	c.st.Duration = r.opts.Now().Sub(c.start)
	return c.st, nil
}

// gcDefaults fills in the options a collection leaves at zero.
func (r *Repo) gcDefaults(opts GCOptions) GCOptions {
	if opts.Grace == 0 {
		opts.Grace = r.opts.GCGrace
	}
	if opts.RepackThreshold == 0 {
		opts.RepackThreshold = 0.3
	}
	if opts.SmallPack == 0 {
		opts.SmallPack = r.opts.PackSize / 4
	}
	return opts
}

// collection is one garbage collection: its plan and what the steps that execute it
// count.
type collection struct {
	r         *Repo
	opts      GCOptions
	start     time.Time
	plan      *gcPlan
	st        GCStats
	stillHeld func() error // an error once another collection took the lock: change nothing more
}

// stage reports a step started.
func (c *collection) stage(step string) { c.progress(step, 0, 0) }

// progress reports how far a step is.
func (c *collection) progress(step string, done, total int) {
	if done == 0 {
		c.r.log.Debug("gc: "+step, "store", c.r.be.Location(), "total", total)
	}
	if c.opts.Progress != nil {
		c.opts.Progress(step, done, total)
	}
}

// execute carries the plan out, step by step. The counts of what is deleted and freed
// are of what was done, not planned.
func (c *collection) execute(ctx context.Context) error {
	c.st.DeletedPacks, c.st.RepackedPacks, c.st.OrphanPacks, c.st.FreedBytes = 0, 0, 0, 0
	if len(c.plan.condemned) > 0 {
		pending, err := c.condemn(ctx)
		if err != nil {
			return err
		}
		defer c.uncondemn(ctx, pending)
		if err := c.settle(ctx); err != nil {
			return err
		}
	}
	// Nothing is changed if another collection took the lock meanwhile.
	if err := c.stillHeld(); err != nil {
		return err
	}
	newPacks, newBytes, err := c.repack(ctx)
	if err != nil {
		return err
	}
	c.stage(GCStepIndex)
	wrote, err := c.writeIndex(ctx, newPacks)
	if err != nil {
		return err
	}
	// Packs that an index object written by someone else since the survey names stay (a
	// collection that overlapped ours despite the lock); so does everything if we lost it.
	if err := c.stillHeld(); err != nil {
		return err
	}
	foreign, err := c.r.packsNamedElsewhere(ctx, c.plan.survey.indexNames, wrote)
	if err != nil {
		return err
	}
	if err := c.remove(ctx, wrote, foreign, newBytes); err != nil {
		return err
	}
	c.r.log.Debug("gc: done", "store", c.r.be.Location(), "dead_chunks", c.st.DeadChunks, "deleted_packs", c.st.DeletedPacks,
		"repacked_packs", c.st.RepackedPacks, "new_packs", c.st.NewPacks)
	return nil
}

// condemn stores the condemned chunks in a pending object, which writers in every
// process read, and records them in this process's view. It returns the object's name.
func (c *collection) condemn(ctx context.Context) (string, error) {
	r, condemned := c.r, c.plan.condemned
	name := fmt.Sprintf("gc/pending-%016x-%s", c.start.UnixNano(), randomHex(4))
	if err := r.putSealed(ctx, name, encodeIDs(pendingMagic, condemned), backend.PutOptions{}); err != nil {
		return "", fmt.Errorf("gc: record condemned chunks: %w", err)
	}
	r.mu.Lock()
	r.pending[name] = condemned
	for _, id := range condemned {
		r.condemned[id] = struct{}{}
	}
	r.mu.Unlock()
	return name, nil
}

// uncondemn removes the pending object, the collection's last change: until then
// writers keep avoiding its chunks.
func (c *collection) uncondemn(ctx context.Context, name string) {
	r := c.r
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := r.be.Delete(dctx, name); err != nil {
		r.log.Warn("gc: could not remove its pending object; writers avoid its chunks until it is removed", "object", name, "err", err)
	}
	if err := r.refreshView(dctx, true); err != nil {
		r.log.Warn("gc: could not reload the index", "err", err)
	}
}

// settle waits the grace period, so that every writer learns of the condemned chunks,
// then marks again and settles the plan: the chunks used again meanwhile live.
func (c *collection) settle(ctx context.Context) error {
	c.r.log.Debug("gc: condemned chunks; waiting for writers to learn of it", "store", c.r.be.Location(),
		"chunks", len(c.plan.condemned), "grace", c.opts.Grace)
	if err := c.waitGrace(ctx); err != nil {
		return err
	}
	c.stage(GCStepMarkAgain)
	live, err := c.r.mark(ctx, func(nodes int) { c.progress(GCStepMarkAgain, nodes, 0) })
	if err != nil {
		return fmt.Errorf("gc: %w (nothing was deleted)", err)
	}
	c.plan.settle(live)
	c.st.Resurrected, c.st.DeadChunks = c.plan.resurrected, len(c.plan.dead)
	c.st.LiveChunks = c.st.Chunks - c.st.DeadChunks
	return nil
}

// waitGrace waits the grace period, reporting the seconds passed every second.
func (c *collection) waitGrace(ctx context.Context) error {
	total := max(1, int(math.Ceil(c.opts.Grace.Seconds())))
	start := time.Now()
	end := time.NewTimer(c.opts.Grace)
	defer end.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	c.stage(GCStepGrace)
	c.progress(GCStepGrace, 0, total)
	for {
		select {
		case <-end.C:
			c.progress(GCStepGrace, total, total)
			return nil
		case <-tick.C:
			c.progress(GCStepGrace, min(total, int(time.Since(start).Seconds())), total)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// repack copies the live chunks of the packs to repack, still sealed, into new packs.
// It returns the new packs' entries and their size.
func (c *collection) repack(ctx context.Context) ([]packEntries, int64, error) {
	r := c.r
	w := &repackWriter{r: r, ctx: ctx}
	total := 0
	for _, pp := range c.plan.packs {
		if pp.action == gcRepack {
			total++
		}
	}
	c.stage(GCStepRepack)
	c.progress(GCStepRepack, 0, total)
	for _, pp := range c.plan.packs {
		if pp.action != gcRepack {
			continue
		}
		if len(pp.copy) > 0 {
			data, err := r.be.Get(ctx, packName(pp.pack.Pack))
			if err != nil {
				return nil, 0, fmt.Errorf("gc: read pack to repack: %w", err)
			}
			for _, e := range pp.copy {
				end := int64(e.Offset) + int64(e.Length)
				if end > int64(len(data)) {
					return nil, 0, corrupt(packName(pp.pack.Pack), fmt.Errorf("chunk %s lies past the pack's end", e.ID))
				}
				if err := w.add(e, data[e.Offset:end]); err != nil {
					return nil, 0, err
				}
			}
		}
		c.st.RepackedPacks++
		c.progress(GCStepRepack, c.st.RepackedPacks, total)
	}
	if err := w.finish(); err != nil {
		return nil, 0, err
	}
	c.st.NewPacks = len(w.index)
	return w.index, w.bytes, nil
}

// writeIndex stores the new index: the kept packs' live entries, then the new packs'.
// It returns the names of the objects written. Index objects are named by their
// content: a collection that changes nothing writes the very objects it read, which
// must then not be deleted.
func (c *collection) writeIndex(ctx context.Context, newPacks []packEntries) (map[string]bool, error) {
	const perObject = 50000
	var batch []packEntries
	n := 0
	wrote := map[string]bool{}
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		plain := encodeIndex(batch)
		name := indexName(ID(blake3.Sum256(plain)))
		if err := c.r.putSealed(ctx, name, plain, backend.PutOptions{}); err != nil {
			return fmt.Errorf("gc: write index: %w", err)
		}
		wrote[name] = true
		batch, n = nil, 0
		return nil
	}
	entries := make([]packEntries, 0, len(c.plan.packs)+len(newPacks))
	for _, pp := range c.plan.packs {
		if pp.action == gcKeep {
			entries = append(entries, packEntries{Pack: pp.pack.Pack, Entries: pp.keep})
		}
	}
	for _, pe := range append(entries, newPacks...) {
		if len(pe.Entries) == 0 {
			continue
		}
		batch = append(batch, pe)
		n += len(pe.Entries)
		if n >= perObject {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	return wrote, flush()
}

// remove deletes what the new index replaces: the index objects read in the survey,
// then the packs deleted or repacked (but those another collection's index names), then
// the orphan packs. A pack under backend retention stays (counted as locked).
func (c *collection) remove(ctx context.Context, wrote map[string]bool, foreign map[ID]bool, newBytes int64) error {
	r := c.r
	done, total := 0, c.removals(wrote, foreign)
	c.stage(GCStepRemove)
	c.progress(GCStepRemove, 0, total)
	removed := func() {
		done++
		c.progress(GCStepRemove, done, total)
	}
	for _, name := range c.plan.survey.indexNames {
		if wrote[name] {
			continue
		}
		if err := r.be.Delete(ctx, name); err != nil {
			return fmt.Errorf("gc: remove old index object: %w", err)
		}
		removed()
	}
	var freed int64
	del := func(name string, size int64) error {
		err := r.be.Delete(ctx, name)
		defer removed()
		switch {
		case errors.Is(err, backend.ErrLocked):
			c.st.LockedPacks++
			return nil
		case err != nil:
			return fmt.Errorf("gc: remove pack: %w", err)
		}
		freed += size
		return nil
	}
	for _, pp := range c.plan.packs {
		if foreign[pp.pack.Pack] {
			continue
		}
		if pp.action == gcDelete {
			c.st.DeletedPacks++
		}
		if pp.action != gcKeep {
			if err := del(packName(pp.pack.Pack), pp.size); err != nil {
				return err
			}
		}
	}
	for _, name := range c.plan.orphans {
		if err := del(name, 0); err != nil {
			return err
		}
	}
	c.st.OrphanPacks = len(c.plan.orphans)
	c.st.FreedBytes = freed - newBytes
	return nil
}

// removals counts the objects remove deletes.
func (c *collection) removals(wrote map[string]bool, foreign map[ID]bool) int {
	n := len(c.plan.orphans)
	for _, name := range c.plan.survey.indexNames {
		if !wrote[name] {
			n++
		}
	}
	for _, pp := range c.plan.packs {
		if !foreign[pp.pack.Pack] && pp.action != gcKeep {
			n++
		}
	}
	return n
}

// packKnown reports whether this process knows a pack (it may have just written it).
func (r *Repo) packKnown(id ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.ix.packNum[id]
	return ok
}

// lockGC takes the repository's GC lock (one collection at a time). held reports an
// error when the lock is no longer ours (another collection overwrote it): the caller
// then changes nothing more.
func (r *Repo) lockGC(ctx context.Context, now time.Time, grace time.Duration) (release func(), held func() error, err error) {
	const name = "gc/lock"
	read := func() (gcLock, error) {
		var l gcLock
		plain, err := r.getSealed(ctx, name)
		if err != nil {
			return l, err
		}
		if err := json.Unmarshal(plain, &l); err != nil {
			return l, corrupt(name, err)
		}
		return l, nil
	}
	if l, err := read(); err == nil && now.Before(l.Until) {
		return nil, nil, fmt.Errorf("another garbage collection (%s, started %s) holds the repository until %s: wait for it to finish",
			l.Holder, l.Since.Format(time.RFC3339), l.Until.Format(time.RFC3339))
	} else if err != nil && !errors.Is(err, backend.ErrNotFound) && !errors.Is(err, ErrCorrupt) {
		return nil, nil, fmt.Errorf("gc: read the GC lock: %w", err)
	}
	mine := gcLock{Holder: randomHex(8), Since: now, Until: now.Add(2*grace + time.Hour)}
	b, _ := json.Marshal(mine)
	if err := r.putSealed(ctx, name, b, backend.PutOptions{}); err != nil {
		return nil, nil, fmt.Errorf("gc: take the GC lock: %w", err)
	}
	held = func() error {
		l, err := read()
		if err != nil {
			return fmt.Errorf("gc: check the GC lock: %w (nothing more was changed)", err)
		}
		if l.Holder != mine.Holder {
			return fmt.Errorf("gc: another garbage collection (%s) took the lock meanwhile; this one stopped without changing anything more", l.Holder)
		}
		return nil
	}
	// Two collections that read "no lock" at once both write theirs: the later wins,
	// and the earlier finds out here, before it changes anything.
	time.Sleep(50 * time.Millisecond)
	if err := held(); err != nil {
		return nil, nil, err
	}
	release = func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if held() == nil {
			_ = r.be.Delete(dctx, name)
		}
	}
	return release, held, nil
}

// packsNamedElsewhere returns the packs named by index objects other than those a
// collection read (old) or wrote.
func (r *Repo) packsNamedElsewhere(ctx context.Context, old []string, wrote map[string]bool) (map[ID]bool, error) {
	known := maps.Clone(wrote)
	for _, n := range old {
		known[n] = true
	}
	ps, err := r.readIndexExcept(ctx, known)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	out := map[ID]bool{}
	for _, p := range ps {
		out[p.Pack] = true
	}
	return out, nil
}

// readIndexExcept reads the index objects whose names are not in known (read or
// written before) and returns what they list. Objects removed meanwhile are skipped.
func (r *Repo) readIndexExcept(ctx context.Context, known map[string]bool) ([]packEntries, error) {
	var names []string
	if err := r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		if !known[oi.Name] {
			names = append(names, oi.Name)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list the index: %w", err)
	}
	var out []packEntries
	for _, n := range names {
		ps, err := r.loadIndexObject(ctx, n)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ps...)
	}
	return out, nil
}

// readAllIndex reads every index object.
func (r *Repo) readAllIndex(ctx context.Context) ([]string, []packEntries, error) {
	var names []string
	if err := r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return nil, nil, err
	}
	byPack := map[ID]*packEntries{}
	var order []ID
	for _, name := range names {
		ps, err := r.loadIndexObject(ctx, name)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range ps {
			cur := byPack[p.Pack]
			if cur == nil {
				cur = &packEntries{Pack: p.Pack}
				byPack[p.Pack] = cur
				order = append(order, p.Pack)
			}
			cur.Entries = appendUniqueEntries(cur.Entries, p.Entries)
		}
	}
	out := make([]packEntries, 0, len(order))
	for _, id := range order {
		out = append(out, *byPack[id])
	}
	return names, out, nil
}

func appendUniqueEntries(dst, src []entry) []entry {
	if len(dst) == 0 {
		return append(dst, src...)
	}
	seen := make(map[uint32]bool, len(dst))
	for _, e := range dst {
		seen[e.Offset] = true
	}
	for _, e := range src {
		if !seen[e.Offset] {
			dst = append(dst, e)
		}
	}
	return dst
}

// mark returns every chunk reachable from the roots: PIT manifests, head checkpoints
// and journals. Any root or node that cannot be read fails the mark: collecting with
// an incomplete mark would delete live data.
//
// walked, when set, is told the number of tree nodes walked every 64 nodes.
func (r *Repo) mark(ctx context.Context, walked func(nodes int)) (map[ID]blobType, error) {
	live := map[ID]blobType{}
	nodes := 0
	var walk func(id ID, level uint8) error
	walk = func(id ID, level uint8) error {
		if id.IsZero() {
			return nil
		}
		if _, seen := live[id]; seen {
			return nil
		}
		live[id] = blobTree
		if nodes++; walked != nil && nodes%64 == 0 {
			walked(nodes)
		}
		children, err := r.loadNode(ctx, id, level)
		if err != nil {
			return err
		}
		for _, c := range children {
			if c.IsZero() {
				continue
			}
			if level == 0 {
				live[c] = blobData
			} else if err := walk(c, level-1); err != nil {
				return err
			}
		}
		return nil
	}
	err := r.forEachRoot(ctx, func(rt root) error {
		if rt.tree {
			return walk(rt.id, rt.level)
		}
		live[rt.id] = blobData
		return nil
	})
	return live, err
}

// root is something the roots reference directly: a tree (a volume version) or a data
// chunk named by a journal.
type root struct {
	object string
	volume string // the volume's name; empty for a journal's chunks
	tree   bool
	id     ID
	level  uint8
}

// forEachHeadRoot calls fn for the tree of every epoch's head object under prefix
// (fence.go): an older writer's may be read by nobody, but marking it costs little. A
// head object that is gone when read was replaced by a newer epoch's, which may have
// been stored after the listing: the heads are listed again until none is missed.
func (r *Repo) forEachHeadRoot(ctx context.Context, prefix string, fn func(root) error) error {
	done := map[string]bool{}
	for again := true; again; {
		again = false
		heads, err := r.headObjects(ctx, prefix)
		if err != nil {
			return err
		}
		for _, name := range heads {
			if done[name] {
				continue
			}
			done[name] = true
			plain, err := r.getSealed(ctx, name)
			if errors.Is(err, backend.ErrNotFound) {
				again = true
				continue
			}
			if err != nil {
				return err
			}
			hs, err := decodeHeadState(plain)
			if err != nil {
				return corrupt(name, err)
			}
			if err := fn(root{object: name, volume: hs.Volume, tree: true, id: hs.Root, level: hs.RootLevel}); err != nil {
				return err
			}
		}
	}
	return nil
}

// forEachRoot calls fn for every tree root of every head and PIT, and every chunk named
// by a head journal. A reference moves from a journal to its head's checkpoint to a PIT
// manifest, each written before the one before it is removed or replaced; so roots are
// read in that order: journals, then their head, then (after every head) the manifests.
// Read otherwise, a PIT sealed during the mark from a head that has moved on since
// would be missed.
func (r *Repo) forEachRoot(ctx context.Context, fn func(root) error) error {
	heads := map[string]bool{}
	if err := r.be.List(ctx, "heads/", func(oi backend.ObjectInfo) error {
		i := strings.LastIndexByte(oi.Name, '/')
		heads[oi.Name[:i+1]] = true
		return nil
	}); err != nil {
		return fmt.Errorf("list heads: %w", err)
	}
	prefixes := make([]string, 0, len(heads))
	for p := range heads {
		prefixes = append(prefixes, p)
	}
	sort.Strings(prefixes)
	for _, prefix := range prefixes {
		var journals []string
		if err := r.be.List(ctx, prefix+"j-", func(oi backend.ObjectInfo) error {
			journals = append(journals, oi.Name)
			return nil
		}); err != nil {
			return err
		}
		for _, name := range journals {
			plain, err := r.getSealed(ctx, name)
			if errors.Is(err, backend.ErrNotFound) {
				continue // folded into the checkpoint read below
			}
			if err != nil {
				return err
			}
			j, err := decodeJournal(plain)
			if err != nil {
				return corrupt(name, err)
			}
			for _, e := range j.Entries {
				if e.Block != resizeMark && !e.ID.IsZero() {
					if err := fn(root{object: name, id: e.ID}); err != nil {
						return err
					}
				}
			}
		}
		if err := r.forEachHeadRoot(ctx, prefix, fn); err != nil {
			return err
		}
	}
	// PIT manifests last: a PIT sealed while the heads were read is listed here.
	var manifests []string
	if err := r.be.List(ctx, "snapshots/", func(oi backend.ObjectInfo) error {
		manifests = append(manifests, oi.Name)
		return nil
	}); err != nil {
		return fmt.Errorf("list PITs: %w", err)
	}
	for _, name := range manifests {
		plain, err := r.getSealed(ctx, name)
		if errors.Is(err, backend.ErrNotFound) {
			continue // deleted meanwhile: retention or a user
		}
		if err != nil {
			return err
		}
		p, _, err := r.decodeManifest(name, plain)
		if err != nil {
			return err
		}
		for _, v := range p.Volumes {
			if err := fn(root{object: name, volume: v.Name, tree: true, id: v.Root, level: v.RootLevel}); err != nil {
				return err
			}
		}
	}
	return nil
}

// repackWriter writes live sealed chunks into new packs.
type repackWriter struct {
	r       *Repo
	ctx     context.Context
	buf     []byte
	entries []entry
	index   []packEntries
	bytes   int64
}

func (w *repackWriter) add(e entry, sealed []byte) error {
	if w.buf == nil {
		w.buf = appendPackHeader(make([]byte, 0, w.r.opts.PackSize+len(sealed)+1024))
	}
	e.Offset = uint32(len(w.buf))
	w.buf = append(w.buf, sealed...)
	w.entries = append(w.entries, e)
	if len(w.buf) >= w.r.opts.PackSize {
		return w.finish()
	}
	return nil
}

func (w *repackWriter) finish() error {
	if len(w.entries) == 0 {
		return nil
	}
	r := w.r
	var id ID
	w.buf, id = r.finishPack(w.buf, w.entries)
	if err := r.be.Put(w.ctx, packName(id), w.buf, backend.PutOptions{}); err != nil {
		return fmt.Errorf("gc: write repacked pack: %w", err)
	}
	w.bytes += int64(len(w.buf))
	w.index = append(w.index, packEntries{Pack: id, Entries: w.entries})
	w.buf, w.entries = nil, nil
	return nil
}
