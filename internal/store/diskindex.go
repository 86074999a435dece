package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/store/chunkindex"
)

// The chunk index on disk (docs/store-format.md §12): a local cache of the store's
// index objects in Options.IndexDir/<repository id>, so that a replicator's RAM does not
// grow with the store and opening it reads only what changed since it last ran.
//
// The directory holds the chunkindex segments, "packs" (the pack ids in the order the
// index numbered them, 32 bytes each, appended) and "view.json" (the index objects and
// GC pending objects the segments reflect, and the chunk counts). Crash safety:
//   - a segment may name only packs durable in "packs": chunkindex calls BeforeFlush,
//     which syncs "packs", with the memtable held, before it writes a segment;
//   - view.json lists an index object only once its entries are in flushed segments:
//     it is written after a flush. Index objects stored after it are read again at the
//     next open (putting an entry twice is harmless: same id, same location);
//   - when a garbage collection finished or index objects vanished since view.json, the
//     entries of deleted chunks may still be in the segments: the map is rebuilt from
//     the index objects that exist, into a new directory swapped in when complete.

const (
	diskIndexVersion = 1
	// diskMemtable is how many entries the disk map keeps in RAM before it writes a
	// segment: about 25 MiB.
	diskMemtable = 1 << 18
	// checkpointEvery is how often a refresh writes view.json, so that a restart
	// reads again at most this much of the store's index.
	checkpointEvery = 5 * time.Minute
)

// diskView is view.json.
type diskView struct {
	Version    int       `json:"version"`
	Repository string    `json:"repository"`
	Packs      int       `json:"packs"` // records of "packs" when it was written
	Index      []string  `json:"index"`
	Pending    []string  `json:"pending"`
	Data       sizeJSON  `json:"data"`
	All        sizeJSON  `json:"all"`
	Written    time.Time `json:"written"`
}

type sizeJSON struct {
	Chunks int   `json:"chunks"`
	Raw    int64 `json:"raw"`
	Stored int64 `json:"stored"`
}

func toSizeJSON(s indexSize) sizeJSON { return sizeJSON{s.chunks, s.raw, s.stored} }
func (s sizeJSON) size() indexSize    { return indexSize{chunks: s.Chunks, raw: s.Raw, stored: s.Stored} }

// diskMap is a chunkMap on a chunkindex directory. The pack list is synced as the
// memtable is taken for a flush (chunkindex.Options.BeforeFlush), so a segment never
// names a pack a crash could lose. While the map is filled in bulk (at open, in a
// rebuild) flushes run in line; once it serves (steady) they run in the background: an
// ingest holding the repository's lock never waits for a segment write or merge.
type diskMap struct {
	dir       string
	idx       *chunkindex.Index
	packs     *os.File
	npacks    int // records in packs
	unflushed int // puts since the last flush
	limit     int // flush at this many (diskMemtable)
	lastView  time.Time

	steady   bool
	onError  func(error) // told of a background flush's failure
	flushing atomic.Bool
	flushWG  sync.WaitGroup
}

// serve makes d steady (see diskMap), its background failures told to onError.
func (d *diskMap) serve(onError func(error)) {
	d.steady, d.onError = true, onError
}

func (d *diskMap) get(id ID) (loc, bool, error) {
	l, ok, err := d.idx.Get(chunkindex.ID(id))
	if err != nil {
		return loc{}, false, fmt.Errorf("local chunk index %s: %w", d.dir, err)
	}
	return fromIndexLoc(l), ok, nil
}

func (d *diskMap) put(id ID, l loc) error {
	if err := d.idx.Put(chunkindex.ID(id), toIndexLoc(l)); err != nil {
		return fmt.Errorf("local chunk index %s: %w", d.dir, err)
	}
	d.unflushed++
	if d.unflushed < d.limit {
		return nil
	}
	if !d.steady {
		return d.flush()
	}
	if d.flushing.CompareAndSwap(false, true) {
		d.unflushed = 0
		d.flushWG.Go(func() {
			defer d.flushing.Store(false)
			if err := d.idx.Flush(); err != nil {
				d.onError(fmt.Errorf("local chunk index %s: %w", d.dir, err))
			}
		})
	}
	return nil
}

// addPack appends a pack id to "packs" (synced when the memtable is next flushed).
func (d *diskMap) addPack(id ID) error {
	if _, err := d.packs.Write(id[:]); err != nil {
		return fmt.Errorf("local chunk index %s: record a pack: %w", d.dir, err)
	}
	d.npacks++
	return nil
}

// flush makes every put durable: the packs they name first (BeforeFlush), then a
// segment.
func (d *diskMap) flush() error {
	if err := d.idx.Flush(); err != nil {
		return fmt.Errorf("local chunk index %s: %w", d.dir, err)
	}
	d.unflushed = 0
	return nil
}

