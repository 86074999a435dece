package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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
	Progress        func(stage string)
}

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
// why it is safe while replicators write.
func (r *Repo) GC(ctx context.Context, opts GCOptions) (GCStats, error) {
	start := r.opts.Now()
	var st GCStats
	if opts.Grace == 0 {
		opts.Grace = r.opts.GCGrace
	}
	if opts.RepackThreshold == 0 {
		opts.RepackThreshold = 0.3
	}
	if opts.SmallPack == 0 {
		opts.SmallPack = r.opts.PackSize / 4
	}
	stage := func(s string) {
		r.log.Debug("gc: "+s, "store", r.be.Location())
		if opts.Progress != nil {
			opts.Progress(s)
		}
	}
	stillHeld := func() error { return nil }
	if !opts.DryRun {
		release, held, err := r.lockGC(ctx, start, opts.Grace)
		if err != nil {
			return st, err
		}
		defer release()
		stillHeld = held
	}

	// 1. What the index holds now (the objects we may replace), and the first mark.
	stage("reading the index")
	if err := r.refreshView(ctx, true); err != nil {
		return st, err
	}
	idxNames, packs, err := r.readAllIndex(ctx)
	if err != nil {
		return st, err
	}
	st.Packs = len(packs)
	copies := map[ID]int{}
	for _, p := range packs {
		for _, e := range p.Entries {
			copies[e.ID]++
		}
	}
	st.Chunks = len(copies)
	// A chunk stored less than a grace period ago may belong to blocks a writer has not
	// journaled yet (writers journal within a quarter of it): it is never condemned.
	young, err := r.youngPacks(ctx, start.Add(-opts.Grace))
	if err != nil {
		return st, err
	}
	recent := map[ID]bool{}
	for _, p := range packs {
		if young[p.Pack] {
			for _, e := range p.Entries {
				recent[e.ID] = true
			}
		}
	}
	stage("marking reachable chunks")
	live, err := r.mark(ctx)
	if err != nil {
		return st, fmt.Errorf("gc: %w (nothing was deleted)", err)
	}
	var condemned []ID
	for id := range copies {
		if _, ok := live[id]; !ok && !recent[id] {
			condemned = append(condemned, id)
		}
	}
	st.Condemned = len(condemned)

	// 2. Condemn, wait, mark again.
	dead := map[ID]bool{}
	if len(condemned) > 0 && !opts.DryRun {
		pendName := fmt.Sprintf("gc/pending-%016x-%s", start.UnixNano(), randomHex(4))
		sort.Slice(condemned, func(i, j int) bool { return string(condemned[i][:]) < string(condemned[j][:]) })
		if err := r.putSealed(ctx, pendName, encodeIDs(pendingMagic, condemned), backend.PutOptions{}); err != nil {
			return st, fmt.Errorf("gc: record condemned chunks: %w", err)
		}
		r.mu.Lock()
		r.pending[pendName] = condemned
		for _, id := range condemned {
			r.condemned[id] = struct{}{}
		}
		r.mu.Unlock()
		defer func() {
			// The pending object goes last: until then writers keep avoiding the chunks.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := r.be.Delete(dctx, pendName); err != nil {
				r.log.Warn("gc: could not remove its pending object; writers avoid its chunks until it is removed", "object", pendName, "err", err)
			}
			if err := r.refreshView(dctx, true); err != nil {
				r.log.Warn("gc: could not reload the index", "err", err)
			}
		}()
		stage(fmt.Sprintf("condemned %d chunks; waiting %s for writers to learn of it", len(condemned), opts.Grace))
		select {
		case <-time.After(opts.Grace):
		case <-ctx.Done():
			return st, ctx.Err()
		}
		stage("marking again")
		live2, err := r.mark(ctx)
		if err != nil {
			return st, fmt.Errorf("gc: %w (nothing was deleted)", err)
		}
		for _, id := range condemned {
			if _, ok := live2[id]; ok {
				st.Resurrected++
				live[id] = blobData
			} else {
				dead[id] = true
			}
		}
	} else {
		for _, id := range condemned {
			dead[id] = true
		}
	}
	st.DeadChunks = len(dead)
	st.LiveChunks = st.Chunks - st.DeadChunks

	// 3. Plan: which packs to delete, keep or repack; one copy of each live chunk.
	type packPlan struct {
		p        packEntries
		size     int64
		deadSize int64
		action   string // keep, repack, delete
	}
	plans := make([]*packPlan, 0, len(packs))
	for _, p := range packs {
		pp := &packPlan{p: p}
		for _, e := range p.Entries {
			pp.size += int64(e.Length)
			if dead[e.ID] {
				pp.deadSize += int64(e.Length)
			}
		}
		plans = append(plans, pp)
	}
	small := 0
	for _, pp := range plans {
		if pp.deadSize == 0 && pp.size < int64(opts.SmallPack) {
			small++
		}
	}
	for _, pp := range plans {
		switch {
		case pp.deadSize == pp.size:
			pp.action = "delete"
		case float64(pp.deadSize) >= opts.RepackThreshold*float64(pp.size):
			pp.action = "repack"
		case pp.size < int64(opts.SmallPack) && small > 1:
			pp.action = "repack"
		default:
			pp.action = "keep"
		}
	}
	// Live chunks held by a kept pack need no copy; others get exactly one.
	have := map[ID]bool{}
	var newIndex []packEntries
	for _, pp := range plans {
		if pp.action != "keep" {
			continue
		}
		var keepEntries []entry
		for _, e := range pp.p.Entries {
			if dead[e.ID] || have[e.ID] {
				continue
			}
			have[e.ID] = true
			keepEntries = append(keepEntries, e)
		}
		newIndex = append(newIndex, packEntries{Pack: pp.p.Pack, Entries: keepEntries})
	}
	// Orphans: packs in the backend that no index names, old enough that no writer
	// can still be about to index them.
	inIndex := map[ID]bool{}
	for _, p := range packs {
		inIndex[p.Pack] = true
	}
	var orphans []string
	if err := r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		id, err := ParseID(oi.Name[strings.LastIndexByte(oi.Name, '/')+1:])
		if err != nil || inIndex[id] || r.packKnown(id) {
			return nil
		}
		if oi.ModTime.Before(start.Add(-opts.Grace)) {
			orphans = append(orphans, oi.Name)
		}
		return nil
	}); err != nil {
		return st, fmt.Errorf("gc: list packs: %w", err)
	}
	if opts.DryRun {
		for _, pp := range plans {
			switch pp.action {
			case "delete":
				st.DeletedPacks++
				st.FreedBytes += pp.size
			case "repack":
				st.RepackedPacks++
				st.FreedBytes += pp.deadSize
			}
		}
		st.OrphanPacks = len(orphans)
		st.Duration = r.opts.Now().Sub(start)
		return st, nil
	}

	// 4. Repack. Nothing is changed if another collection took the lock meanwhile.
	if err := stillHeld(); err != nil {
		return st, err
	}
	stage("repacking")
	w := &repackWriter{r: r, ctx: ctx}
	for _, pp := range plans {
		if pp.action != "repack" {
			continue
		}
		var need []entry
		for _, e := range pp.p.Entries {
			if !dead[e.ID] && !have[e.ID] {
				need = append(need, e)
			}
		}
		if len(need) > 0 {
			data, err := r.be.Get(ctx, packName(pp.p.Pack))
			if err != nil {
				return st, fmt.Errorf("gc: read pack to repack: %w", err)
			}
			for _, e := range need {
				end := int64(e.Offset) + int64(e.Length)
				if end > int64(len(data)) {
					return st, corrupt(packName(pp.p.Pack), fmt.Errorf("chunk %s lies past the pack's end", e.ID))
				}
				if err := w.add(e, data[e.Offset:end]); err != nil {
					return st, err
				}
				have[e.ID] = true
			}
		}
		st.RepackedPacks++
	}
	if err := w.finish(); err != nil {
		return st, err
	}
	newIndex = append(newIndex, w.index...)
	st.NewPacks = len(w.index)

	// 5. The new index, then remove what it replaces.
	stage("writing the new index")
	const perObject = 50000
	var batch []packEntries
	n := 0
	// Index objects are named by their content: a collection that changes nothing
	// writes the very objects it read, which must then not be deleted.
	wrote := map[string]bool{}
	flushIndex := func() error {
		if len(batch) == 0 {
			return nil
		}
		plain := encodeIndex(batch)
		name := indexName(ID(blake3.Sum256(plain)))
		if err := r.putSealed(ctx, name, plain, backend.PutOptions{}); err != nil {
			return fmt.Errorf("gc: write index: %w", err)
		}
		wrote[name] = true
		batch, n = nil, 0
		return nil
	}
	for _, pe := range newIndex {
		if len(pe.Entries) == 0 {
			continue
		}
		batch = append(batch, pe)
		n += len(pe.Entries)
		if n >= perObject {
			if err := flushIndex(); err != nil {
				return st, err
			}
		}
	}
	if err := flushIndex(); err != nil {
		return st, err
	}
	// Packs that an index object written by someone else since step 1 names stay (a
	// collection that overlapped ours despite the lock); so does everything if we lost it.
	if err := stillHeld(); err != nil {
		return st, err
	}
	foreign, err := r.packsNamedElsewhere(ctx, idxNames, wrote)
	if err != nil {
		return st, err
	}
	stage("removing replaced index objects and packs")
	for _, name := range idxNames {
		if wrote[name] {
			continue
		}
		if err := r.be.Delete(ctx, name); err != nil {
			return st, fmt.Errorf("gc: remove old index object: %w", err)
		}
	}
	var freed int64
	del := func(name string, size int64) error {
		err := r.be.Delete(ctx, name)
		switch {
		case errors.Is(err, backend.ErrLocked):
			st.LockedPacks++
			return nil
		case err != nil:
			return fmt.Errorf("gc: remove pack: %w", err)
		}
		freed += size
		return nil
	}
	for _, pp := range plans {
		if foreign[pp.p.Pack] {
			continue
		}
		if pp.action == "delete" {
			st.DeletedPacks++
		}
		if pp.action != "keep" {
			if err := del(packName(pp.p.Pack), pp.size); err != nil {
				return st, err
			}
		}
	}
	for _, name := range orphans {
		if err := del(name, 0); err != nil {
			return st, err
		}
	}
	st.OrphanPacks = len(orphans)
	st.FreedBytes = freed - w.bytes
	st.Duration = r.opts.Now().Sub(start)
	stage(fmt.Sprintf("done: %d dead chunks, %d packs deleted, %d repacked into %d", st.DeadChunks, st.DeletedPacks, st.RepackedPacks, st.NewPacks))
	return st, nil
}

