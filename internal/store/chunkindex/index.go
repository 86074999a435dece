package chunkindex

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// ID identifies a chunk (the store's ID: the keyed BLAKE3-256 hash of its plaintext).
type ID [32]byte

// Loc is where a chunk is: the fields of the store's loc.
type Loc struct {
	Pack   uint32 // pack number
	Offset uint32 // of the chunk in the pack
	Length uint32 // stored bytes
	RawLen uint32 // plaintext bytes
	Type   uint8  // blob type
}

// Options tune an index; the zero value takes the defaults.
type Options struct {
	// MemtableEntries is how many entries Put keeps in RAM before it flushes them to a
	// new segment (default 1<<20, about 100 MiB of RAM when full).
	MemtableEntries int
	// MaxSegments bounds the segments a lookup may visit (default 8).
	MaxSegments int
	// BitsPerKey sizes new segments' filters, 4 to 32 (default 12: about 0.5% false
	// positives).
	BitsPerKey int
	// BeforeFlush, when set, is called before the memtable is written to a segment,
	// with Put and Get held off: whatever its entries refer to is to be made durable
	// there (the store syncs its list of packs), so a segment never names what a crash
	// could lose.
	BeforeFlush func() error
}

func (o *Options) fill() error {
	if o.MemtableEntries == 0 {
		o.MemtableEntries = 1 << 20
	}
	if o.MaxSegments == 0 {
		o.MaxSegments = 8
	}
	if o.BitsPerKey == 0 {
		o.BitsPerKey = 12
	}
	if o.MemtableEntries < 1 || o.MaxSegments < 1 || o.BitsPerKey < 4 || o.BitsPerKey > 32 {
		return fmt.Errorf("chunk index options out of range: %d memtable entries (at least 1), "+
			"%d segments (at least 1), %d bits per key (4 to 32)", o.MemtableEntries, o.MaxSegments, o.BitsPerKey)
	}
	return nil
}

// memtableEntryBytes estimates the RAM of one memtable entry: a 52-byte key and value
// in a Go map, with its control bytes and free slots.
const memtableEntryBytes = 96

// Index maps chunk ids to locations. Its methods are safe for concurrent use.
type Index struct {
	dir  string
	opts Options
	lock *os.File // holds the directory's flock

	writeMu sync.Mutex // serialises flushes and merges

	mu      sync.RWMutex
	mem     map[ID]Loc // entries not flushed
	imm     map[ID]Loc // entries being flushed
	segs    []*segment // oldest first
	nextSeq uint64
	closed  bool

	pages sync.Pool // *[]byte page buffers for Get
}

// ErrClosed is returned by an Index's methods after Close.
var ErrClosed = errors.New("the chunk index is closed")

// Open opens the index in dir, creating it if needed. It reads only the segments'
// footers, fences and filters; it removes temporary files left by a crash and
// segments that a merge replaced.
func Open(dir string, opts Options) (*Index, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create chunk index directory: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	x := &Index{dir: dir, opts: opts, lock: lock, mem: map[ID]Loc{}, nextSeq: 1}
	x.pages.New = func() any { b := make([]byte, pageSize); return &b }
	if err := x.load(); err != nil {
		x.closeFiles()
		return nil, err
	}
	if n := len(x.segs); n > opts.MaxSegments { // opened before with a larger MaxSegments
		if err := x.mergeTail(n - opts.MaxSegments + 1); err != nil {
			x.closeFiles()
			return nil, err
		}
	}
	return x, nil
}

func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock chunk index: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("chunk index %s is in use by another process", dir)
		}
		return nil, fmt.Errorf("lock chunk index %s: %w", dir, err)
	}
	return f, nil
}

// load opens the segments in the directory.
func (x *Index) load() error {
	names, err := listSegments(x.dir)
	if err != nil {
		return err
	}
	for _, n := range names {
		s, err := openSegment(filepath.Join(x.dir, n.name), n.lo, n.hi)
		if err != nil {
			return err
		}
		x.segs = append(x.segs, s)
		x.nextSeq = max(x.nextSeq, n.hi+1)
	}
	return nil
}

// Get returns where id is.
func (x *Index) Get(id ID) (Loc, bool, error) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.closed {
		return Loc{}, false, ErrClosed
	}
	if l, ok := x.mem[id]; ok {
		return l, true, nil
	}
	if l, ok := x.imm[id]; ok {
		return l, true, nil
	}
	bp := x.pages.Get().(*[]byte)
	defer x.pages.Put(bp)
	for i := len(x.segs) - 1; i >= 0; i-- {
		if l, ok, err := x.segs[i].get(&id, *bp); err != nil || ok {
			return l, ok, err
		}
	}
	return Loc{}, false, nil
}

