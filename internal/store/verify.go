package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// ReadData reads every pack in full: its hash must match its name, and every chunk
	// must decrypt, decompress and hash to its id.
	ReadData    bool
	Parallelism int                                 // default 2×GOMAXPROCS
	Progress    func(stage string, done, total int) // optional
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
// problems are in the report. It may run while replicators write.
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
	v.progress("rollbacks", 0, 1)
	if err := r.verifyRecords(ctx, v.fail); err != nil {
		return v.rep, err
	}
	return v.rep, nil
}

// verifier is one run of Verify: the report it fills and what its steps (index, packs,
// references) hand on to the next. A step returns an error only when Verify cannot go
// on; problems go to the report through fail.
type verifier struct {
	r    *Repo
	opts VerifyOptions

	mu  sync.Mutex // guards rep.Errors and rep.Warnings: packs are checked in parallel
	rep VerifyReport

	names   []string                // the index objects listed by index
	indexed map[ID]map[uint32]entry // pack → offset → entry, from names
	chunks  map[ID]bool             // chunks in the index; references adds those indexed since

	// The reference walk.
	seenNode map[ID]bool    // tree nodes walked
	data     map[ID]bool    // data chunks referenced
	late     map[ID]lateRef // references to chunks not in chunks, decided after the walk
	final    bool           // the index was read again: a chunk it lacks is missing
}

// lateRef is a reference to a chunk the listed index did not hold: the object that
// names it and, for a tree node, its level.
type lateRef struct {
	object string
	tree   bool
	level  uint8
}

// fail records a problem. It is safe for concurrent use.
func (v *verifier) fail(format string, args ...any) {
	v.mu.Lock()
	v.rep.Errors = append(v.rep.Errors, fmt.Sprintf(format, args...))
	v.mu.Unlock()
}

func (v *verifier) progress(stage string, done, total int) {
	if v.opts.Progress != nil {
		v.opts.Progress(stage, done, total)
	}
}

// index reads the index, object by object, into indexed and chunks.
func (v *verifier) index(ctx context.Context) error {
	if err := v.r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		v.names = append(v.names, oi.Name)
		return nil
	}); err != nil {
		return fmt.Errorf("list the index: %w", err)
	}
	v.rep.IndexObjects = len(v.names)
	v.indexed = map[ID]map[uint32]entry{}
	v.chunks = map[ID]bool{}
	for i, name := range v.names {
		v.progress("index", i, len(v.names))
		ps, err := v.r.loadIndexObject(ctx, name)
		if err != nil {
			if isBackendFailure(err) {
				return err
			}
			v.fail("%v", err)
			continue
		}
		for _, p := range ps {
			m := v.indexed[p.Pack]
			if m == nil {
				m = map[uint32]entry{}
				v.indexed[p.Pack] = m
			}
			for _, e := range p.Entries {
				if old, ok := m[e.Offset]; ok && old != e {
					v.fail("%s: pack %s offset %d is listed as two different chunks", name, p.Pack, e.Offset)
				}
				m[e.Offset] = e
				v.chunks[e.ID] = true
			}
		}
	}
	v.rep.Chunks = len(v.chunks)
	return nil
}

