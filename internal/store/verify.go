package store

import (
	"context"
	"errors"
	"fmt"
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
// ReadData, every chunk's content). It returns an error only when it could not run;
// problems are in the report.
func (r *Repo) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	var rep VerifyReport
	var mu sync.Mutex
	fail := func(format string, args ...any) {
		mu.Lock()
		rep.Errors = append(rep.Errors, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	if opts.Parallelism <= 0 {
		opts.Parallelism = 2 * r.opts.Parallelism
	}
	progress := func(stage string, done, total int) {
		if opts.Progress != nil {
			opts.Progress(stage, done, total)
		}
	}

	// The index, object by object.
	var names []string
	if err := r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return rep, fmt.Errorf("list the index: %w", err)
	}
	rep.IndexObjects = len(names)
	indexed := map[ID]map[uint32]entry{} // pack → offset → entry
	chunks := map[ID]bool{}
	for i, name := range names {
		progress("index", i, len(names))
		ps, err := r.loadIndexObject(ctx, name)
		if err != nil {
			if isBackendFailure(err) {
				return rep, err
			}
			fail("%v", err)
			continue
		}
		for _, p := range ps {
			m := indexed[p.Pack]
			if m == nil {
				m = map[uint32]entry{}
				indexed[p.Pack] = m
			}
			for _, e := range p.Entries {
				if old, ok := m[e.Offset]; ok && old != e {
					fail("%s: pack %s offset %d is listed as two different chunks", name, p.Pack, e.Offset)
				}
				m[e.Offset] = e
				chunks[e.ID] = true
			}
		}
	}
	rep.Chunks = len(chunks)

	// Packs.
	var packs []backend.ObjectInfo
	if err := r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		packs = append(packs, oi)
		return nil
	}); err != nil {
		return rep, fmt.Errorf("list packs: %w", err)
	}
	rep.Packs = len(packs)
	present := map[ID]bool{}
	var done atomic.Int64
	var readChunks, readBytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Parallelism)
	for _, oi := range packs {
		id, err := ParseID(oi.Name[strings.LastIndexByte(oi.Name, '/')+1:])
		if err != nil || packName(id) != oi.Name {
			fail("%s: not a pack name", oi.Name)
			continue
		}
		present[id] = true
		want := indexed[id]
		if want == nil {
			mu.Lock()
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: no index names this pack (left by an interrupted write; lifeboat store gc removes it)", oi.Name))
			mu.Unlock()
		}
		g.Go(func() error {
			defer func() { progress("packs", int(done.Add(1)), len(packs)) }()
			n, b, err := r.verifyPack(gctx, oi, id, want, opts.ReadData, fail)
			readChunks.Add(int64(n))
			readBytes.Add(b)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}
	rep.ReadChunks, rep.ReadBytes = int(readChunks.Load()), readBytes.Load()
	for id := range indexed {
		if !present[id] {
			fail("%s: the index lists this pack but it does not exist (its chunks are lost)", packName(id))
		}
	}

	// References from PITs and heads.
	progress("references", 0, 1)
	seenNode := map[ID]bool{}
	data := map[ID]bool{}
	var walk func(object string, id ID, level uint8) error
	walk = func(object string, id ID, level uint8) error {
		if id.IsZero() || seenNode[id] {
			return nil
		}
		seenNode[id] = true
		rep.TreeNodes++
		if l, _, ok := r.lookup(id); !ok || !chunks[id] {
			fail("%s: tree node %s is not in the repository", object, id)
			return nil
		} else if l.typ != blobTree {
			fail("%s: tree node %s is stored as data", object, id)
			return nil
		}
		children, err := r.loadNode(ctx, id, level)
		if err != nil {
			if isBackendFailure(err) {
				return err
			}
			fail("%s: tree node %s: %v", object, id, err)
			return nil
		}
		for _, c := range children {
			if c.IsZero() {
				continue
			}
			if level == 0 {
				if !data[c] {
					data[c] = true
					if !chunks[c] {
						fail("%s: data chunk %s is not in the repository", object, c)
					}
				}
			} else if err := walk(object, c, level-1); err != nil {
				return err
			}
		}
		return nil
	}
	heads := map[string]bool{}
	err := r.forEachRoot(ctx, func(rt root) error {
		switch {
		case strings.HasPrefix(rt.object, "snapshots/"):
			if rt.tree && !heads[rt.object] {
				heads[rt.object] = true
				rep.PITs++
			}
		case strings.HasSuffix(rt.object, "/head"):
			rep.Heads++
		}
		if rt.tree {
			return walk(rt.object, rt.id, rt.level)
		}
		if !data[rt.id] {
			data[rt.id] = true
			if !chunks[rt.id] {
				fail("%s: data chunk %s is not in the repository", rt.object, rt.id)
			}
		}
		return nil
	})
	if err != nil {
		if isBackendFailure(err) {
			return rep, err
		}
		fail("%v", err)
	}
	rep.DataRefs = len(data)
	return rep, nil
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
		if ID(blake3.Sum256(data)) != id {
			fail("%s: the pack's content does not match its name (corrupt)", name)
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
	entries, err := r.readTrailerWith(name, size, read)
	if err != nil {
		if isBackendFailure(err) {
			return 0, 0, err
		}
		fail("%v", err)
		return 0, int64(len(data)), nil
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