// Put records where id is (a later Put of the same id wins). It flushes the memtable
// when it is full, and merges segments if that makes too many.
func (x *Index) Put(id ID, l Loc) error {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return ErrClosed
	}
	x.mem[id] = l
	full := len(x.mem) >= x.opts.MemtableEntries
	x.mu.Unlock()
	if !full {
		return nil
	}
	x.writeMu.Lock()
	defer x.writeMu.Unlock()
	return x.flush(false)
}

// Flush writes the entries Put since the last flush to a new segment, and merges
// segments if that makes too many.
func (x *Index) Flush() error {
	x.writeMu.Lock()
	defer x.writeMu.Unlock()
	return x.flush(true)
}

// Compact flushes and merges every segment into one.
func (x *Index) Compact() error {
	x.writeMu.Lock()
	defer x.writeMu.Unlock()
	if err := x.flush(true); err != nil {
		return err
	}
	x.mu.RLock()
	n := len(x.segs)
	x.mu.RUnlock()
	if n < 2 {
		return nil
	}
	return x.mergeTail(n)
}

// flush writes the memtable (if force, or if it is full) and merges. writeMu is held.
func (x *Index) flush(force bool) error {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return ErrClosed
	}
	if len(x.mem) == 0 || !force && len(x.mem) < x.opts.MemtableEntries {
		x.mu.Unlock()
		return nil
	}
	if x.opts.BeforeFlush != nil {
		if err := x.opts.BeforeFlush(); err != nil {
			x.mu.Unlock()
			return err
		}
	}
	x.imm, x.mem = x.mem, map[ID]Loc{}
	seq := x.nextSeq
	x.nextSeq++
	x.mu.Unlock()

	s, err := x.writeMemtable(x.imm, seq)
	x.mu.Lock()
	if err != nil {
		for id, l := range x.imm {
			if _, ok := x.mem[id]; !ok {
				x.mem[id] = l
			}
		}
	} else {
		x.segs = append(x.segs, s)
	}
	x.imm = nil
	x.mu.Unlock()
	if err != nil {
		return err
	}
	return x.maybeMerge()
}

type entry struct {
	id  ID
	loc Loc
}

// writeMemtable writes m, sorted, as segment seq.
func (x *Index) writeMemtable(m map[ID]Loc, seq uint64) (*segment, error) {
	es := make([]entry, 0, len(m))
	for id, l := range m {
		es = append(es, entry{id, l})
	}
	slices.SortFunc(es, func(a, b entry) int { return bytes.Compare(a.id[:], b.id[:]) })
	w, err := newSegWriter(filepath.Join(x.dir, segmentName(seq, seq)), uint64(len(es)), x.opts.BitsPerKey)
	if err != nil {
		return nil, err
	}
	for i := range es {
		if err := w.add(&es[i].id, es[i].loc); err != nil {
			w.abort()
			return nil, err
		}
	}
	s, err := w.finish(seq, seq)
	if err != nil {
		w.abort()
	}
	return s, err
}

// Len is the number of entries: exact, except that an id Put again after its first
// entry was flushed counts twice until a merge folds the two.
func (x *Index) Len() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := int64(len(x.mem) + len(x.imm))
	for _, s := range x.segs {
		n += int64(s.count)
	}
	return n
}

// MemoryBytes is what the index holds in RAM: the segments' fences and filters, and
// an estimate of the memtable's.
func (x *Index) MemoryBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := int64(len(x.mem)+len(x.imm)) * memtableEntryBytes
	for _, s := range x.segs {
		n += s.memoryBytes()
	}
	return n
}

// Segments is the number of segment files (a lookup visits at most this many).
func (x *Index) Segments() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.segs)
}

// Verify reads every page of every segment and checks its checksum and order.
func (x *Index) Verify() error {
	x.writeMu.Lock() // no merge removes a segment meanwhile
	defer x.writeMu.Unlock()
	x.mu.RLock()
	segs := slices.Clone(x.segs)
	x.mu.RUnlock()
	for _, s := range segs {
		it := newIterator(s)
		var n uint64
		for {
			ok, err := it.next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if !s.filter.has(&it.id) {
				return fmt.Errorf("chunk index segment %s: its filter lacks an entry (damaged)", s.path)
			}
			n++
		}
		if n != s.count {
			return fmt.Errorf("chunk index segment %s: %d entries, its footer says %d", s.path, n, s.count)
		}
	}
	return nil
}

// Close flushes the memtable and closes the index.
func (x *Index) Close() error {
	x.writeMu.Lock()
	defer x.writeMu.Unlock()
	err := x.flush(true)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	x.mu.Lock()
	x.closed = true
	x.mu.Unlock()
	x.closeFiles()
	return err
}

func (x *Index) closeFiles() {
	for _, s := range x.segs {
		s.close()
	}
	x.segs = nil
	x.lock.Close() // releases the flock
}
