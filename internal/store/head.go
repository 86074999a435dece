package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/s2"
	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/volspec"
)

// Head is the current (unsealed) state of one volume of one source server: the
// replicator writes blocks into it and seals PITs from it. A head's durable state is
// its checkpoint (a tree, named by the object heads/SERVER/VOLUME/head) plus the
// journals written since; Flush adds a journal, a checkpoint folds them into a tree.
//
// One writer per head: a Head is not for concurrent use, and two processes must not
// open the same head at once (the replicator assigned to a server owns its heads).
// Different heads may be written concurrently.
type Head struct {
	r      *Repo
	server string
	volume string
	prefix string

	size    int64
	nblocks uint64
	leaves  *idTable // leaf ids of the checkpoint, with dirty leaves applied at checkpoint
	dirty   map[uint64]*dirtyLeaf
	version uint64    // of the head object last read or written; 0: none yet
	claim   claim     // this writer's epoch (fence.go)
	chain   *pitChain // what the server's PITs recorded; held while the head is open
	closed  bool

	seq    uint64  // last journal sequence given to a flush
	win    *window // what the blocks written since the last flush need
	last   *Flusher
	added  atomic.Int64 // bytes stored since the last seal
	mu     sync.Mutex   // guards broken and journaled (flushes complete in other goroutines)
	broken error
	// journaled is the sequence numbers of the journals stored since the last
	// checkpoint, or listed when the head was opened: what the next checkpoint removes.
	journaled []uint64
	codec     Codec
	fresh     bool   // no checkpoint or journal existed when it was opened
	seeded    bool   // it was opened as HeadOptions.Seed (new, or rebased)
	base      string // the seed it started as

	dirtyBytes int64 // memory held by dirty
}

// window is what a flush must make durable: the blocks' journal entries, the pack
// generations their chunks went into, and the blocks that were deduplicated (kept in
// case a garbage collection condemned their chunks meanwhile).
type window struct {
	opened  time.Time // when its first block was written
	pending []journalEntry
	since   uint64 // first pack generation this window depends on
	upto    uint64 // last pack generation this window depends on
	dups    map[ID][]byte
	dupSize int
	size    int64 // the volume's size when the window closed
}

func newWindow() *window { return &window{dups: map[ID][]byte{}} }

func (w *window) depend(g uint64) {
	if g == 0 {
		return
	}
	if w.since == 0 || g < w.since {
		w.since = g
	}
	w.upto = max(w.upto, g)
}

// dirtyLeaf holds the writes to one leaf since the checkpoint: a small map while they
// are few (a server with light writes touches one block here and there), a full table
// once they are many (an initial sync writes them all).
type dirtyLeaf struct {
	small map[uint32]ID
	ids   []ID
	set   []uint64 // bitset: which entries of ids were written
}

const denseAt = 64 // entries at which a dirty leaf becomes a full table

// size estimates the memory a dirty leaf holds.
func (d *dirtyLeaf) size() int64 {
	if d.ids != nil {
		return int64(len(d.ids))*32 + int64(len(d.set))*8
	}
	return int64(len(d.small)) * 64
}

func (d *dirtyLeaf) put(i uint32, id ID, fanout int) {
	if d.ids == nil {
		if _, ok := d.small[i]; ok || len(d.small) < denseAt {
			if d.small == nil {
				d.small = map[uint32]ID{}
			}
			d.small[i] = id
			return
		}
		d.ids, d.set = make([]ID, fanout), make([]uint64, (fanout+63)/64)
		for k, v := range d.small {
			d.ids[k] = v
			d.set[k/64] |= 1 << (k % 64)
		}
		d.small = nil
	}
	d.ids[i] = id
	d.set[i/64] |= 1 << (i % 64)
}

// applyTo overwrites ids (a copy of the checkpoint's leaf) with the writes.
func (d *dirtyLeaf) applyTo(ids []ID) {
	for k, v := range d.small {
		ids[k] = v
	}
	if d.ids != nil {
		for i := range ids {
			if d.set[i/64]&(1<<(i%64)) != 0 {
				ids[i] = d.ids[i]
			}
		}
	}
}

