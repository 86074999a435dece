package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// Errors callers match with errors.Is. Backend failures keep their backend kind
// (backend.ErrFull, backend.ErrUnavailable, …) in the chain.
var (
	ErrNotInitialized = errors.New("no Lifeboat repository there")
	ErrWrongKey       = errors.New("the key does not open this repository")
	ErrCorrupt        = errors.New("repository object is corrupt")
	ErrNotFound       = errors.New("not found in the repository")
	ErrLocked         = errors.New("the recovery snapshot is locked")
	ErrExists         = errors.New("a repository already exists there")
	// ErrHeadBroken: a flush of this head failed, so its in-memory state may name
	// chunks that were never stored. Close it and open the head again: it recovers to
	// the last durable state, and the writer resends what was not acknowledged.
	ErrHeadBroken = errors.New("the volume head must be reopened after a failed write")
)

// CorruptError names the object that failed to decode or authenticate.
type CorruptError struct {
	Object string
	Err    error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s: %s: %v (run lifeboat store verify)", e.Object, ErrCorrupt, e.Err)
}

func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

func corrupt(object string, err error) error { return &CorruptError{Object: object, Err: err} }

// Defaults of a new repository and of an open one.
const (
	DefaultBlockSize = 64 << 10
	DefaultFanout    = 1024
	DefaultPackSize  = 16 << 20
	DefaultGCGrace   = 10 * time.Minute
)

// Options tune a repository. BlockSize and Fanout are fixed when it is created; the
// rest apply to one open instance.
type Options struct {
	BlockSize int // bytes per block (Init only; default 64 KiB)
	Fanout    int // ids per tree node (Init only; default 1024)
	PackSize  int // target pack size (default 16 MiB)
	// Compression is the default codec of new chunks: "s2" (the default, also for ""),
	// "zstd" or "none".
	Compression string
	// GCGrace is how long a garbage collection waits between condemning chunks and
	// deleting them, so writers in other processes learn of it first. Writers refresh
	// their view at least every GCGrace/4. Default 10 minutes.
	GCGrace time.Duration
	// MaxDirtyLeaves bounds a head's memory: past it the head writes a checkpoint.
	MaxDirtyLeaves int // default 256 (8 MiB of tables, 16 GiB of volume at defaults)
	// MaxDirtyBytes bounds the memory of all heads' changed tables together: past it,
	// the head being written checkpoints (default 64 MiB).
	MaxDirtyBytes int64
	Parallelism   int // workers for hashing/compression and reads (default GOMAXPROCS)
	// IndexDir, when set, keeps the chunk index on disk in IndexDir/<repository id>
	// (docs/store-format.md §12): RAM that does not grow with the store, and an open
	// that reads only the index objects stored since the last. One process at a time
	// may use a directory. Empty: the index is kept in RAM and read whole at open.
	IndexDir string
	// RefreshInBackground keeps the view fresh in the background once a head is open
	// (every GCGrace/8), so that flushes do not wait for a refresh: for a long-running
	// writer of many heads (a replicator), whose refreshes read what other writers
	// stored meanwhile.
	RefreshInBackground bool
	// CommitInterval is how long after a pack was stored a flush waits for others to
	// join the next (group commit): it bounds a busy process to a pack and index object
	// per interval however many heads flush, and adds at most that to a flush. 0: every
	// flush stores its pack at once.
	CommitInterval time.Duration
	Logger         *slog.Logger
	Now            func() time.Time
}

