package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// VolumeReader reads one volume of a PIT.
type VolumeReader struct {
	r       *Repo
	pit     PIT
	vol     PITVolume
	nblocks uint64
	leaves  *idTable
}

// OpenVolume opens a volume of a PIT for reading.
func (r *Repo) OpenVolume(ctx context.Context, pit PIT, volume string) (*VolumeReader, error) {
	v, ok := pit.Volume(volume)
	if !ok {
		return nil, fmt.Errorf("PIT %s has no volume %q: %w", pit.ID, volume, ErrNotFound)
	}
	bs := int64(r.cfg.BlockSize)
	nblocks := uint64((v.Size + bs - 1) / bs)
	nleaves, _ := r.treeShape(nblocks)
	leaves, err := r.loadLeaves(ctx, v.Root, v.RootLevel, nleaves)
	if err != nil {
		return nil, fmt.Errorf("PIT %s volume %s: %w", pit.ID, volume, err)
	}
	return &VolumeReader{r: r, pit: pit, vol: v, nblocks: nblocks, leaves: leaves}, nil
}

// Size is the volume's size in bytes.
func (v *VolumeReader) Size() int64 { return v.vol.Size }

// Blocks is the number of blocks.
func (v *VolumeReader) Blocks() uint64 { return v.nblocks }

// BlockSize is the size of a block.
func (v *VolumeReader) BlockSize() int { return v.r.cfg.BlockSize }

// blockID returns the chunk id of a block (zero for an all-zero block).
func (v *VolumeReader) blockID(ctx context.Context, block uint64) (ID, error) {
	f := uint64(v.r.cfg.Fanout)
	ids, err := v.r.loadNode(ctx, v.leaves.get(block/f), 0)
	if err != nil {
		return ID{}, err
	}
	return ids[block%f], nil
}

// ReadBlock returns a block's content (BlockSize bytes, zeros for a hole), appended to
// dst[:0].
func (v *VolumeReader) ReadBlock(ctx context.Context, block uint64, dst []byte) ([]byte, error) {
	if block >= v.nblocks {
		return nil, fmt.Errorf("block %d is past the end of volume %s (%d blocks)", block, v.vol.Name, v.nblocks)
	}
	id, err := v.blockID(ctx, block)
	if err != nil {
		return nil, err
	}
	if id.IsZero() {
		dst = append(dst[:0], make([]byte, v.r.cfg.BlockSize)...)
		return dst, nil
	}
	return v.r.readChunk(ctx, id, blobData, dst[:0])
}

// ExportOptions tune Export.
type ExportOptions struct {
	// Parallelism is the number of concurrent pack reads (default 2×GOMAXPROCS).
	Parallelism int
	// WriteZeros writes zero blocks instead of leaving holes: for block devices or a
	// target that is not known to be zero.
	WriteZeros bool
	// OnlyDiffering reads each block of the target first and writes only blocks whose
	// content differs from the PIT's (launch into an existing instance, failback).
	OnlyDiffering bool
	// Progress, when set, is called with the bytes of the volume done so far.
	Progress func(done, total int64)
	// OnBlock, when set, is called with the content of every block that is not all
	// zeros (the volume's last block may be short), from several goroutines at once,
	// before the block is written or skipped. data is valid only during the call.
	OnBlock func(block uint64, data []byte)
}

// ExportStats says what an export did.
type ExportStats struct {
	Bytes         int64 // size of the volume
	WrittenBytes  int64 // bytes written to the target
	WrittenBlocks int64
	ZeroBlocks    int64 // holes (not written unless WriteZeros)
	SameBlocks    int64 // skipped because the target already held them (OnlyDiffering)
}

// exportWindow is how many leaves an export plans at once: it bounds the export's
// memory (at the defaults, 4 GiB of volume per window).
const exportWindow = 64

// Export writes the whole volume to dst at offset 0: blocks read in parallel, pack by
// pack in large sequential reads, and written where they belong; zero blocks are holes
// (dst is sized to the volume when it is a regular file; with OnlyDiffering a larger
// one keeps its tail). It returns when every block is written; it does not sync dst.
//
// The volume goes window by window (exportWindow leaves): a plan of the window (which
// blocks hold which chunk, where each chunk is, which pack ranges to read), then its
// execution (the reads, each writing its chunks' blocks, and the zero blocks).
func (v *VolumeReader) Export(ctx context.Context, dst *os.File, opts ExportOptions) (ExportStats, error) {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 2 * v.r.opts.Parallelism
	}
	x := &exporter{v: v, dst: dst, opts: opts, bs: int64(v.r.cfg.BlockSize)}
	st := ExportStats{Bytes: v.vol.Size}
	if err := x.prepareTarget(); err != nil {
		return st, err
	}
	for w := uint64(0); w < v.leaves.len(); w += exportWindow {
		plan, err := x.planWindow(ctx, w, min(w+exportWindow, v.leaves.len()))
		if err != nil {
			return st, err
		}
		if err := x.executeWindow(ctx, plan); err != nil {
			return st, err
		}
	}
	st.WrittenBytes, st.WrittenBlocks, st.ZeroBlocks, st.SameBlocks = x.written.Load(), x.writtenBlocks.Load(), x.zeroBlocks.Load(), x.same.Load()
	return st, nil
}