// HeadOptions modify OpenHead.
type HeadOptions struct {
	// Compression of this head's chunks: "s2", "zstd" or "none"; "" is the repository's.
	Compression string
	// MinVersion is the head version recorded outside the store (by the control plane,
	// from the PITs it recorded): a stored head older than it is refused with
	// ErrRollback.
	MinVersion uint64
	// Seed, when set, is the volume of a PIT (of any server of this repository) that a
	// head which does not exist yet starts as, sharing its chunks: the head of a
	// reversed source server begins as the PIT its recovery instance was launched
	// from, so only what changed since travels (docs/failback.md). It must have the
	// repository's block size; an existing head ignores it.
	Seed *PITVolume
	// SeedID names the seed (its server and PIT): the head records it as its base.
	SeedID string
	// Rebase replaces an existing head by the seed, once: unless the head's base is
	// SeedID already. After a failback, the origin's replica becomes the PIT written
	// onto its machine (docs/failback.md). What the head held is dropped; its PITs stay.
	Rebase bool
	// AcceptRollback opens a head that fails a rollback check anyway, as an empty
	// volume (Fresh) whose version is above every one recorded, so that its source
	// resends it whole. For an operator who has decided that the newer state is lost.
	AcceptRollback bool
}

// MaxVolumeBytes is the largest volume a head accepts (64 TiB, the bound of every
// volume Lifeboat takes): a volume's declared size comes from its source server, and
// sizes the head's tables.
const MaxVolumeBytes = volspec.MaxBytes

// maxDupBytes bounds the deduplicated block data a head keeps between flushes.
const maxDupBytes = 64 << 20

