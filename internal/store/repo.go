package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	Logger        *slog.Logger
	Now           func() time.Time
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

	mu          sync.RWMutex
	idx         map[ID]loc
	idxData     indexSize     // the data chunks of idx (counters.go)
	packIDs     []ID          // pack number → pack id
	packNum     map[ID]uint32 // pack id → number
	indexLoaded map[string]bool
	condemned   map[ID]struct{}
	pending     map[string][]ID // GC pending objects seen → their ids
	viewTime    time.Time
	viewMu      sync.Mutex // serialises view refreshes

	packer *packer
	nodes  *nodeCache

	dirtyBytes atomic.Int64  // memory of every open head's changed tables
	counters   writeCounters // what heads were given (counters.go)

	chainsMu sync.Mutex
	chains   map[string]*pitChain // servers with open heads → what their PITs recorded

	manifests manifestCache // PIT manifests decoded, for ListPITs
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
	if loadIndex {
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
		idx: map[ID]loc{}, packNum: map[ID]uint32{}, indexLoaded: map[string]bool{},
		condemned: map[ID]struct{}{}, pending: map[string][]ID{}}
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
	if r.packer != nil {
		r.packer.close()
	}
	return nil
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

// lookup returns a chunk's location.
func (r *Repo) lookup(id ID) (loc, ID, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	l, ok := r.idx[id]
	if !ok {
		return l, ID{}, false
	}
	return l, r.packIDs[l.pack], true
}

// dedupable reports whether a chunk is stored and may be referenced again: it is in
// the index and no garbage collection has condemned it.
func (r *Repo) dedupable(id ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.idx[id]; !ok {
		return false
	}
	_, bad := r.condemned[id]
	return !bad
}

func (r *Repo) isCondemned(id ID) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, bad := r.condemned[id]
	return bad
}

// addPackLocked records a pack's chunks in the in-memory index.
func (r *Repo) addPackLocked(pack ID, entries []entry) {
	n, ok := r.packNum[pack]
	if !ok {
		n = uint32(len(r.packIDs))
		r.packIDs = append(r.packIDs, pack)
		r.packNum[pack] = n
	}
	for _, e := range entries {
		if _, dup := r.idx[e.ID]; dup {
			continue
		}
		r.idx[e.ID] = loc{pack: n, offset: e.Offset, length: e.Length, rawLen: e.RawLen, typ: e.Type}
		r.idxData.add(e)
	}
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

// refreshView brings the in-memory index and the set of chunks condemned by garbage
// collections up to date with the backend. With full, the index is rebuilt from all
// index objects. It is what makes deduplication safe against a concurrent GC in
// another process (see gc.go).
func (r *Repo) refreshView(ctx context.Context, full bool) error {
	r.viewMu.Lock()
	defer r.viewMu.Unlock()
	started := r.opts.Now()

	// Which GC pending objects exist now.
	pendingNow := map[string]bool{}
	if err := r.be.List(ctx, "gc/pending-", func(oi backend.ObjectInfo) error {
		pendingNow[oi.Name] = true
		return nil
	}); err != nil {
		return fmt.Errorf("read garbage collection state: %w", err)
	}
	var indexNames []string
	if err := r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		indexNames = append(indexNames, oi.Name)
		return nil
	}); err != nil {
		return fmt.Errorf("list the repository index: %w", err)
	}
	r.mu.RLock()
	for name := range r.pending {
		if !pendingNow[name] {
			full = true // a GC finished: chunks it deleted must leave our index
		}
	}
	present := make(map[string]bool, len(indexNames))
	for _, n := range indexNames {
		present[n] = true
	}
	for name := range r.indexLoaded {
		if !present[name] {
			full = true // index objects were consolidated or removed
		}
	}
	var toLoad []string
	for _, n := range indexNames {
		if full || !r.indexLoaded[n] {
			toLoad = append(toLoad, n)
		}
	}
	var newPending []string
	for n := range pendingNow {
		if _, ok := r.pending[n]; !ok {
			newPending = append(newPending, n)
		}
	}
	r.mu.RUnlock()

	loaded, pendIDs, err := r.loadView(ctx, toLoad, newPending)
	if err != nil {
		return err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if full {
		r.idx = make(map[ID]loc, len(r.idx))
		r.idxData = indexSize{}
		r.packIDs = nil
		r.packNum = map[ID]uint32{}
		r.indexLoaded = map[string]bool{}
	}
	for i, packs := range loaded {
		if packs == nil {
			continue
		}
		for _, p := range packs {
			r.addPackLocked(p.Pack, p.Entries)
		}
		r.indexLoaded[toLoad[i]] = true
	}
	if r.packer != nil {
		r.packer.reindexLocked(present, started) // packs this process wrote during the listing
	}
	for name := range r.pending {
		if !pendingNow[name] {
			delete(r.pending, name)
		}
	}
	for i, n := range newPending {
		if pendIDs[i] != nil {
			r.pending[n] = pendIDs[i]
		}
	}
	r.condemned = map[ID]struct{}{}
	for _, ids := range r.pending {
		for _, id := range ids {
			r.condemned[id] = struct{}{}
		}
	}
	r.viewTime = started
	return nil
}

// loadView reads, in parallel, the index objects and GC pending objects a view
// refresh needs. An object removed since it was listed is skipped (nil): a garbage
// collection consolidated or finished it, and a later refresh sees the result.
func (r *Repo) loadView(ctx context.Context, indexNames, pendingNames []string) ([][]packEntries, [][]ID, error) {
	loaded := make([][]packEntries, len(indexNames))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, n := range indexNames {
		g.Go(func() error {
			p, err := r.loadIndexObject(gctx, n)
			if errors.Is(err, backend.ErrNotFound) {
				return nil // removed by a concurrent GC after we listed it; a later refresh reloads
			}
			loaded[i] = p
			return err
		})
	}
	pendIDs := make([][]ID, len(pendingNames))
	for i, n := range pendingNames {
		g.Go(func() error {
			plain, err := r.getSealed(gctx, n)
			if errors.Is(err, backend.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			ids, err := decodeIDs(pendingMagic, plain)
			if err != nil {
				return corrupt(n, err)
			}
			pendIDs[i] = ids
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, fmt.Errorf("load the repository index: %w", err)
	}
	return loaded, pendIDs, nil
}

// ensureFreshView refreshes the view when it is older than a quarter of the GC grace.
func (r *Repo) ensureFreshView(ctx context.Context) error {
	r.mu.RLock()
	age := r.opts.Now().Sub(r.viewTime)
	r.mu.RUnlock()
	if age < r.opts.GCGrace/4 {
		return nil
	}
	return r.refreshView(ctx, false)
}

// viewAge is how old the view is.
func (r *Repo) viewAge() time.Duration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.opts.Now().Sub(r.viewTime)
}