// exporter is one Export: its target, options and counters.
type exporter struct {
	v    *VolumeReader
	dst  *os.File
	opts ExportOptions
	bs   int64

	done, written, writtenBlocks, zeroBlocks, same atomic.Int64
}

// exportPlan is what an export does for one window of leaves.
type exportPlan struct {
	uses  map[ID][]uint64 // the blocks that hold each chunk
	zeros []uint64        // the blocks that are all zeros
	reads []packRead      // the pack ranges to read, by pack and offset
}

// chunkLoc is a chunk to read and where it lies in its pack.
type chunkLoc struct {
	id ID
	l  loc
}

// packRead is a range of a pack read in one request: chunks close together.
type packRead struct {
	pack   ID
	off    int64
	end    int64
	chunks []chunkLoc
}

// prepareTarget sizes a regular file to the volume (emptied first, so holes read as
// zeros, unless OnlyDiffering keeps what it holds) and checks that any other target is
// large enough.
func (x *exporter) prepareTarget() error {
	size, dst := x.v.vol.Size, x.dst
	fi, err := dst.Stat()
	if err != nil {
		return err
	}
	regular := fi.Mode().IsRegular()
	if regular && !x.opts.OnlyDiffering {
		if err := dst.Truncate(0); err != nil {
			return fmt.Errorf("prepare %s: %w", dst.Name(), err)
		}
	}
	if regular && (!x.opts.OnlyDiffering || fi.Size() < size) {
		// An existing target larger than the volume keeps its tail, as a device would.
		if err := dst.Truncate(size); err != nil {
			return fmt.Errorf("size %s to %d bytes: %w", dst.Name(), size, err)
		}
	} else if end, err := dst.Seek(0, io.SeekEnd); err == nil && end < size {
		return fmt.Errorf("target %s holds %d bytes, the volume %d: the target is too small", dst.Name(), end, size)
	}
	return nil
}

// planWindow plans the export of leaves [lo, hi): it reads the leaves, then finds
// each chunk's pack and groups the chunks into reads.
func (x *exporter) planWindow(ctx context.Context, lo, hi uint64) (exportPlan, error) {
	leafIDs, err := x.loadLeaves(ctx, lo, hi)
	if err != nil {
		return exportPlan{}, err
	}
	plan := exportPlan{uses: map[ID][]uint64{}}
	f := uint64(x.v.r.cfg.Fanout)
	for k := lo; k < hi; k++ {
		for i, id := range leafIDs[k-lo] {
			b := k*f + uint64(i)
			if b >= x.v.nblocks {
				break
			}
			if id.IsZero() {
				plan.zeros = append(plan.zeros, b)
				continue
			}
			plan.uses[id] = append(plan.uses[id], b)
		}
	}
	byPack, err := x.locate(ctx, plan.uses)
	if err != nil {
		return exportPlan{}, err
	}
	plan.reads = planReads(byPack)
	return plan, nil
}

// loadLeaves reads leaves [lo, hi) in parallel.
func (x *exporter) loadLeaves(ctx context.Context, lo, hi uint64) ([][]ID, error) {
	leafIDs := make([][]ID, hi-lo)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(x.opts.Parallelism)
	for k := lo; k < hi; k++ {
		g.Go(func() error {
			ids, err := x.v.r.loadNode(gctx, x.v.leaves.get(k), 0)
			leafIDs[k-lo] = ids
			return err
		})
	}
	return leafIDs, g.Wait()
}

// locate finds the pack of every chunk, reloading the index for a chunk it does not
// know (perhaps stored by another process, a replicator, since it was loaded).
func (x *exporter) locate(ctx context.Context, uses map[ID][]uint64) (map[ID][]chunkLoc, error) {
	r := x.v.r
	byPack := map[ID][]chunkLoc{}
	for id := range uses {
		l, pack, ok := r.lookup(id)
		if !ok {
			if err := r.refreshView(ctx, false); err != nil {
				return nil, err
			}
			l, pack, ok = r.lookup(id)
		}
		if !ok {
			return nil, fmt.Errorf("PIT %s volume %s: chunk %s: %w (run lifeboat store verify)", x.v.pit.ID, x.v.vol.Name, id, ErrNotFound)
		}
		byPack[pack] = append(byPack[pack], chunkLoc{id, l})
	}
	return byPack, nil
}