func (d *diskMap) close() error {
	d.flushWG.Wait()
	err := d.idx.Close()
	if cerr := d.packs.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkpoint flushes and writes view.json for s, whose chunks d holds, with the GC
// pending objects the view reflects.
func (d *diskMap) checkpoint(repoID string, s *indexState, pending []string, now time.Time) error {
	if err := d.flush(); err != nil {
		return err
	}
	v := diskView{Version: diskIndexVersion, Repository: repoID, Packs: d.npacks, Pending: pending,
		Data: toSizeJSON(s.data), All: toSizeJSON(s.all), Written: now.UTC()}
	v.Index = make([]string, 0, len(s.loaded))
	for name := range s.loaded {
		v.Index = append(v.Index, name)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(d.dir, "view.json"), b, 0o600); err != nil {
		return fmt.Errorf("local chunk index: %w", err)
	}
	d.lastView = now
	return nil
}

// openDiskState opens the disk index in dir as an indexState. With a view it resumes
// where view.json left off; without one (fresh, or what was there could not be used:
// the reason is returned as stale), it starts empty.
func openDiskState(dir, repoID string) (st indexState, d *diskMap, v *diskView, stale error, err error) {
	v, stale = readDiskView(dir, repoID)
	if stale != nil {
		if err := resetDir(dir); err != nil {
			return st, nil, nil, nil, err
		}
	}
	d, ids, err := openDiskMap(dir, v)
	if err != nil && v != nil {
		// A damaged segment or pack list: start again from the store's index objects.
		stale, v = err, nil
		if err := resetDir(dir); err != nil {
			return st, nil, nil, nil, err
		}
		d, ids, err = openDiskMap(dir, nil)
	}
	if err != nil {
		return st, nil, nil, nil, err
	}
	st = newIndexState(d)
	for i, id := range ids {
		st.packIDs = append(st.packIDs, id)
		st.packNum[id] = uint32(i)
	}
	if v != nil {
		for _, n := range v.Index {
			st.loaded[n] = true
		}
		st.data, st.all = v.Data.size(), v.All.size()
		d.lastView = v.Written
	}
	return st, d, v, stale, nil
}

// readDiskView reads view.json; an error says why the directory cannot be resumed.
func readDiskView(dir, repoID string) (*diskView, error) {
	b, err := os.ReadFile(filepath.Join(dir, "view.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("no local chunk index yet")
	}
	if err != nil {
		return nil, err
	}
	var v diskView
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("view.json: %w", err)
	}
	if v.Version != diskIndexVersion || v.Repository != repoID || v.Packs < 0 {
		return nil, fmt.Errorf("view.json is of version %d for repository %q", v.Version, v.Repository)
	}
	return &v, nil
}

func resetDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove the local chunk index %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create the local chunk index %s: %w", dir, err)
	}
	return nil
}