// ValidPathName reports whether s can name a server or a PIT in object names.
func validPathName(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '-' || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// volumeKey encodes a volume name for object names: kept when it is plain, else hex.
func volumeKey(volume string) string {
	if validPathName(volume) && !strings.HasPrefix(volume, "x-") {
		return volume
	}
	return "x-" + fmt.Sprintf("%x", volume)
}

func headPrefix(server, volume string) string {
	return "heads/" + server + "/" + volumeKey(volume) + "/"
}

// headState is the checkpoint object of a head.
type headState struct {
	Server    string    `json:"server"`
	Volume    string    `json:"volume"`
	Size      int64     `json:"size"`
	Root      ID        `json:"root"`
	RootLevel uint8     `json:"rootLevel"`
	Seq       uint64    `json:"seq"`            // journals up to this one are in the tree
	Version   uint64    `json:"version"`        // one more at every write of the head object
	Base      string    `json:"base,omitempty"` // the seed it started as (HeadOptions.SeedID)
	Updated   time.Time `json:"updated"`
}

func decodeHeadState(plain []byte) (headState, error) {
	var st headState
	if err := json.Unmarshal(plain, &st); err != nil {
		return st, formatErr("head state does not decode: %v", err)
	}
	if st.Size < 0 || st.Size > MaxVolumeBytes {
		return st, formatErr("head state gives the volume %d bytes", st.Size)
	}
	if st.Version == 0 {
		return st, formatErr("head state has no version")
	}
	return st, nil
}

// OpenHead opens the head of a volume, creating it when the volume is new, and
// recovers it to its last durable state (checkpoint plus journals). size is the
// volume's current size; a change is applied like a write.
//
// A head older than what was recorded of it is refused with ErrRollback: older than
// opts.MinVersion, older than the version the server's newest PIT sealed, or missing
// journals between its checkpoint and the journals present (docs/store-format.md §6).
func (r *Repo) OpenHead(ctx context.Context, server, volume string, size int64, opts HeadOptions) (*Head, error) {
	if !validPathName(server) {
		return nil, fmt.Errorf("server id %q cannot name a head: use lowercase letters, digits, '-' and '_'", server)
	}
	if err := volspec.CheckName(volume); err != nil {
		return nil, err
	}
	if err := checkVolumeSize(volume, size); err != nil {
		return nil, err
	}
	h := &Head{r: r, server: server, volume: volume, prefix: headPrefix(server, volume),
		dirty: map[uint64]*dirtyLeaf{}, win: newWindow(), codec: r.codec}
	if opts.Compression != "" {
		c, err := ParseCodec(opts.Compression)
		if err != nil {
			return nil, err
		}
		h.codec = c
	}
	chain, err := r.acquireChain(ctx, server)
	if err != nil {
		return nil, fmt.Errorf("open the head of %s/%s: %w", server, volume, err)
	}
	h.chain = chain
	r.startRefresher()
	// Claim the head before reading it (fence.go): a journal an older writer stores
	// after this is never acknowledged, and one it acknowledged is read below.
	h.claim, err = r.claimHead(ctx, h.prefix)
	if err == nil {
		err = h.recoverSettled(ctx, opts)
	}
	if err == nil {
		// Checkpoint at once into this epoch's head object, past every journal of older
		// epochs: those written from now on are never replayed. It also folds stale
		// journals away under a head newer than every record (a rollback accepted), or
		// stores a seeded head, which holds the seed's chunks from now on.
		h.seq = max(h.seq, h.claim.epoch<<seqEpochShift)
		_, err = h.checkpoint(ctx)
	}
	if err == nil {
		r.dropOlder(ctx, h.prefix, h.claim.epoch)
		err = h.SetSize(size)
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open the head of %s/%s: %w", server, volume, err)
	}
	return h, nil
}

func checkVolumeSize(volume string, size int64) error {
	if size < 0 || size > MaxVolumeBytes {
		return fmt.Errorf("volume %s declares %d bytes: a volume has 0 to %d bytes (64 TiB)", volume, size, int64(MaxVolumeBytes))
	}
	return nil
}

// resizeMark in a journal entry's block field records a size change; the new size is
// in the first eight bytes of the id field (big-endian).
const resizeMark = ^uint64(0)

func resizeEntry(size int64) journalEntry {
	e := journalEntry{Block: resizeMark}
	binary.BigEndian.PutUint64(e.ID[:8], uint64(size))
	return e
}

// errVanished is a head object or journal listed by recover that was gone when read.
var errVanished = errors.New("an object of the head vanished while it was read")

// recoverSettled recovers the head, again when an object it listed vanished before it
// was read: a writer that opened the head just before this one checkpointed it (a
// newer head object, its older objects removed) while this one read the older. Its
// head object holds what it removed, so reading again from the listing is complete;
// that writer is fenced by this one's claim.
func (h *Head) recoverSettled(ctx context.Context, opts HeadOptions) error {
	const attempts = 4
	for i := 1; ; i++ {
		err := h.recover(ctx, opts)
		if !errors.Is(err, errVanished) || i == attempts {
			return err
		}
		h.r.log.Debug("reading the head again: an older writer checkpointed it meanwhile", "head", h.prefix, "err", err)
		clear(h.dirty)
		h.account(-h.dirtyBytes)
		h.fresh, h.seeded = false, false
	}
}

// recover loads the head's durable state: its checkpoint, then the journals written
// after it, in order. It checks the state against what was recorded of it first; with
// opts.AcceptRollback a head that fails the check starts over empty.
func (h *Head) recover(ctx context.Context, opts HeadOptions) error {
	r := h.r
	began := r.opts.Now()
	name, st, exists, journals, err := h.readDurable(ctx)
	if err != nil {
		return err
	}
	h.fresh = !exists
	if err := h.checkRollback(name, st, exists, journals, opts); err != nil {
		if !opts.AcceptRollback {
			return err
		}
		r.log.Warn("a rolled-back head is accepted: the volume starts empty and its source resends it", "err", err)
		h.restart(st, journals, opts)
		return nil
	}
	if opts.Seed != nil && ((!exists && len(journals) == 0) || (opts.Rebase && st.Base != opts.SeedID)) {
		seed := opts.Seed
		if seed.BlockSize != r.cfg.BlockSize || seed.Size < 0 || seed.Size > MaxVolumeBytes {
			return fmt.Errorf("seed volume %s (%d bytes in blocks of %d) does not fit this repository's blocks of %d", seed.Name, seed.Size, seed.BlockSize, r.cfg.BlockSize)
		}
		// The journals (of the content replaced) are folded away unread.
		seq := st.Seq
		for _, j := range journals {
			seq = max(seq, j.seq)
		}
		st = headState{Size: seed.Size, Root: seed.Root, RootLevel: seed.RootLevel, Seq: seq, Version: st.Version, Base: opts.SeedID}
		h.fresh, h.seeded = false, true
	}
	h.version = st.Version
	h.base = st.Base
	h.size = st.Size
	h.nblocks = h.blocksFor(st.Size)
	nleaves, rootLevel := r.treeShape(h.nblocks)
	if st.Root.IsZero() {
		h.leaves = newIDTable(nleaves, r.cfg.Fanout)
	} else {
		if st.RootLevel != rootLevel {
			return corrupt(name, fmt.Errorf("root level %d does not fit a volume of %d bytes", st.RootLevel, st.Size))
		}
		if h.leaves, err = r.loadLeaves(ctx, st.Root, st.RootLevel, nleaves); err != nil {
			return err
		}
	}
	h.seq = st.Seq
	// Replay journals written after the checkpoint, in order. Another process (the
	// head's previous writer) may have written them, naming chunks of packs this view
	// has not indexed yet: bring it up to date first — with any refresh begun since this
	// open began (the journals' packs were stored before), so that many heads opened at
	// once (a replicator's servers moved to this one) share one refresh.
	if len(journals) > 0 && journals[len(journals)-1].seq > st.Seq {
		if err := r.refreshViewSince(ctx, began); err != nil {
			return err
		}
	}
	for _, jn := range journals {
		if jn.seq <= st.Seq {
			continue // folded into the checkpoint; a crash left it behind
		}
		h.fresh = false
		if err := h.replay(ctx, jn); err != nil {
			return err
		}
		h.seq = jn.seq
	}
	return nil
}

// readDurable reads what a crash leaves of the head: its newest head object (name; st,
// or exists false when there is none) and its journals, which it also records for the
// next checkpoint to remove. errVanished says a writer checkpointed meanwhile.
func (h *Head) readDurable(ctx context.Context) (name string, st headState, exists bool, journals []journalName, err error) {
	r := h.r
	heads, err := r.headObjects(ctx, h.prefix)
	if err != nil {
		return "", st, false, nil, err
	}
	name = headObject(h.prefix, 0)
	if len(heads) > 0 {
		name = heads[len(heads)-1] // the newest epoch's
	}
	plain, err := r.getSealed(ctx, name)
	switch {
	case err == nil:
		if st, err = decodeHeadState(plain); err != nil {
			return "", st, false, nil, corrupt(name, err)
		}
		if st.Server != h.server || st.Volume != h.volume {
			return "", st, false, nil, corrupt(name, fmt.Errorf("head state names %s/%s", st.Server, st.Volume))
		}
		exists = true
	case errors.Is(err, backend.ErrNotFound) && len(heads) > 0:
		return "", st, false, nil, fmt.Errorf("%w: %s: %w", errVanished, name, err)
	case !errors.Is(err, backend.ErrNotFound):
		return "", st, false, nil, err
	}
	if journals, err = h.journals(ctx); err != nil {
		return "", st, false, nil, err
	}
	h.mu.Lock()
	h.journaled = h.journaled[:0]
	for _, j := range journals {
		h.journaled = append(h.journaled, j.seq)
	}
	h.mu.Unlock()
	// A writer that checkpoints between the reads above removes the journals it folded
	// before this listing; its head object, stored first, is listed now.
	again, err := r.headObjects(ctx, h.prefix)
	if err != nil {
		return "", st, false, nil, err
	}
	if len(again) > 0 && again[len(again)-1] != name {
		return "", st, false, nil, fmt.Errorf("%w: %s is newer than %s", errVanished, again[len(again)-1], name)
	}
	return name, st, exists, journals, nil
}

// journalName is a journal object of a head and its sequence number.
type journalName struct {
	name string
	seq  uint64
}

// journals lists the head's journals in sequence order (the backend lists names in
// order, and sequence numbers are fixed-width hex).
func (h *Head) journals(ctx context.Context) ([]journalName, error) {
	var out []journalName
	err := h.r.be.List(ctx, h.prefix+"j-", func(oi backend.ObjectInfo) error {
		seq, err := strconv.ParseUint(strings.TrimPrefix(oi.Name, h.prefix+"j-"), 16, 64)
		if err != nil {
			return corrupt(oi.Name, errors.New("journal name has no sequence number"))
		}
		out = append(out, journalName{oi.Name, seq})
		return nil
	})
	return out, err
}

// checkRollback compares a head's stored state (st; exists false when it has no head
// object) with what was recorded of it: the caller's MinVersion, the newest version a
// PIT of the server sealed, and the journals, whose sequence numbers follow the
// checkpoint's without a gap.
func (h *Head) checkRollback(name string, st headState, exists bool, journals []journalName, opts HeadOptions) error {
	is := fmt.Sprintf("is version %d", st.Version)
	if !exists {
		is = "is missing"
	}
	const remedy = "restore the newer object from a backup or the bucket's object versions, or accept the rollback so that the source resends the volume whole"
	if st.Version < opts.MinVersion {
		return fmt.Errorf("%w: %s %s, but version %d of it was recorded outside the store: someone put back an old head object (or deleted it), or the store was rolled back: %s",
			ErrRollback, name, is, opts.MinVersion, remedy)
	}
	if ev := h.chain.evidence(h.volume); st.Version < ev.Version {
		return fmt.Errorf("%w: %s %s, but PIT %s sealed version %d of it: someone put back an old head object (or deleted it): %s",
			ErrRollback, name, is, ev.PIT, ev.Version, remedy)
	}
	next := st.Seq + 1
	for _, j := range journals {
		if j.seq <= st.Seq {
			continue
		}
		if j.seq != next {
			missing := fmt.Sprintf("%s to %s are", journalSeq(next), journalSeq(j.seq-1))
			if j.seq-1 == next {
				missing = fmt.Sprintf("%s is", journalSeq(next))
			}
			return fmt.Errorf("%w: %s holds journals up to %s, but the next journal present is %s: %s missing: the head object was put back to an older version, or journals were deleted: %s",
				ErrRollback, name, journalSeq(st.Seq), journalSeq(j.seq), missing, remedy)
		}
		next++
	}
	return nil
}

// restart makes the head an empty volume whose next checkpoint is newer than every
// version recorded of it and folds every journal present.
func (h *Head) restart(st headState, journals []journalName, opts HeadOptions) {
	h.version = max(st.Version, opts.MinVersion, h.chain.evidence(h.volume).Version)
	h.seq = st.Seq
	for _, j := range journals {
		h.seq = max(h.seq, j.seq)
	}
	h.size, h.nblocks = 0, 0
	h.leaves = newIDTable(1, h.r.cfg.Fanout)
	h.fresh = true
}

// replay applies one journal to the head.
func (h *Head) replay(ctx context.Context, jn journalName) error {
	r := h.r
	plain, err := r.getSealed(ctx, jn.name)
	if errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("%w: %s: %w", errVanished, jn.name, err)
	}
	if err != nil {
		return err
	}
	j, err := decodeJournal(plain)
	if err != nil {
		return corrupt(jn.name, err)
	}
	if j.Seq != jn.seq {
		return corrupt(jn.name, fmt.Errorf("journal holds sequence %d", j.Seq))
	}
	for _, e := range j.Entries {
		if e.Block == resizeMark {
			size := int64(binary.BigEndian.Uint64(e.ID[:8]))
			if size < 0 || size > MaxVolumeBytes {
				return corrupt(jn.name, fmt.Errorf("size change to %d", size))
			}
			h.resize(size)
			continue
		}
		if e.Block >= h.nblocks {
			return corrupt(jn.name, fmt.Errorf("block %d is past the volume's end", e.Block))
		}
		if !e.ID.IsZero() {
			if _, _, ok := r.lookup(e.ID); !ok {
				return corrupt(jn.name, fmt.Errorf("references chunk %s, which the repository does not hold", e.ID))
			}
		}
		h.set(e.Block, e.ID)
	}
	if int64(j.Size) != h.size {
		return corrupt(jn.name, fmt.Errorf("journal ends at size %d, its entries at %d", j.Size, h.size))
	}
	return nil
}