// packs checks every pack against the index (verifyPack), in parallel, and that every
// pack the index lists exists.
func (v *verifier) packs(ctx context.Context) error {
	var packs []backend.ObjectInfo
	if err := v.r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		packs = append(packs, oi)
		return nil
	}); err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	v.rep.Packs = len(packs)
	present := map[ID]bool{}
	var done atomic.Int64
	var readChunks, readBytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.opts.Parallelism)
	for _, oi := range packs {
		id, err := ParseID(oi.Name[strings.LastIndexByte(oi.Name, '/')+1:])
		if err != nil || packName(id) != oi.Name {
			v.fail("%s: not a pack name", oi.Name)
			continue
		}
		present[id] = true
		want := v.indexed[id]
		if want == nil {
			v.mu.Lock()
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s: no index names this pack (left by an interrupted write; lifeboat store gc removes it)", oi.Name))
			v.mu.Unlock()
		}
		g.Go(func() error {
			defer func() { v.progress("packs", int(done.Add(1)), len(packs)) }()
			n, b, err := v.r.verifyPack(gctx, oi, id, want, v.opts.ReadData, v.fail)
			readChunks.Add(int64(n))
			readBytes.Add(b)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	v.rep.ReadChunks, v.rep.ReadBytes = int(readChunks.Load()), readBytes.Load()
	for id := range v.indexed {
		if !present[id] {
			v.fail("%s: the index lists this pack but it does not exist (its chunks are lost)", packName(id))
		}
	}
	return nil
}

// references walks the references from PITs and heads. A reference to a chunk the
// index did not list is decided after the walk, with the index objects stored since
// (lateRefs): on a live store, a head or journal read now may name chunks indexed
// after the index was listed.
func (v *verifier) references(ctx context.Context) error {
	v.progress("references", 0, 1)
	v.seenNode = map[ID]bool{}
	v.data = map[ID]bool{}
	v.late = map[ID]lateRef{}
	heads := map[string]bool{}
	err := v.r.forEachRoot(ctx, func(rt root) error {
		switch {
		case strings.HasPrefix(rt.object, "snapshots/"):
			if rt.tree && !heads[rt.object] {
				heads[rt.object] = true
				v.rep.PITs++
			}
		case strings.HasSuffix(rt.object, "/head"):
			v.rep.Heads++
		}
		if rt.tree {
			return v.walk(ctx, rt.object, rt.id, rt.level)
		}
		v.dataRef(rt.object, rt.id)
		return nil
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
	return nil
}

// lateRefs decides the references to chunks the listed index lacked: it adds the index
// objects stored since the listing to chunks, then checks those references again, this
// time final.
func (v *verifier) lateRefs(ctx context.Context) error {
	listed := make(map[string]bool, len(v.names))
	for _, n := range v.names {
		listed[n] = true
	}
	ps, err := v.r.readIndexExcept(ctx, listed)
	if err != nil {
		if isBackendFailure(err) {
			return err
		}
		v.fail("%v", err)
	}
	for _, p := range ps {
		for _, e := range p.Entries {
			v.chunks[e.ID] = true
		}
	}
	v.final = true
	for id, l := range v.late {
		if !l.tree {
			v.dataRef(l.object, id)
		} else if err := v.walk(ctx, l.object, id, l.level); err != nil {
			if isBackendFailure(err) {
				return err
			}
			v.fail("%v", err)
		}
	}
	return nil
}

// dataRef counts a reference from object to data chunk id, or defers it to lateRefs.
func (v *verifier) dataRef(object string, id ID) {
	switch {
	case v.data[id]:
	case v.chunks[id]:
		v.data[id] = true
	case !v.final:
		v.late[id] = lateRef{object: object}
	default:
		v.data[id] = true
		v.fail("%s: data chunk %s is not in the repository", object, id)
	}
}

// walk checks tree node id of the given level, referenced from object, and everything
// below it once; a node not in chunks is deferred to lateRefs.
func (v *verifier) walk(ctx context.Context, object string, id ID, level uint8) error {
	if id.IsZero() || v.seenNode[id] {
		return nil
	}
	if !v.chunks[id] && !v.final {
		v.late[id] = lateRef{object: object, tree: true, level: level}
		return nil
	}
	v.seenNode[id] = true
	v.rep.TreeNodes++
	if !v.chunks[id] {
		v.fail("%s: tree node %s is not in the repository", object, id)
		return nil
	}
	if l, _, ok := v.r.lookup(id); ok && l.typ != blobTree {
		v.fail("%s: tree node %s is stored as data", object, id)
		return nil
	}
	children, err := v.r.loadNode(ctx, id, level)
	if err != nil {
		if isBackendFailure(err) {
			return err
		}
		v.fail("%s: tree node %s: %v", object, id, err)
		return nil
	}
	for _, c := range children {
		if c.IsZero() {
			continue
		}
		if level == 0 {
			v.dataRef(object, c)
		} else if err := v.walk(ctx, object, c, level-1); err != nil {
			return err
		}
	}
	return nil
}

// isBackendFailure tells a failure to read (verify cannot go on) from damage (a finding).
func isBackendFailure(err error) bool {
	return !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) && !errors.Is(err, backend.ErrNotFound) &&
		!errors.Is(err, errFormat) && !errors.Is(err, backend.ErrOutOfRange)
}

// verifyPack checks one pack against the index entries that name it.
func (r *Repo) verifyPack(ctx context.Context, oi backend.ObjectInfo, id ID, want map[uint32]entry, readData bool,
	fail func(string, ...any)) (int, int64, error) {
	name := oi.Name
	var data []byte
	var err error
	if readData {
		data, err = r.be.Get(ctx, name)
		if err != nil {
			if isBackendFailure(err) {
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
		if isBackendFailure(err) {
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

// verifyRecords checks what the store recorded of its own history
// (docs/store-format.md §10): each PIT's link to the one before it, each lock record
// against its manifest, each head against the newest version a PIT sealed of it.
// Damaged objects are left to the reference walk, which reports them.
//
// It is correct on a live store: manifests are read before heads, and a head object is
// written before any manifest that records its version, so a head read after a
// manifest is never older than it unless it was put back; a manifest that looks less
// locked than its record is read again, as ProtectPIT writes the manifest first.
func (r *Repo) verifyRecords(ctx context.Context, fail func(string, ...any)) error {
	pits, err := r.readManifests(ctx, "snapshots/", func(string, error) {})
	if err != nil {
		return err
	}
	byServer := map[string][]PIT{}
	manifests := map[string]PIT{}         // object name → PIT
	evidence := map[string]headEvidence{} // head object name → newest version a PIT sealed
	for _, p := range pits {
		byServer[p.Server] = append(byServer[p.Server], p)
		manifests[snapshotName(p.Server, p.ID)] = p
		for _, v := range p.Volumes {
			name := headPrefix(p.Server, v.Name) + "head"
			if v.HeadVersion > evidence[name].Version {
				evidence[name] = headEvidence{Version: v.HeadVersion, PIT: p.ID}
			}
		}
	}
	for server, ps := range byServer {
		verifyChain(server, ps, manifests, fail)
	}
	if err := r.verifyLocks(ctx, manifests, fail); err != nil {
		return err
	}

	// Heads, read after the manifests.
	var heads []string
	if err := r.be.List(ctx, "heads/", func(oi backend.ObjectInfo) error {
		if strings.HasSuffix(oi.Name, "/head") {
			heads = append(heads, oi.Name)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list heads: %w", err)
	}
	const remedy = "restore the newer head object from a backup or the bucket's object versions; until then the replicator refuses the volume (or accept the rollback so that its source resends it whole)"
	for _, name := range heads {
		plain, err := r.getSealed(ctx, name)
		if errors.Is(err, backend.ErrNotFound) || (err != nil && !isBackendFailure(err)) {
			continue
		}
		if err != nil {
			return err
		}
		st, err := decodeHeadState(plain)
		if err != nil {
			continue
		}
		if ev := evidence[name]; st.Version < ev.Version {
			fail("%s: the head of %s/%s is version %d, but PIT %s sealed version %d of it: someone put back an old head object: %s",
				name, st.Server, st.Volume, st.Version, ev.PIT, ev.Version, remedy)
		}
		delete(evidence, name)
	}
	for name, ev := range evidence {
		fail("%s: the head is missing, but PIT %s sealed version %d of it: someone deleted it: %s", name, ev.PIT, ev.Version, remedy)
	}
	return nil
}

// verifyChain checks the chain of one server's PITs: sequence numbers are unique, and
// each PIT's link to the one before it names that PIT's digest and sequence number. A
// link to a PIT that is gone is no finding: retention deletes PITs.
func verifyChain(server string, ps []PIT, manifests map[string]PIT, fail func(string, ...any)) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Seq < ps[j].Seq })
	for i, p := range ps {
		if i > 0 && ps[i-1].Seq == p.Seq {
			fail("%s: PITs %s and %s of server %s both have sequence number %d: two replicators sealed PITs of the server at once (check its assignment), or a manifest was forged by a holder of the key",
				snapshotName(server, p.ID), ps[i-1].ID, p.ID, server, p.Seq)
		}
		if p.Prev == nil {
			continue
		}
		prev, ok := manifests[snapshotName(server, p.Prev.ID)]
		switch {
		case !ok:
		case prev.Digest != p.Prev.Digest:
			fail("%s: its content has digest %s, but PIT %s, sealed after it, recorded %s: the manifest was replaced by another version (put back or forged by a holder of the key): restore it from a backup or the bucket's object versions, and do not recover from it until then",
				snapshotName(server, prev.ID), prev.Digest, p.ID, p.Prev.Digest)
		case prev.Seq+1 != p.Seq:
			fail("%s: PIT %s follows it with sequence number %d, but it has %d: the chain of PITs of server %s is broken (a manifest was forged by a holder of the key)",
				snapshotName(server, prev.ID), p.ID, p.Seq, prev.Seq, server)
		}
	}
}

// verifyLocks checks every lock record against its PIT's manifest: the manifest must
// exist while the lock lasts, hold the same content, and be locked at least as long.
func (r *Repo) verifyLocks(ctx context.Context, manifests map[string]PIT, fail func(string, ...any)) error {
	var names []string
	if err := r.be.List(ctx, "locks/", func(oi backend.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return fmt.Errorf("list lock records: %w", err)
	}
	now := r.opts.Now()
	for _, name := range names {
		plain, err := r.getSealed(ctx, name)
		if errors.Is(err, backend.ErrNotFound) {
			continue // removed with its PIT meanwhile
		}
		if err != nil && isBackendFailure(err) {
			return err
		}
		var rec lockRecord
		if err == nil {
			rec, err = decodeLockRecord(name, plain)
		}
		if err != nil {
			fail("%v", err)
			continue
		}
		p, ok := manifests[snapshotName(rec.Server, rec.PIT)]
		if !ok || p.LockUntil.Before(rec.LockUntil) {
			// Sealed or protected since the manifests were read? Read it again.
			p, err = r.LoadPIT(ctx, rec.Server, rec.PIT)
			ok = err == nil
			if err != nil && isBackendFailure(err) {
				return err
			}
		}
		switch {
		case !ok && now.Before(rec.LockUntil):
			fail("%s: PIT %s of server %s is locked until %s, but its manifest is missing or damaged: it was deleted or damaged despite its lock: restore it from a backup or the bucket's object versions",
				name, rec.PIT, rec.Server, rec.LockUntil.Format(time.RFC3339))
		case !ok:
		case p.Digest != rec.Digest:
			fail("%s: PIT %s of server %s was locked with digest %s, but its manifest has digest %s: the manifest was replaced by another version: restore it from a backup or the bucket's object versions",
				name, rec.PIT, rec.Server, rec.Digest, p.Digest)
		case p.LockUntil.Before(rec.LockUntil):
			fail("%s: PIT %s of server %s is locked until %s, but its manifest says %s: an older manifest was put back; the lock still holds (Lifeboat keeps the PIT): protect the PIT again to repair its manifest",
				name, rec.PIT, rec.Server, rec.LockUntil.Format(time.RFC3339), lockText(p.LockUntil))
		}
	}
	return nil
}

func lockText(t time.Time) string {
	if t.IsZero() {
		return "unlocked"
	}
	return "locked until " + t.Format(time.RFC3339)
}