// openDiskMap opens the segments and the pack list of dir. Every whole record of
// "packs" is kept: a segment flushed after view.json may name packs it does not count
// (a record only partly written was never synced, so no segment names it). With v,
// the list must hold at least the packs it counts.
func openDiskMap(dir string, v *diskView) (*diskMap, []ID, error) {
	f, err := os.OpenFile(filepath.Join(dir, "packs"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("local chunk index: %w", err)
	}
	ids, err := readPackList(f)
	if err == nil && v != nil && len(ids) < v.Packs {
		err = fmt.Errorf("holds %d packs, view.json counts %d", len(ids), v.Packs)
	}
	if err == nil {
		err = f.Truncate(int64(len(ids)) * 32)
	}
	if err == nil {
		_, err = f.Seek(int64(len(ids))*32, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("local chunk index %s: pack list: %w", dir, err)
	}
	idx, err := chunkindex.Open(dir, chunkindex.Options{MemtableEntries: 2 * diskMemtable, BeforeFlush: f.Sync})
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return &diskMap{dir: dir, idx: idx, packs: f, npacks: len(ids), limit: diskMemtable}, ids, nil
}

// readPackList reads the whole records of f.
func readPackList(f *os.File) ([]ID, error) {
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	ids := make([]ID, len(b)/32)
	for i := range ids {
		copy(ids[i][:], b[i*32:])
	}
	return ids, nil
}

// openDiskIndex opens (or starts) the repository's index on disk; the refresh that
// follows reads the index objects it does not reflect.
func (r *Repo) openDiskIndex() error {
	if len(r.cfg.ID) != 32 || strings.Trim(r.cfg.ID, "0123456789abcdef") != "" {
		return corrupt("config", fmt.Errorf("repository id %q is not 32 hex digits", r.cfg.ID))
	}
	r.diskDir = filepath.Join(r.opts.IndexDir, r.cfg.ID)
	if err := os.MkdirAll(r.opts.IndexDir, 0o700); err != nil {
		return fmt.Errorf("create the local chunk index: %w", err)
	}
	// The lock sits beside the directory, which a rebuild replaces.
	lock, err := os.OpenFile(r.diskDir+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("lock the local chunk index: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("the local chunk index %s is in use by another process (give each its own index directory)", r.diskDir)
		}
		return fmt.Errorf("lock the local chunk index %s: %w", r.diskDir, err)
	}
	r.diskLock = lock
	for _, leftover := range []string{r.diskDir + ".new", r.diskDir + ".old"} {
		if err := os.RemoveAll(leftover); err != nil {
			r.unlockDiskIndex()
			return fmt.Errorf("remove an unfinished local chunk index: %w", err)
		}
	}
	if err := os.MkdirAll(r.diskDir, 0o700); err != nil {
		r.unlockDiskIndex()
		return fmt.Errorf("create the local chunk index: %w", err)
	}
	st, d, v, stale, err := openDiskState(r.diskDir, r.cfg.ID)
	if err != nil {
		r.unlockDiskIndex()
		return err
	}
	if stale != nil {
		r.log.Info("reading the store's whole index into the local chunk index", "dir", r.diskDir, "why", stale.Error())
	}
	r.ix, r.disk = st, d
	if v != nil {
		for _, n := range v.Pending {
			r.pending[n] = nil // seen: if it is gone, a GC finished and the index is rebuilt
		}
	}
	return nil
}

// buildDiskIndex reads every index object into a new disk index beside the current one
// (which serves lookups meanwhile) and returns it, checkpointed, for swapIndexLocked.
func (r *Repo) buildDiskIndex(ctx context.Context, p viewPlan) (*indexState, error) {
	dir := r.diskDir + ".new"
	if err := resetDir(dir); err != nil {
		return nil, err
	}
	st, d, _, _, err := openDiskState(dir, r.cfg.ID)
	if err != nil {
		return nil, err
	}
	r.log.Info("rebuilding the local chunk index from the store's index objects", "objects", len(p.toLoad))
	err = r.streamIndex(ctx, p.toLoad, func(name string, packs []packEntries) error {
		for _, pe := range packs {
			if err := st.addPack(pe.Pack, pe.Entries); err != nil {
				return err
			}
		}
		st.loaded[name] = true
		return nil
	})
	if err == nil {
		err = d.checkpoint(r.cfg.ID, &st, slices.Sorted(maps.Keys(p.pendingNow)), r.opts.Now())
	}
	if cerr := d.close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &st, nil
}

// swapIndexLocked makes fresh the index. A disk index built by buildDiskIndex takes
// the place of the current directory and is opened there. Called with r.mu held.
func (r *Repo) swapIndexLocked(fresh indexState, p viewPlan) error {
	if r.disk == nil {
		r.ix = fresh
		return nil
	}
	old := r.diskDir + ".old"
	err := r.disk.close()
	if err == nil {
		err = os.Rename(r.diskDir, old)
	}
	if err == nil {
		err = os.Rename(r.diskDir+".new", r.diskDir)
	}
	if err == nil {
		err = os.RemoveAll(old)
	}
	var st indexState
	var d *diskMap
	if err == nil {
		st, d, _, _, err = openDiskState(r.diskDir, r.cfg.ID)
	}
	if err != nil {
		r.disk = nil
		r.ix = newIndexState(memMap{}) // nothing is found: every read refreshes and fails with the reason
		r.ixBroken.Store(true)
		return fmt.Errorf("replace the local chunk index %s: %w", r.diskDir, err)
	}
	d.serve(r.indexFailed)
	r.ix, r.disk = st, d
	r.ixBroken.Store(false)
	return nil
}

// maybeCheckpointLocked writes view.json when the last one is old. Called with r.mu
// held.
func (r *Repo) maybeCheckpointLocked(now time.Time) error {
	if r.disk == nil || now.Sub(r.disk.lastView) < checkpointEvery {
		return nil
	}
	return r.disk.checkpoint(r.cfg.ID, &r.ix, slices.Sorted(maps.Keys(r.pending)), now)
}

// closeDiskIndex checkpoints and closes the disk index, if there is one.
func (r *Repo) closeDiskIndex() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.unlockDiskIndex()
	if r.disk == nil {
		return nil
	}
	err := r.disk.checkpoint(r.cfg.ID, &r.ix, slices.Sorted(maps.Keys(r.pending)), r.opts.Now())
	if cerr := r.disk.close(); err == nil {
		err = cerr
	}
	r.disk = nil
	return err
}

func (r *Repo) unlockDiskIndex() {
	if r.diskLock != nil {
		r.diskLock.Close() // releases the flock
		r.diskLock = nil
	}
}