func (h *Head) blocksFor(size int64) uint64 {
	bs := int64(h.r.cfg.BlockSize)
	return uint64((size + bs - 1) / bs)
}

// Seeded reports whether the head was opened as HeadOptions.Seed: it did not exist, or
// it was rebased.
func (h *Head) Seeded() bool { return h.seeded }

// Server and Volume name the head.
func (h *Head) Server() string { return h.server }

// Volume is the volume's name.
func (h *Head) Volume() string { return h.volume }

// Size is the volume's size in bytes.
func (h *Head) Size() int64 { return h.size }

// Fresh reports whether the volume had no replica when the head was opened: no
// checkpoint and no journal.
func (h *Head) Fresh() bool { return h.fresh }

// Blocks is the number of blocks of the volume.
func (h *Head) Blocks() uint64 { return h.nblocks }

// Version is the version of the head object as last read or written: it grows by one
// at every checkpoint. A PIT records it for each volume (PITVolume.HeadVersion); a
// caller that records it may give it back as HeadOptions.MinVersion.
func (h *Head) Version() uint64 { return h.version }

func (h *Head) set(block uint64, id ID) {
	f := uint64(h.r.cfg.Fanout)
	k := block / f
	d := h.dirty[k]
	if d == nil {
		d = &dirtyLeaf{}
		h.dirty[k] = d
	}
	before := d.size()
	d.put(uint32(block%f), id, int(f))
	h.account(d.size() - before)
}

