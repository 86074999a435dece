package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// ReadData reads every pack in full: its hash must match its name, and every chunk
	// must decrypt, decompress and hash to its id.
	ReadData    bool
	Parallelism int // default 2×GOMAXPROCS
	// Progress, when set, is told how far each step is: "index" (index objects read),
	// "packs" (packs checked; concurrently, from several goroutines), "references" (tree
	// nodes walked; total 0: not known) and "rollbacks" (0 of 0).
	Progress func(stage string, done, total int)
}

// VerifyReport is what Verify checked and every problem it found, each naming the
// object concerned.
type VerifyReport struct {
	IndexObjects int      `json:"indexObjects"`
	Packs        int      `json:"packs"`
	Chunks       int      `json:"chunks"`
	PITs         int      `json:"pits"`
	Heads        int      `json:"heads"`
	TreeNodes    int      `json:"treeNodes"`
	DataRefs     int      `json:"dataRefs"`   // distinct data chunks referenced
	ReadChunks   int      `json:"readChunks"` // chunks read and checked (ReadData)
	ReadBytes    int64    `json:"readBytes"`  // pack bytes read (ReadData)
	Errors       []string `json:"errors"`
	Warnings     []string `json:"warnings"`
}

// OK reports whether no error was found.
func (v VerifyReport) OK() bool { return len(v.Errors) == 0 }

// Verify checks the repository: every index object decodes; every pack exists, its
// own index (trailer) authenticates and agrees with the global index; every PIT and
// head decodes and every tree node and chunk it references exists (and, with
// ReadData, every chunk's content); and nothing was rolled back: every PIT chain link
// holds, no manifest is less locked than its lock record, and no head is older than a
// PIT sealed from it (verifyRecords). It returns an error only when it could not run;
// problems are in the report.
//
// It tells the truth while replicators write and garbage collections run, in this
// process or others: it judges everything against one view of the index, and before it
// reports something missing it looks again (docs/store-format.md §10). A pack gone that
// no index object names any more was removed by a collection; a chunk indexed since the
// listing is there; a reference from a journal, head or PIT removed or moved on since
// is no reference. A pack the index still names that does not exist is lost, and so is
// every block whose chunk it held: the report names the pack and each head, journal
// and PIT that loses blocks.
func (r *Repo) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 2 * r.opts.Parallelism
	}
	v := &verifier{r: r, opts: opts}
	if err := v.index(ctx); err != nil {
		return v.rep, err
	}
	if err := v.packs(ctx); err != nil {
		return v.rep, err
	}
	if err := v.references(ctx); err != nil {
		return v.rep, err
	}
	// What the store recorded of its own history.
	v.progress("rollbacks", 0, 0)
	if err := r.verifyRecords(ctx, v.fail); err != nil {
		return v.rep, err
	}
	return v.rep, nil
}

// verifier is one run of Verify: the report it fills and what its steps (index, packs,
// references) hand on to the next. A step returns an error only when Verify cannot go
// on; problems go to the report through fail, or, when they may be the work of a
// writer or a collection, through suspect, to be looked at again first.
type verifier struct {
	r    *Repo
	opts VerifyOptions

	mu  sync.Mutex // guards rep.Errors and rep.Warnings: packs are checked in parallel
	rep VerifyReport

	// The view of the index: every index object read (listed at the start, or since by
	// refresh), and what they list.
	read    map[string]bool         // index objects read
	present map[string]bool         // index objects in the latest listing
	indexed map[ID]map[uint32]entry // pack → offset → entry
	namedBy map[ID][]string         // pack → the index objects that name it
	chunks  map[ID]bool             // chunks in the view

	// What the packs step found: chunks whose every copy was in a missing pack.
	lost map[ID]bool

	// The reference walk.
	seenNode  map[ID]bool      // tree nodes walked
	lostUnder map[ID]loss      // what the tree nodes walked lose, when they lose anything
	data      map[ID]bool      // data chunks referenced
	late      map[ID]lateRef   // references to chunks not in chunks, decided after the walk
	final     bool             // the view was refreshed: a chunk it lacks is missing
	losses    map[ref]loss     // what each root loses to missing packs
	suspects  map[ref][]string // findings reported unless their root is gone
}