func (o *Options) fill() {
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.Fanout == 0 {
		o.Fanout = DefaultFanout
	}
	if o.PackSize == 0 {
		o.PackSize = DefaultPackSize
	}

	if o.GCGrace == 0 {
		o.GCGrace = DefaultGCGrace
	}
	if o.MaxDirtyLeaves == 0 {
		o.MaxDirtyLeaves = 256
	}
	if o.MaxDirtyBytes == 0 {
		o.MaxDirtyBytes = 64 << 20
	}
	if o.Parallelism == 0 {
		o.Parallelism = runtime.GOMAXPROCS(0)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// config is the repository's fixed parameters (object "config", encrypted).
type config struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	BlockSize int       `json:"blockSize"`
	Fanout    int       `json:"fanout"`
	ChunkIDs  string    `json:"chunkIds"`
	Cipher    string    `json:"cipher"`
	Created   time.Time `json:"created"`
}

// Repo is an open repository. It is safe for concurrent use.
type Repo struct {
	be     backend.Backend
	keys   *keys
	codecs *codecs
	cfg    config
	opts   Options
	codec  Codec // from opts.Compression
	log    *slog.Logger

	mu        sync.RWMutex
	ix        indexState // where chunks are (chunkmap.go)
	condemned map[ID]struct{}
	pending   map[string][]ID // GC pending objects seen → their ids (nil: not read yet)
	viewTime  time.Time
	viewMu    sync.Mutex // serialises view refreshes

	// disk is the chunk index on disk in diskDir (Options.IndexDir; diskindex.go), nil
	// when it is in RAM. ixBroken says a lookup in it failed: the next refresh rebuilds it.
	disk     *diskMap
	diskDir  string
	diskLock *os.File // flock of diskDir.lock
	ixBroken atomic.Bool

	packer *packer
	nodes  *nodeCache

	dirtyBytes atomic.Int64  // memory of every open head's changed tables
	counters   writeCounters // what heads were given (counters.go)

	chainsMu sync.Mutex
	chains   map[string]*pitChain // servers with open heads → what their PITs recorded

	manifests manifestCache // PIT manifests decoded, for ListPITs

	refresher refresher // Options.RefreshInBackground (refresher.go)
}

// loc is where a chunk is.
type loc struct {
	pack   uint32
	offset uint32
	length uint32
	rawLen uint32
	typ    blobType
}

// Init creates a repository on be, its key wrapped by mk.
func Init(ctx context.Context, be backend.Backend, mk MasterKey, opts Options) (*Repo, error) {
	opts.fill()
	if opts.BlockSize < 4096 || opts.BlockSize > 4<<20 || opts.BlockSize&(opts.BlockSize-1) != 0 {
		return nil, fmt.Errorf("block size %d is not a power of two from 4 KiB to 4 MiB", opts.BlockSize)
	}
	if opts.Fanout < 16 || opts.Fanout > maxFanout {
		return nil, fmt.Errorf("tree fanout %d is not 16 to %d", opts.Fanout, maxFanout)
	}
	if _, err := be.Stat(ctx, "config"); err == nil {
		return nil, fmt.Errorf("%s: %w", be.Location(), ErrExists)
	} else if !errors.Is(err, backend.ErrNotFound) {
		return nil, fmt.Errorf("check for a repository at %s: %w", be.Location(), err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	if err := putKeyObject(ctx, be, mk, secret); err != nil {
		return nil, err
	}
	r, err := newRepo(be, secret, opts)
	if err != nil {
		return nil, err
	}
	r.cfg = config{Version: formatVersion, ID: randomHex(16), BlockSize: opts.BlockSize, Fanout: opts.Fanout,
		ChunkIDs: "blake3-keyed-256", Cipher: "aes-256-gcm", Created: opts.Now().UTC()}
	cb, _ := json.Marshal(r.cfg)
	// The config is written last: a repository is initialised once it exists.
	if err := r.putSealed(ctx, "config", cb, backend.PutOptions{}); err != nil {
		return nil, fmt.Errorf("write the repository config: %w", err)
	}
	if opts.IndexDir != "" {
		if err := r.openDiskIndex(); err != nil {
			return nil, err
		}
		r.disk.serve(r.indexFailed)
	}
	r.start()
	r.log.Info("repository created", "store", be.Location(), "blockSize", opts.BlockSize, "masterKey", mk.Fingerprint())
	return r, nil
}

// Open opens the repository on be with the master key mk and loads its index.
func Open(ctx context.Context, be backend.Backend, mk MasterKey, opts Options) (*Repo, error) {
	return open(ctx, be, mk, opts, true)
}

// OpenWithoutIndex opens the repository without loading its index: for RebuildIndex
// when index objects are damaged.
func OpenWithoutIndex(ctx context.Context, be backend.Backend, mk MasterKey, opts Options) (*Repo, error) {
	return open(ctx, be, mk, opts, false)
}

func open(ctx context.Context, be backend.Backend, mk MasterKey, opts Options, loadIndex bool) (*Repo, error) {
	opts.fill()
	if _, err := be.Stat(ctx, "config"); err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, fmt.Errorf("%s: %w (create one with lifeboat store init, or let lifeboat up create it)", be.Location(), ErrNotInitialized)
		}
		return nil, fmt.Errorf("open the repository at %s: %w", be.Location(), err)
	}
	secret, prints, err := findSecret(ctx, be, mk)
	if err != nil {
		return nil, err
	}
	if secret == nil {
		return nil, fmt.Errorf("%s: %w (its secret is wrapped by the keys %s; this key is %s): give the master key file the repository was created with",
			be.Location(), ErrWrongKey, strings.Join(prints, ", "), mk.Fingerprint())
	}
	r, err := newRepo(be, secret, opts)
	if err != nil {
		return nil, err
	}
	cb, err := r.getSealed(ctx, "config")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(cb, &r.cfg); err != nil || r.cfg.Version != formatVersion || r.cfg.BlockSize < 4096 ||
		r.cfg.BlockSize > 4<<20 || r.cfg.Fanout < 16 || r.cfg.Fanout > maxFanout {
		return nil, corrupt("config", fmt.Errorf("unsupported or invalid config %+v (%v)", r.cfg, err))
	}
	r.codecs, err = newCodecs(maxPlain(r.cfg.BlockSize, r.cfg.Fanout))
	if err != nil {
		return nil, err
	}
	switch {
	case loadIndex && opts.IndexDir != "":
		if err := r.openDiskIndex(); err != nil {
			return nil, err
		}
		if err := r.refreshView(ctx, false); err != nil {
			r.closeDiskIndex()
			return nil, err
		}
		r.disk.serve(r.indexFailed)
	case loadIndex:
		if err := r.refreshView(ctx, true); err != nil {
			return nil, err
		}
	}
	r.start()
	return r, nil
}

// OpenOrInit opens the repository on be, creating it first if there is none.
func OpenOrInit(ctx context.Context, be backend.Backend, mk MasterKey, opts Options) (*Repo, error) {
	r, err := Open(ctx, be, mk, opts)
	if errors.Is(err, ErrNotInitialized) {
		return Init(ctx, be, mk, opts)
	}
	return r, err
}

var errStop = errors.New("stop")

func newRepo(be backend.Backend, secret []byte, opts Options) (*Repo, error) {
	codec, err := ParseCodec(opts.Compression)
	if err != nil {
		return nil, err
	}
	k, err := deriveKeys(secret)
	if err != nil {
		return nil, err
	}
	c, err := newCodecs(maxPlain(opts.BlockSize, opts.Fanout))
	if err != nil {
		return nil, err
	}
	r := &Repo{be: be, keys: k, codecs: c, opts: opts, codec: codec, log: opts.Logger,
		ix: newIndexState(memMap{}), condemned: map[ID]struct{}{}, pending: map[string][]ID{}}
	r.nodes = newNodeCache(256) // 8 MiB of tables at the default fanout
	return r, nil
}

// maxPlain is the largest chunk plaintext: a block, or a tree node (its level byte and
// fanout ids), which is the larger when blocks are small.
func maxPlain(blockSize, fanout int) int { return max(blockSize, 1+32*fanout) }

func (r *Repo) start() { r.packer = newPacker(r) }

// Close waits for pending pack uploads and releases resources. Heads must be flushed
// first: what was not flushed is not durable.
func (r *Repo) Close() error {
	r.refresher.stop()
	if r.packer != nil {
		r.packer.close()
	}
	return r.closeDiskIndex()
}

// BlockSize is the repository's block size.
func (r *Repo) BlockSize() int { return r.cfg.BlockSize }

// ID is the repository's id.
func (r *Repo) ID() string { return r.cfg.ID }

// Location is the backend's URL.
func (r *Repo) Location() string { return r.be.Location() }

// Backend returns the backend the repository is stored on.
func (r *Repo) Backend() backend.Backend { return r.be }

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("lifeboat: the system's random source failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// Sealed objects: a version byte, then nonce || AES-256-GCM(plaintext) || tag with
// the object's name as additional data, so an object cannot pass for another.
const sealedVersion = 1

func (r *Repo) putSealed(ctx context.Context, name string, plain []byte, opts backend.PutOptions) error {
	buf := make([]byte, 1, 1+len(plain)+sealOverhead)
	buf[0] = sealedVersion
	buf = r.keys.seal(buf, plain, []byte(name))
	return r.be.Put(ctx, name, buf, opts)
}

func (r *Repo) getSealed(ctx context.Context, name string) ([]byte, error) {
	data, err := r.be.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	return r.openSealed(name, data)
}

func (r *Repo) openSealed(name string, data []byte) ([]byte, error) {
	if len(data) < 1 || data[0] != sealedVersion {
		return nil, corrupt(name, errors.New("unknown object version"))
	}
	plain, err := r.keys.open(nil, data[1:], []byte(name))
	if err != nil {
		return nil, corrupt(name, err)
	}
	return plain, nil
}

// Object names.
func packName(id ID) string  { h := id.String(); return "data/" + h[:2] + "/" + h }
func indexName(id ID) string { return "index/" + id.String() }
func snapshotPrefix(server string) string {
	return "snapshots/" + server + "/"
}
func snapshotName(server, pit string) string { return snapshotPrefix(server) + pit }

// lookup returns a chunk's location. A failing local index answers "not here" and is
// rebuilt by the next refresh, which callers make on a miss.
func (r *Repo) lookup(id ID) (loc, ID, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	l, ok, err := r.ix.chunks.get(id)
	if err != nil || !ok {
		r.indexFailed(err)
		return loc{}, ID{}, false
	}
	pack, err := r.ix.packOf(l.pack)
	if err != nil {
		r.indexFailed(err)
		return loc{}, ID{}, false
	}
	return l, pack, true
}

// dedupable reports whether a chunk is stored and may be referenced again: it is in
// the index and no garbage collection has condemned it. When the index cannot say,
// the answer is no: the block is stored again.
func (r *Repo) dedupable(id ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok, err := r.ix.chunks.get(id); err != nil || !ok {
		r.indexFailed(err)
		return false
	}
	_, bad := r.condemned[id]
	return !bad
}

// indexFailed notes an error of the local chunk index (nil: none): it is logged once,
// and the next view refresh rebuilds the index from the store's index objects.
func (r *Repo) indexFailed(err error) {
	if err != nil && r.ixBroken.CompareAndSwap(false, true) {
		r.log.Error("the local chunk index failed; it is rebuilt from the store's index objects", "err", err)
	}
}

func (r *Repo) isCondemned(id ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, bad := r.condemned[id]
	return bad
}

// addPackLocked records a pack's chunks in the index.
func (r *Repo) addPackLocked(pack ID, entries []entry) {
	r.indexFailed(r.ix.addPack(pack, entries))
}

// loadIndexObject reads one index object.
func (r *Repo) loadIndexObject(ctx context.Context, name string) ([]packEntries, error) {
	plain, err := r.getSealed(ctx, name)
	if err != nil {
		return nil, err
	}
	packs, err := decodeIndex(plain)
	if err != nil {
		return nil, corrupt(name, err)
	}
	return packs, nil
}

// refreshView brings the index and the set of chunks condemned by garbage
// collections up to date with the backend. With full, the index is rebuilt from all
// index objects. It is what makes deduplication safe against a concurrent GC in
// another process (see gc.go).
func (r *Repo) refreshView(ctx context.Context, full bool) error {
	r.viewMu.Lock()
	defer r.viewMu.Unlock()
	return r.refreshViewLocked(ctx, full)
}

// refreshViewLocked is refreshView with viewMu held.
func (r *Repo) refreshViewLocked(ctx context.Context, full bool) error {
	started := r.opts.Now()
	listing := time.Now() // the packer's clock: what it stored after this may be unlisted
	p, err := r.planView(ctx, full || r.ixBroken.Load(), listing)
	if err != nil {
		return err
	}
	pendIDs, err := r.loadPending(ctx, p.newPending)
	if err != nil {
		return err
	}
	var fresh *indexState
	switch {
	case r.disk != nil && p.full:
		if fresh, err = r.buildDiskIndex(ctx, p); err != nil {
			return err
		}
	case r.disk != nil:
		if err := r.streamIndex(ctx, p.toLoad, func(name string, packs []packEntries) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, pe := range packs {
				if err := r.ix.addPack(pe.Pack, pe.Entries); err != nil {
					return err
				}
			}
			r.ix.loaded[name] = true
			return nil
		}); err != nil {
			return err
		}
	default:
		loaded := make(map[string][]packEntries, len(p.toLoad))
		if err := r.streamIndex(ctx, p.toLoad, func(name string, packs []packEntries) error {
			loaded[name] = packs
			return nil
		}); err != nil {
			return err
		}
		fresh = r.memIndex(p, loaded)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if fresh != nil {
		if err := r.swapIndexLocked(*fresh, p); err != nil {
			return err
		}
	}
	if r.packer != nil {
		r.packer.reindexLocked(p.present, listing) // packs this process wrote during the listing
	}
	r.setPendingLocked(p.pendingNow, p.newPending, pendIDs)
	r.viewTime = started
	if took := r.opts.Now().Sub(started); took > slowRefresh {
		r.log.Info("refreshing the view of the store took long", "seconds", took.Seconds(),
			"indexObjects", len(p.present), "read", len(p.toLoad), "full", p.full)
	}
	return r.maybeCheckpointLocked(started)
}

// slowRefresh is how long a view refresh may take before it is logged.
const slowRefresh = 5 * time.Second

// viewPlan is what a view refresh found in the backend and is to read.
type viewPlan struct {
	full       bool
	present    map[string]bool // index objects listed
	pendingNow map[string]bool // GC pending objects listed
	toLoad     []string        // index objects to read
	newPending []string        // GC pending objects to read
}

// planView lists the index and GC pending objects and decides what to read: all index
// objects when full, or when a GC finished or index objects were removed since the
// last refresh (chunks they named may be gone); else the new ones. An index object this
// process stored after listing began may be missing from the listing without having
// been removed.
func (r *Repo) planView(ctx context.Context, full bool, listing time.Time) (viewPlan, error) {
	p := viewPlan{full: full, present: map[string]bool{}, pendingNow: map[string]bool{}}
	if err := r.be.List(ctx, "gc/pending-", func(oi backend.ObjectInfo) error {
		p.pendingNow[oi.Name] = true
		return nil
	}); err != nil {
		return p, fmt.Errorf("read garbage collection state: %w", err)
	}
	var indexNames []string
	if err := r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		indexNames = append(indexNames, oi.Name)
		p.present[oi.Name] = true
		return nil
	}); err != nil {
		return p, fmt.Errorf("list the repository index: %w", err)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for name := range r.pending {
		if !p.pendingNow[name] {
			p.full = true // a GC finished: chunks it deleted must leave our index
		}
	}
	storedSince := map[string]bool{}
	if r.packer != nil {
		for _, c := range r.packer.recent {
			if !c.at.Before(listing) {
				storedSince[c.index] = true
			}
		}
	}
	for name := range r.ix.loaded {
		if !p.present[name] && !storedSince[name] {
			p.full = true // index objects were consolidated or removed
		}
	}
	for _, n := range indexNames {
		if p.full || !r.ix.loaded[n] {
			p.toLoad = append(p.toLoad, n)
		}
	}
	for n := range p.pendingNow {
		if ids, ok := r.pending[n]; !ok || ids == nil {
			p.newPending = append(p.newPending, n)
		}
	}
	return p, nil
}

// memIndex applies index objects read to the index in RAM: into a new one when the
// refresh is full (returned, to be swapped in), else into the current one.
func (r *Repo) memIndex(p viewPlan, loaded map[string][]packEntries) *indexState {
	add := func(st *indexState) {
		for _, name := range p.toLoad { // in the listing's order, as packs are numbered
			packs, ok := loaded[name]
			if !ok {
				continue // removed since it was listed
			}
			for _, pe := range packs {
				_ = st.addPack(pe.Pack, pe.Entries) // a map does not fail
			}
			st.loaded[name] = true
		}
	}
	if p.full {
		st := newIndexState(memMap{})
		add(&st)
		return &st
	}
	r.mu.Lock()
	add(&r.ix)
	r.mu.Unlock()
	return nil
}

// setPendingLocked records the GC pending objects now present and the chunks they
// condemn.
func (r *Repo) setPendingLocked(pendingNow map[string]bool, read []string, ids [][]ID) {
	for name := range r.pending {
		if !pendingNow[name] {
			delete(r.pending, name)
		}
	}
	for i, n := range read {
		if ids[i] != nil {
			r.pending[n] = ids[i]
		}
	}
	r.condemned = map[ID]struct{}{}
	for _, ids := range r.pending {
		for _, id := range ids {
			r.condemned[id] = struct{}{}
		}
	}
}

// streamIndex reads index objects, 8 at a time, and gives each to apply, one at a
// time: memory holds a few objects, not the index.
func (r *Repo) streamIndex(ctx context.Context, names []string, apply func(name string, packs []packEntries) error) error {
	type loaded struct {
		name  string
		packs []packEntries
	}
	ch := make(chan loaded, 8)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(ch)
		lg, lctx := errgroup.WithContext(gctx)
		lg.SetLimit(8)
		for _, n := range names {
			lg.Go(func() error {
				p, err := r.loadIndexObject(lctx, n)
				if errors.Is(err, backend.ErrNotFound) {
					return nil // removed by a concurrent GC after we listed it; a later refresh reloads
				}
				if err != nil {
					return err
				}
				select {
				case ch <- loaded{n, p}:
					return nil
				case <-lctx.Done():
					return lctx.Err()
				}
			})
		}
		return lg.Wait()
	})
	g.Go(func() error {
		for l := range ch {
			if err := apply(l.name, l.packs); err != nil {
				return err
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return fmt.Errorf("load the repository index: %w", err)
	}
	return nil
}

// loadPending reads, in parallel, GC pending objects. One removed since it was listed
// is skipped (nil): its collection finished, and a later refresh sees the result.
func (r *Repo) loadPending(ctx context.Context, names []string) ([][]ID, error) {
	ids := make([][]ID, len(names))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, n := range names {
		g.Go(func() error {
			plain, err := r.getSealed(gctx, n)
			if errors.Is(err, backend.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			if ids[i], err = decodeIDs(pendingMagic, plain); err != nil {
				return corrupt(n, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("read garbage collection state: %w", err)
	}
	return ids, nil
}

// ensureFreshView refreshes the view when it is older than a quarter of the GC grace.
func (r *Repo) ensureFreshView(ctx context.Context) error {
	return r.refreshViewSince(ctx, r.opts.Now().Add(-r.opts.GCGrace/4))
}

// refreshViewSince makes sure the view is from a refresh begun at since or later: it
// refreshes unless one did meanwhile. Callers that wait for one another's refresh (many
// flushes, many heads opened at once) share it instead of listing the store each.
func (r *Repo) refreshViewSince(ctx context.Context, since time.Time) error {
	r.viewMu.Lock()
	defer r.viewMu.Unlock()
	r.mu.RLock()
	fresh := !r.viewTime.Before(since) && !r.ixBroken.Load()
	r.mu.RUnlock()
	if fresh {
		return nil
	}
	return r.refreshViewLocked(ctx, false)
}

// viewAge is how old the view is.
func (r *Repo) viewAge() time.Duration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.opts.Now().Sub(r.viewTime)
}