// account adds delta to the memory the head's dirty leaves hold, and the repository's.
func (h *Head) account(delta int64) {
	h.dirtyBytes += delta
	h.r.dirtyBytes.Add(delta)
}

// resize changes the volume's size. Blocks past a shrunk end become zero, so growing
// again shows zeros.
func (h *Head) resize(size int64) {
	old := h.nblocks
	f := uint64(h.r.cfg.Fanout)
	h.size = size
	h.nblocks = h.blocksFor(size)
	if h.nblocks < old && h.nblocks%f != 0 {
		// Zero the tail of the last leaf that remains.
		end := min(old, (h.nblocks/f+1)*f)
		for b := h.nblocks; b < end; b++ {
			h.set(b, ID{})
		}
	}
	nleaves, _ := h.r.treeShape(h.nblocks)
	for k, d := range h.dirty {
		if k >= nleaves {
			h.account(-d.size())
			delete(h.dirty, k)
		}
	}
	h.leaves.resize(nleaves)
}

// SetSize records a new size of the volume (the source disk grew or shrank).
func (h *Head) SetSize(size int64) error {
	if err := h.brokenErr(); err != nil {
		return err
	}
	if err := checkVolumeSize(h.volume, size); err != nil {
		return err
	}
	if size != h.size {
		h.resize(size)
		h.win.pending = append(h.win.pending, resizeEntry(size))
	}
	return nil
}