// ref is a root being walked: the object that names it (a journal, head or PIT
// manifest), the volume and the tree root it names (zero for a journal).
type ref struct {
	object string
	volume string
	root   ID
}

// lateRef is a reference to a chunk the view did not hold: the root that names it and,
// for a tree node, its level.
type lateRef struct {
	ref   ref
	tree  bool
	level uint8
}

// loss is what a root or tree node loses to missing packs: blocks whose chunk was in
// one, and tree nodes that were (the blocks below them are lost, uncounted).
type loss struct {
	blocks int
	nodes  int
}

func (l loss) add(o loss) loss { return loss{l.blocks + o.blocks, l.nodes + o.nodes} }

// fail records a problem. It is safe for concurrent use.
func (v *verifier) fail(format string, args ...any) {
	v.mu.Lock()
	v.rep.Errors = append(v.rep.Errors, fmt.Sprintf(format, args...))
	v.mu.Unlock()
}

func (v *verifier) warn(format string, args ...any) {
	v.mu.Lock()
	v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf(format, args...))
	v.mu.Unlock()
}

func (v *verifier) progress(stage string, done, total int) {
	if v.opts.Progress != nil {
		v.opts.Progress(stage, done, total)
	}
}

// index reads the index as listed now: the view the other steps judge against.
func (v *verifier) index(ctx context.Context) error {
	v.read = map[string]bool{}
	v.indexed = map[ID]map[uint32]entry{}
	v.namedBy = map[ID][]string{}
	v.chunks = map[ID]bool{}
	return v.refresh(ctx, "index")
}

// refresh lists the index and reads the objects it has not read yet into the view. An
// object removed between the listing and the read was replaced by a collection, whose
// new objects a later listing shows: it is skipped.
func (v *verifier) refresh(ctx context.Context, stage string) error {
	var names []string
	if err := v.r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return fmt.Errorf("list the index: %w", err)
	}
	v.present = make(map[string]bool, len(names))
	for i, name := range names {
		v.present[name] = true
		if v.read[name] {
			continue
		}
		v.progress(stage, i, len(names))
		v.read[name] = true
		v.rep.IndexObjects++
		ps, err := v.r.loadIndexObject(ctx, name)
		switch {
		case errors.Is(err, backend.ErrNotFound):
			continue
		case err != nil && isBackendFailure(err):
			return err
		case err != nil:
			v.fail("%v", err)
			continue
		}
		v.add(name, ps)
	}
	v.rep.Chunks = len(v.chunks)
	return nil
}

// add puts what index object name lists into the view.
func (v *verifier) add(name string, ps []packEntries) {
	for _, p := range ps {
		m := v.indexed[p.Pack]
		if m == nil {
			m = map[uint32]entry{}
			v.indexed[p.Pack] = m
		}
		v.namedBy[p.Pack] = append(v.namedBy[p.Pack], name)
		for _, e := range p.Entries {
			if old, ok := m[e.Offset]; ok && old != e {
				v.fail("%s: pack %s offset %d is listed as two different chunks", name, p.Pack, e.Offset)
			}
			m[e.Offset] = e
			v.chunks[e.ID] = true
		}
	}
}