// planReads groups each pack's chunks into runs read in one request: chunks less than
// 1 MiB apart, up to 16 MiB a read. The reads are ordered by pack and offset.
func planReads(byPack map[ID][]chunkLoc) []packRead {
	var reads []packRead
	for pack, chunks := range byPack {
		sort.Slice(chunks, func(i, j int) bool { return chunks[i].l.offset < chunks[j].l.offset })
		var cur *packRead
		for _, c := range chunks {
			off, end := int64(c.l.offset), int64(c.l.offset)+int64(c.l.length)
			if cur != nil && off-cur.end <= 1<<20 && end-cur.off <= 16<<20 {
				cur.end = max(cur.end, end)
				cur.chunks = append(cur.chunks, c)
				continue
			}
			reads = append(reads, packRead{pack: pack, off: off, end: end, chunks: []chunkLoc{c}})
			cur = &reads[len(reads)-1]
		}
	}
	sort.Slice(reads, func(i, j int) bool {
		if reads[i].pack != reads[j].pack {
			return reads[i].pack.String() < reads[j].pack.String()
		}
		return reads[i].off < reads[j].off
	})
	return reads
}

// executeWindow runs a window's reads in parallel, each writing the blocks of its
// chunks, and writes the zero blocks (or leaves them as holes).
func (x *exporter) executeWindow(ctx context.Context, plan exportPlan) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(x.opts.Parallelism)
	for _, rd := range plan.reads {
		g.Go(func() error { return x.read(gctx, rd, plan.uses) })
	}
	if x.opts.WriteZeros || x.opts.OnlyDiffering {
		g.Go(func() error {
			zero := make([]byte, x.bs)
			buf := make([]byte, x.bs)
			for _, b := range plan.zeros {
				if err := x.writeBlock(b, ID{}, zero, buf); err != nil {
					return err
				}
				x.progress(x.blockLen(b))
			}
			return nil
		})
	} else {
		for _, b := range plan.zeros {
			x.progress(x.blockLen(b))
		}
	}
	x.zeroBlocks.Add(int64(len(plan.zeros)))
	return g.Wait()
}

// read reads one range of a pack and writes the blocks of its chunks. If a garbage
// collection repacked the pack meanwhile, it reads the chunks one at a time instead:
// readChunk reloads the index and finds their new pack.
func (x *exporter) read(ctx context.Context, rd packRead, uses map[ID][]uint64) error {
	r := x.v.r
	data, err := r.be.ReadAt(ctx, packName(rd.pack), rd.off, rd.end-rd.off)
	moved := errors.Is(err, backend.ErrNotFound)
	if err != nil && !moved {
		return fmt.Errorf("read pack %s: %w", packName(rd.pack), err)
	}
	plain := make([]byte, 0, x.bs)
	buf := make([]byte, x.bs)
	for _, c := range rd.chunks {
		if moved {
			plain, err = r.readChunk(ctx, c.id, blobData, plain[:0])
		} else {
			s := int64(c.l.offset) - rd.off
			plain, err = r.openChunk(data[s:s+int64(c.l.length)], c.l, c.id, blobData, packName(rd.pack), plain[:0])
		}
		if err != nil {
			return err
		}
		for _, b := range uses[c.id] {
			if err := x.writeBlock(b, c.id, plain, buf); err != nil {
				return err
			}
			x.progress(x.blockLen(b))
		}
	}
	return nil
}

// writeBlock writes one block's content, or skips it when OnlyDiffering finds the
// target holds it already. buf is scratch space of a block.
func (x *exporter) writeBlock(b uint64, id ID, data []byte, buf []byte) error {
	n, dst := x.blockLen(b), x.dst
	if x.opts.OnBlock != nil && !id.IsZero() {
		x.opts.OnBlock(b, data[:n])
	}
	if x.opts.OnlyDiffering {
		cur := buf[:n]
		if _, err := dst.ReadAt(cur, int64(b)*x.bs); err != nil && err != io.EOF {
			return fmt.Errorf("read block %d of %s: %w", b, dst.Name(), err)
		}
		if (id.IsZero() && allZero(cur)) || (!id.IsZero() && x.v.r.keys.id(padTo(cur, buf, int(x.bs))) == id) {
			x.same.Add(1)
			return nil
		}
	}
	if _, err := dst.WriteAt(data[:n], int64(b)*x.bs); err != nil {
		return fmt.Errorf("write block %d to %s: %w", b, dst.Name(), err)
	}
	x.written.Add(n)
	x.writtenBlocks.Add(1)
	return nil
}

// blockLen is the length of block b: a block, or less for the volume's last.
func (x *exporter) blockLen(b uint64) int64 { return min(x.bs, x.v.vol.Size-int64(b)*x.bs) }

// progress counts n more bytes of the volume done.
func (x *exporter) progress(n int64) {
	d := x.done.Add(n)
	if x.opts.Progress != nil {
		x.opts.Progress(min(d, x.v.vol.Size), x.v.vol.Size)
	}
}

// padTo returns b extended with zeros to n bytes (using buf's storage when b is buf's
// prefix), as the last block of a volume is hashed.
func padTo(b, buf []byte, n int) []byte {
	if len(b) == n {
		return b
	}
	out := buf[:n]
	clear(out[len(b):])
	return out
}