// Block is one block to write: its number and content (BlockSize bytes; the last block
// of a volume whose size is not a multiple may be shorter).
type Block struct {
	Index uint64
	Data  []byte
	// Compressed, when set, is Data already compressed with CompressedWith (S2 block
	// format or a zstd frame), as the agent sent it: a head whose codec is the same
	// stores it as it is instead of compressing again. The caller vouches that it
	// decodes to Data (the replicator got Data by decoding it).
	Compressed     []byte
	CompressedWith Codec
}

type prepared struct {
	id     ID
	sealed []byte // nil when the chunk is zero, stored, or pending
	dup    bool   // already stored: keep its data until the flush
}

// WriteBlocks writes blocks into the head. Hashing, compression and encryption run in
// parallel; the blocks are applied in order, so a later write of the same block wins.
// The data is not retained after WriteBlocks returns. Nothing is durable until Flush.
func (h *Head) WriteBlocks(ctx context.Context, blocks []Block) error {
	if err := h.brokenErr(); err != nil {
		return err
	}
	r := h.r
	bs := r.cfg.BlockSize
	for _, b := range blocks {
		if b.Index >= h.nblocks {
			return fmt.Errorf("block %d is past the end of volume %s (%d blocks)", b.Index, h.volume, h.nblocks)
		}
		if len(b.Data) > bs || (len(b.Data) < bs && int64(b.Index+1)*int64(bs) <= h.size) {
			return fmt.Errorf("block %d of volume %s has %d bytes; blocks are %d bytes", b.Index, h.volume, len(b.Data), bs)
		}
	}
	prep := make([]prepared, len(blocks))
	g, _ := errgroup.WithContext(ctx)
	workers := r.opts.Parallelism
	per := (len(blocks) + workers - 1) / workers
	for w := 0; w < workers && w*per < len(blocks); w++ {
		lo, hi := w*per, min((w+1)*per, len(blocks))
		g.Go(func() error {
			var padded []byte
			var scratch []byte
			for i := lo; i < hi; i++ {
				data := blocks[i].Data
				if len(data) < bs {
					if padded == nil {
						padded = make([]byte, bs)
					}
					clear(padded)
					copy(padded, data)
					data = padded
				}
				if allZero(data) {
					continue
				}
				id := r.keys.id(data)
				prep[i].id = id
				if _, ok := r.packer.has(id); ok {
					continue
				}
				if r.dedupable(id) {
					prep[i].dup = true
					continue
				}
				if scratch == nil {
					scratch = make([]byte, 0, 1+s2.MaxEncodedLen(bs))
				}
				if pre := blocks[i].Compressed; pre != nil && blocks[i].CompressedWith == h.codec && h.codec != CodecNone &&
					len(blocks[i].Data) == bs && len(pre) < bs {
					prep[i].sealed = r.sealPrecompressed(h.codec, blobData, id, pre, scratch)
					continue
				}
				prep[i].sealed = r.sealChunk(h.codec, blobData, id, data, scratch)
			}
			return nil
		})
	}
	_ = g.Wait()
	for i, b := range blocks {
		p := prep[i]
		if err := h.use(ctx, p, b.Data); err != nil {
			h.setBroken(err)
			return err
		}
		r.counters.count(p)
		h.set(b.Index, p.id)
		h.win.pending = append(h.win.pending, journalEntry{Block: b.Index, ID: p.id})
	}
	if h.win.opened.IsZero() && len(h.win.pending) > 0 {
		h.win.opened = time.Now()
	}
	// A window stays open a quarter of the GC grace period at most: a GC never
	// condemns a chunk younger than the grace period, so every chunk of a window is
	// journaled before any GC could take it.
	if h.win.dupSize > maxDupBytes || (!h.win.opened.IsZero() && time.Since(h.win.opened) > r.opts.GCGrace/4) {
		return h.Flush(ctx)
	}
	// Memory: a head with many changed tables, or any head once all heads of the
	// repository together hold too much, writes a checkpoint.
	if len(h.dirty) > r.opts.MaxDirtyLeaves || (h.dirtyBytes > 0 && r.dirtyBytes.Load() > r.opts.MaxDirtyBytes) {
		_, err := h.checkpoint(ctx)
		return err
	}
	return nil
}