// packs checks every pack against the index (verifyPack), in parallel, and that every
// pack the index names exists. It lists the packs, then refreshes the view, so that a
// pack stored and indexed meanwhile is checked against its index entries; a pack that
// no index names is reported only once it is older than the GC grace period (a
// younger one may be a writer's, about to be indexed). Packs that turn out missing are
// confirmed (confirmMissing) before anything is reported.
func (v *verifier) packs(ctx context.Context) error {
	var packs []backend.ObjectInfo
	if err := v.r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		packs = append(packs, oi)
		return nil
	}); err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	if err := v.refresh(ctx, "index"); err != nil {
		return err
	}
	v.rep.Packs = len(packs)
	present := map[ID]bool{}
	gone := map[ID]bool{} // removed while being read
	var done atomic.Int64
	var readChunks, readBytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.opts.Parallelism)
	orphanAge := v.r.opts.Now().Add(-v.r.opts.GCGrace)
	for _, oi := range packs {
		id, err := ParseID(oi.Name[strings.LastIndexByte(oi.Name, '/')+1:])
		if err != nil || packName(id) != oi.Name {
			v.fail("%s: not a pack name", oi.Name)
			continue
		}
		present[id] = true
		want := v.indexed[id]
		if want == nil && oi.ModTime.Before(orphanAge) {
			v.warn("%s: no index names this pack (left by an interrupted write; lifeboat store gc removes it)", oi.Name)
		}
		g.Go(func() error {
			defer func() { v.progress("packs", int(done.Add(1)), len(packs)) }()
			n, b, err := v.r.verifyPack(gctx, oi, id, want, v.opts.ReadData, v.fail)
			readChunks.Add(int64(n))
			readBytes.Add(b)
			if errors.Is(err, backend.ErrNotFound) {
				v.mu.Lock()
				gone[id] = true
				v.mu.Unlock()
				return nil
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	v.rep.ReadChunks, v.rep.ReadBytes = int(readChunks.Load()), readBytes.Load()
	for id := range v.indexed {
		if !present[id] {
			gone[id] = true
		}
	}
	return v.confirmMissing(ctx, gone)
}

// confirmMissing decides about the packs found gone: it refreshes the view, and a pack
// that no index object still there names was removed by a garbage collection (which
// deletes the index objects naming a pack before the pack): no finding. A pack still
// named that still does not exist is missing, and its chunks are lost unless another
// pack holds them.
func (v *verifier) confirmMissing(ctx context.Context, gone map[ID]bool) error {
	if len(gone) == 0 {
		return nil
	}
	if err := v.refresh(ctx, "index"); err != nil {
		return err
	}
	missing, removed := map[ID]bool{}, map[ID]bool{}
	for id := range gone {
		named := false
		for _, n := range v.namedBy[id] {
			named = named || v.present[n]
		}
		if !named {
			removed[id] = true
			continue
		}
		_, err := v.r.be.Stat(ctx, packName(id))
		switch {
		case errors.Is(err, backend.ErrNotFound):
			missing[id] = true
		case err != nil:
			return fmt.Errorf("look again for pack %s: %w", packName(id), err)
		}
	}
	v.lost = map[ID]bool{}
	ids := make([]ID, 0, len(missing))
	for id := range missing {
		ids = append(ids, id)
	}
	sortIDs(ids)
	for _, id := range ids {
		v.fail("%s: the index lists this pack but it does not exist (its %d chunks are lost)", packName(id), len(v.indexed[id]))
		for _, e := range v.indexed[id] {
			v.lost[e.ID] = true
		}
	}
	for id, es := range v.indexed {
		if missing[id] || removed[id] {
			continue
		}
		for _, e := range es {
			delete(v.lost, e.ID) // another copy
		}
	}
	return nil
}

// references walks the references from PITs and heads. A reference to a chunk the view
// lacks is decided after the walk, with the view refreshed (lateRefs): on a live store,
// a head or journal read now may name chunks indexed after the index was listed.
// Findings of missing chunks are reported only if their root is still there (reportRefs).
func (v *verifier) references(ctx context.Context) error {
	v.progress("references", 0, 0)
	v.seenNode = map[ID]bool{}
	v.lostUnder = map[ID]loss{}
	v.data = map[ID]bool{}
	v.late = map[ID]lateRef{}
	v.losses = map[ref]loss{}
	v.suspects = map[ref][]string{}
	pits := map[string]bool{}
	err := v.r.forEachRoot(ctx, func(rt root) error {
		switch {
		case strings.HasPrefix(rt.object, "snapshots/"):
			if rt.tree && !pits[rt.object] {
				pits[rt.object] = true
				v.rep.PITs++
			}
		case isHeadObject(rt.object):
			v.rep.Heads++
		}
		at := ref{object: rt.object, volume: rt.volume}
		if !rt.tree {
			v.lose(at, loss{blocks: v.dataRef(at, rt.id)})
			return nil
		}
		at.root = rt.id
		l, err := v.walk(ctx, at, rt.id, rt.level)
		v.lose(at, l)
		v.progress("references", len(v.seenNode), 0)
		return err
	})
	if err != nil {
		if isBackendFailure(err) {
			return err
		}
		v.fail("%v", err)
	}
	if len(v.late) > 0 {
		if err := v.lateRefs(ctx); err != nil {
			return err
		}
	}
	v.rep.DataRefs = len(v.data)
	return v.reportRefs(ctx)
}

// lose records what a root loses to missing packs.
func (v *verifier) lose(at ref, l loss) {
	if l != (loss{}) {
		v.losses[at] = v.losses[at].add(l)
	}
}

// suspect records a finding about a chunk missing under root at: reportRefs reports it
// unless the root is gone.
func (v *verifier) suspect(at ref, format string, args ...any) {
	v.suspects[at] = append(v.suspects[at], fmt.Sprintf(format, args...))
}

// lateRefs decides the references to chunks the view lacked: it refreshes the view
// with the index objects stored since, then checks those references again, this time
// final.
func (v *verifier) lateRefs(ctx context.Context) error {
	if err := v.refresh(ctx, "index"); err != nil {
		return err
	}
	v.final = true
	for id, l := range v.late {
		if !l.tree {
			v.lose(l.ref, loss{blocks: v.dataRef(l.ref, id)})
			continue
		}
		lost, err := v.walk(ctx, l.ref, id, l.level)
		if err != nil {
			if isBackendFailure(err) {
				return err
			}
			v.fail("%v", err)
		}
		v.lose(l.ref, lost)
	}
	return nil
}

// dataRef counts a reference from root at to data chunk id, or defers it to lateRefs.
// It returns 1 when the chunk is lost (in a missing pack).
func (v *verifier) dataRef(at ref, id ID) int {
	switch {
	case v.lost[id]:
		v.data[id] = true
		return 1
	case v.data[id]:
	case v.chunks[id]:
		v.data[id] = true
	case !v.final:
		v.late[id] = lateRef{ref: at}
	default:
		v.data[id] = true
		v.suspect(at, "%s: data chunk %s is not in the repository", at.object, id)
	}
	return 0
}

// walk checks tree node id of the given level, under root at, and everything below it
// once; a node not in the view is deferred to lateRefs. It returns what the node loses
// to missing packs.
func (v *verifier) walk(ctx context.Context, at ref, id ID, level uint8) (loss, error) {
	if id.IsZero() {
		return loss{}, nil
	}
	if v.seenNode[id] {
		return v.lostUnder[id], nil
	}
	if !v.chunks[id] && !v.final {
		v.late[id] = lateRef{ref: at, tree: true, level: level}
		return loss{}, nil
	}
	v.seenNode[id] = true
	v.rep.TreeNodes++
	if v.lost[id] {
		v.lostUnder[id] = loss{nodes: 1}
		return loss{nodes: 1}, nil
	}
	if !v.chunks[id] {
		v.suspect(at, "%s: tree node %s is not in the repository", at.object, id)
		return loss{}, nil
	}
	if l, _, ok := v.r.lookup(id); ok && l.typ != blobTree {
		v.fail("%s: tree node %s is stored as data", at.object, id)
		return loss{}, nil
	}
	children, err := v.r.loadNode(ctx, id, level)
	switch {
	case err != nil && isBackendFailure(err):
		return loss{}, err
	case errors.Is(err, ErrNotFound) || errors.Is(err, backend.ErrNotFound):
		v.suspect(at, "%s: tree node %s: %v", at.object, id, err)
		return loss{}, nil
	case err != nil:
		v.fail("%s: tree node %s: %v", at.object, id, err)
		return loss{}, nil
	}
	var lost loss
	for _, c := range children {
		switch {
		case c.IsZero():
		case level == 0:
			lost.blocks += v.dataRef(at, c)
		default:
			l, err := v.walk(ctx, at, c, level-1)
			if err != nil {
				return lost, err
			}
			lost = lost.add(l)
		}
	}
	if lost != (loss{}) {
		v.lostUnder[id] = lost
	}
	return lost, nil
}

// reportRefs reports what the walk found under the roots that are still there: the chunks
// missing, and what each root loses to missing packs, in the order of the objects.
func (v *verifier) reportRefs(ctx context.Context) error {
	roots := map[ref]bool{}
	for at := range v.suspects {
		roots[at] = true
	}
	for at := range v.losses {
		roots[at] = true
	}
	sorted := make([]ref, 0, len(roots))
	for at := range roots {
		sorted = append(sorted, at)
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].object != sorted[j].object {
			return sorted[i].object < sorted[j].object
		}
		return sorted[i].volume < sorted[j].volume
	})
	for _, at := range sorted {
		gone, err := v.rootGone(ctx, at)
		if err != nil {
			return err
		}
		if gone {
			continue
		}
		for _, s := range v.suspects[at] {
			v.fail("%s", s)
		}
		if l, ok := v.losses[at]; ok {
			v.fail("%s: %s are lost: their chunks were in packs that are missing", at.object, l.text(at.volume))
		}
	}
	return nil
}

// text says what a loss is: "volume vda: 4 of its blocks", "2 of its blocks and 1 of
// its tree nodes (with the blocks below them)".
func (l loss) text(volume string) string {
	var parts []string
	if l.blocks > 0 {
		parts = append(parts, fmt.Sprintf("%d of its blocks", l.blocks))
	}
	if l.nodes > 0 {
		parts = append(parts, fmt.Sprintf("%d of its tree nodes (with the blocks below them)", l.nodes))
	}
	s := strings.Join(parts, " and ")
	if volume != "" {
		s = "volume " + volume + ": " + s
	}
	return s
}

// rootGone reports whether the object that named a root no longer does: a journal
// folded into its head, a PIT deleted, a head deleted or moved on to another tree. What
// was missing under it is then no loss (what replaced it is checked by the next run).
func (v *verifier) rootGone(ctx context.Context, at ref) (bool, error) {
	if !isHeadObject(at.object) {
		_, err := v.r.be.Stat(ctx, at.object)
		if errors.Is(err, backend.ErrNotFound) {
			return true, nil
		}
		return false, err
	}
	plain, err := v.r.getSealed(ctx, at.object)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return true, nil
	case err != nil && isBackendFailure(err):
		return false, err
	case err != nil:
		return false, nil // damaged: the walk reported it
	}
	st, err := decodeHeadState(plain)
	return err == nil && st.Root != at.root, nil
}