// youngPacks returns the packs stored after before.
func (r *Repo) youngPacks(ctx context.Context, before time.Time) (map[ID]bool, error) {
	out := map[ID]bool{}
	err := r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		if !oi.ModTime.Before(before) {
			if id, err := ParseID(oi.Name[strings.LastIndexByte(oi.Name, '/')+1:]); err == nil {
				out[id] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: list packs: %w", err)
	}
	return out, nil
}

// packKnown reports whether this process knows a pack (it may have just written it).
func (r *Repo) packKnown(id ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.packNum[id]
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
func (r *Repo) mark(ctx context.Context) (map[ID]blobType, error) {
	live := map[ID]blobType{}
	var walk func(id ID, level uint8) error
	walk = func(id ID, level uint8) error {
		if id.IsZero() {
			return nil
		}
		if _, seen := live[id]; seen {
			return nil
		}
		live[id] = blobTree
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
	tree   bool
	id     ID
	level  uint8
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
		plain, err := r.getSealed(ctx, prefix+"head")
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		hs, err := decodeHeadState(plain)
		if err != nil {
			return corrupt(prefix+"head", err)
		}
		if err := fn(root{object: prefix + "head", tree: true, id: hs.Root, level: hs.RootLevel}); err != nil {
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
			if err := fn(root{object: name, tree: true, id: v.Root, level: v.RootLevel}); err != nil {
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