// use makes sure a prepared chunk is stored or pending and records what the flush
// window depends on.
func (h *Head) use(ctx context.Context, p prepared, data []byte) error {
	if p.id.IsZero() {
		return nil
	}
	r := h.r
	if p.sealed != nil {
		g, err := r.packer.add(ctx, p.id, blobData, r.cfg.BlockSize, p.sealed)
		if err != nil {
			return err
		}
		h.win.depend(g)
		h.added.Add(int64(len(p.sealed)))
		return nil
	}
	if g, ok := r.packer.has(p.id); ok {
		h.win.depend(g)
		return nil
	}
	if p.dup {
		if _, kept := h.win.dups[p.id]; !kept {
			c := make([]byte, r.cfg.BlockSize)
			copy(c, data)
			h.win.dups[p.id] = c
			h.win.dupSize += len(c)
		}
		return nil
	}
	// Neither pending nor stored any more (its pack was just indexed, or a GC removed
	// it between the check and now): decide again.
	c := make([]byte, r.cfg.BlockSize)
	copy(c, data)
	return h.restore(ctx, h.win, p.id, c)
}

// restore stores a block again whose chunk may not be referenced as it is, in window w.
func (h *Head) restore(ctx context.Context, w *window, id ID, data []byte) error {
	r := h.r
	if g, ok := r.packer.has(id); ok {
		w.depend(g)
		return nil
	}
	if r.dedupable(id) {
		if _, kept := w.dups[id]; !kept {
			w.dups[id] = data
			w.dupSize += len(data)
		}
		return nil
	}
	sealed := r.sealChunk(h.codec, blobData, id, data, nil)
	g, err := r.packer.add(ctx, id, blobData, len(data), sealed)
	if err != nil {
		return err
	}
	w.depend(g)
	h.added.Add(int64(len(sealed)))
	return nil
}

func (h *Head) brokenErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.broken
}

func (h *Head) setBroken(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.broken == nil {
		h.broken = fmt.Errorf("%w: %w", ErrHeadBroken, err)
	}
}

// Flush makes every block written so far durable: the packs holding new chunks are
// stored, then a journal naming the blocks. When it returns nil, a crash of this
// process loses none of them. After an error the head is broken (ErrHeadBroken): open
// it again.
func (h *Head) Flush(ctx context.Context) error { return h.StartFlush().Wait(ctx) }

// Flusher is a flush under way: StartFlush closes the window of blocks written so far
// and returns at once, so the writer goes on writing while Wait makes the window
// durable (in another goroutine if it likes). Flushes of a head complete in order: a
// Wait waits for the flushes started before, and fails if one of them failed.
type Flusher struct {
	h    *Head
	w    *window
	seq  uint64 // journal sequence; 0 when the window wrote nothing
	prev *Flusher
	once sync.Once
	done chan struct{}
	err  error
}

// StartFlush closes the current window of writes for a flush; Wait completes it.
func (h *Head) StartFlush() *Flusher {
	f := &Flusher{h: h, w: h.win, prev: h.last, done: make(chan struct{})}
	h.win = newWindow()
	f.w.size = h.size
	if err := h.brokenErr(); err != nil {
		f.err = err
		f.once.Do(func() { close(f.done) })
	} else if len(f.w.pending) > 0 {
		h.seq++
		f.seq = h.seq
	}
	h.last = f
	return f
}