// isBackendFailure tells a failure to read (verify cannot go on) from damage (a finding).
func isBackendFailure(err error) bool {
	return !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) && !errors.Is(err, backend.ErrNotFound) &&
		!errors.Is(err, errFormat) && !errors.Is(err, backend.ErrOutOfRange)
}

// verifyPack checks one pack against the index entries that name it. It returns
// backend.ErrNotFound when the pack is gone (the caller decides whether it is lost).
func (r *Repo) verifyPack(ctx context.Context, oi backend.ObjectInfo, id ID, want map[uint32]entry, readData bool,
	fail func(string, ...any)) (int, int64, error) {
	name := oi.Name
	var data []byte
	var err error
	if readData {
		data, err = r.be.Get(ctx, name)
		if err != nil {
			if isBackendFailure(err) || errors.Is(err, backend.ErrNotFound) {
				return 0, 0, err
			}
			fail("%s: %v", name, err)
			return 0, 0, nil
		}
	}
	size := oi.Size
	read := func(off, n int64) ([]byte, error) {
		if data != nil {
			if off < 0 || off+n > int64(len(data)) {
				return nil, backend.ErrOutOfRange
			}
			return data[off : off+n], nil
		}
		return r.be.ReadAt(ctx, name, off, n)
	}
	entries, tstart, err := r.readTrailerWith(name, id, size, read)
	if err != nil {
		if isBackendFailure(err) || errors.Is(err, backend.ErrNotFound) {
			return 0, 0, err
		}
		fail("%v", err)
		return 0, int64(len(data)), nil
	}
	if data != nil && ID(blake3.Sum256(data[:tstart])) != id {
		fail("%s: the pack's content does not match its name (corrupt)", name)
	}
	own := map[uint32]entry{}
	for _, e := range entries {
		own[e.Offset] = e
	}
	for off, e := range want {
		if o, ok := own[off]; !ok || o != e {
			fail("%s: the index lists chunk %s at offset %d, the pack does not hold it there", name, e.ID, off)
		}
	}
	n := 0
	if readData {
		for _, e := range entries {
			l := loc{offset: e.Offset, length: e.Length, rawLen: e.RawLen, typ: e.Type}
			p, err := r.openChunk(data[e.Offset:e.Offset+e.Length], l, e.ID, e.Type, name, nil)
			if err != nil {
				fail("%v", err)
				continue
			}
			if r.keys.id(p) != e.ID {
				fail("%s: chunk %s does not hash to its id", name, e.ID)
			}
			n++
		}
	}
	return n, int64(len(data)), nil
}