// Wait makes the flush's window durable and returns when it is (or failed).
func (f *Flusher) Wait(ctx context.Context) error {
	f.once.Do(func() {
		defer func() {
			f.prev, f.w = nil, nil // let finished flushes go
			close(f.done)
		}()
		if f.prev != nil {
			if err := f.prev.Wait(ctx); err != nil {
				f.err = err
				return
			}
		}
		if err := f.commit(ctx); err != nil {
			f.h.setBroken(err)
			f.err = fmt.Errorf("flush volume %s/%s: %w", f.h.server, f.h.volume, err)
		}
	})
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *Flusher) commit(ctx context.Context) error {
	h, w := f.h, f.w
	r := h.r
	for attempt := 0; ; attempt++ {
		// Garbage collection safety (gc.go): chunks this window deduplicated against
		// must not have been condemned by a GC this process may not have heard of. The
		// view must be fresh when the journal is written, so refresh it if needed and
		// store again any block whose chunk was condemned.
		if err := r.ensureFreshView(ctx); err != nil {
			return err
		}
		for id, data := range w.dups {
			if r.isCondemned(id) || !r.dedupable(id) {
				delete(w.dups, id)
				if err := h.restore(ctx, w, id, data); err != nil {
					return err
				}
				delete(w.dups, id)
			}
		}
		if w.upto > 0 {
			if err := r.packer.wait(ctx, w.since, w.upto); err != nil {
				return err
			}
		}
		if r.viewAge() < r.opts.GCGrace/2 {
			break
		}
		// Waiting for the packs took so long that a GC may have condemned chunks since
		// the view was read: look again before the journal commits to them.
		if attempt == 10 {
			r.log.Warn("flushing is slow compared with the GC grace period; raise the grace period", "grace", r.opts.GCGrace)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if f.seq > 0 {
		j := journal{Seq: f.seq, Size: uint64(w.size), Entries: w.pending}
		if err := r.putSealed(ctx, journalObject(h.prefix, j.Seq), encodeJournal(j), backend.PutOptions{}); err != nil {
			return err
		}
		h.mu.Lock()
		h.journaled = append(h.journaled, j.Seq)
		h.mu.Unlock()
		// Acknowledged only if no newer writer claimed the head before the journal was
		// stored: it has then read it (fence.go).
		if err := r.checkOwner(ctx, h.prefix, h.claim); err != nil {
			return err
		}
	}
	return nil
}

// checkpoint flushes, folds the dirty leaves into a new tree, stores it and the head
// state, and removes the journals it folded in. It returns the new root.
func (h *Head) checkpoint(ctx context.Context) (headState, error) {
	if err := h.Flush(ctx); err != nil {
		return headState{}, err
	}
	st, err := h.fold(ctx)
	if err != nil {
		h.setBroken(err)
		return st, fmt.Errorf("checkpoint volume %s/%s: %w", h.server, h.volume, err)
	}
	return st, nil
}

func (h *Head) fold(ctx context.Context) (headState, error) {
	r := h.r
	keys := make([]uint64, 0, len(h.dirty))
	for k := range h.dirty {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	var minGen, maxGen uint64
	dep := func(g uint64) {
		if g != 0 && (minGen == 0 || g < minGen) {
			minGen = g
		}
		maxGen = max(maxGen, g)
	}
	updates := make(map[uint64]ID, len(keys))
	for _, k := range keys {
		d := h.dirty[k]
		base, err := r.loadNode(ctx, h.leaves.get(k), 0)
		if err != nil {
			return headState{}, err
		}
		ids := make([]ID, len(base))
		copy(ids, base)
		d.applyTo(ids)
		id, g, n, err := r.storeNode(ctx, 0, ids)
		if err != nil {
			return headState{}, err
		}
		dep(g)
		h.added.Add(int64(n))
		updates[k] = id
	}
	newLeaves := h.leaves.with(updates)
	root, level, g, n, err := r.buildTree(ctx, newLeaves)
	if err != nil {
		return headState{}, err
	}
	dep(g)
	h.added.Add(int64(n))
	if maxGen > 0 {
		if err := r.packer.wait(ctx, minGen, maxGen); err != nil {
			return headState{}, err
		}
	}
	st := headState{Server: h.server, Volume: h.volume, Size: h.size, Root: root, RootLevel: level,
		Seq: h.seq, Version: h.version + 1, Base: h.base, Updated: r.opts.Now().UTC()}
	b, _ := json.Marshal(st)
	if err := r.checkOwner(ctx, h.prefix, h.claim); err != nil {
		return headState{}, err // a newer writer's head object is the one read now
	}
	if err := r.putSealed(ctx, headObject(h.prefix, h.claim.epoch), b, backend.PutOptions{}); err != nil {
		return headState{}, err
	}
	h.version = st.Version
	h.leaves = newLeaves
	clear(h.dirty)
	h.account(-h.dirtyBytes)
	h.removeFolded(ctx, st.Seq)
	return st, nil
}

// removeFolded deletes the journals this head stored or found that a checkpoint up to
// seq folded in: housekeeping, as recovery skips them. It does not list them (a list
// per checkpoint, at a site's rate of checkpoints, costs the store more than the
// deletes); one whose store failed and landed all the same is listed, and removed,
// when the head is opened next.
func (h *Head) removeFolded(ctx context.Context, seq uint64) {
	h.mu.Lock()
	var folded []uint64
	keep := h.journaled[:0]
	for _, s := range h.journaled {
		if s <= seq {
			folded = append(folded, s)
		} else {
			keep = append(keep, s)
		}
	}
	h.journaled = keep
	h.mu.Unlock()
	for _, s := range folded {
		name := journalObject(h.prefix, s)
		if err := h.r.be.Delete(ctx, name); err != nil && !errors.Is(err, backend.ErrNotFound) {
			h.r.log.Warn("could not remove a folded journal; the next checkpoint tries again", "object", name, "err", err)
			h.mu.Lock()
			h.journaled = append(h.journaled, s)
			h.mu.Unlock()
		}
	}
}

func journalObject(prefix string, seq uint64) string { return fmt.Sprintf("%sj-%016x", prefix, seq) }

// Close releases the head. Unflushed writes are dropped (they were never acknowledged).
func (h *Head) Close() error {
	if h.dirtyBytes != 0 {
		h.account(-h.dirtyBytes)
		clear(h.dirty)
	}
	h.setBroken(errors.New("the head is closed"))
	if !h.closed && h.chain != nil {
		h.r.releaseChain(h.server, h.chain)
	}
	h.closed = true
	return nil
}
