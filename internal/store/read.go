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
func (v *VolumeReader) Export(ctx context.Context, dst *os.File, opts ExportOptions) (ExportStats, error) {
	r := v.r
	bs := int64(r.cfg.BlockSize)
	st := ExportStats{Bytes: v.vol.Size}
	if opts.Parallelism <= 0 {
		opts.Parallelism = 2 * r.opts.Parallelism
	}
	fi, err := dst.Stat()
	if err != nil {
		return st, err
	}
	regular := fi.Mode().IsRegular()
	if regular && !opts.OnlyDiffering {
		if err := dst.Truncate(0); err != nil {
			return st, fmt.Errorf("prepare %s: %w", dst.Name(), err)
		}
	}
	if regular && (!opts.OnlyDiffering || fi.Size() < v.vol.Size) {
		// An existing target larger than the volume keeps its tail, as a device would.
		if err := dst.Truncate(v.vol.Size); err != nil {
			return st, fmt.Errorf("size %s to %d bytes: %w", dst.Name(), v.vol.Size, err)
		}
	} else if end, err := dst.Seek(0, io.SeekEnd); err == nil && end < v.vol.Size {
		return st, fmt.Errorf("target %s holds %d bytes, the volume %d: the target is too small", dst.Name(), end, v.vol.Size)
	}
	var done, written, writtenBlocks, zeroBlocks, same atomic.Int64
	progress := func(n int64) {
		d := done.Add(n)
		if opts.Progress != nil {
			opts.Progress(min(d, v.vol.Size), v.vol.Size)
		}
	}
	blockLen := func(b uint64) int64 { return min(bs, v.vol.Size-int64(b)*bs) }
	zero := make([]byte, bs)
	f := uint64(r.cfg.Fanout)

	// writeBlock writes one block's content, or skips it when the target holds it.
	writeBlock := func(b uint64, id ID, data []byte, buf []byte) error {
		n := blockLen(b)
		if opts.OnlyDiffering {
			cur := buf[:n]
			if _, err := dst.ReadAt(cur, int64(b)*bs); err != nil && err != io.EOF {
				return fmt.Errorf("read block %d of %s: %w", b, dst.Name(), err)
			}
			if (id.IsZero() && allZero(cur)) || (!id.IsZero() && r.keys.id(padTo(cur, buf, int(bs))) == id) {
				same.Add(1)
				return nil
			}
		}
		if _, err := dst.WriteAt(data[:n], int64(b)*bs); err != nil {
			return fmt.Errorf("write block %d to %s: %w", b, dst.Name(), err)
		}
		written.Add(n)
		writtenBlocks.Add(1)
		return nil
	}

	for w := uint64(0); w < v.leaves.len(); w += exportWindow {
		// Plan: which blocks use which chunk, grouped by pack.
		hi := min(w+exportWindow, v.leaves.len())
		leafIDs := make([][]ID, hi-w)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(opts.Parallelism)
		for k := w; k < hi; k++ {
			g.Go(func() error {
				ids, err := r.loadNode(gctx, v.leaves.get(k), 0)
				leafIDs[k-w] = ids
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return st, err
		}
		uses := map[ID][]uint64{}
		var zeros []uint64
		for k := w; k < hi; k++ {
			for i, id := range leafIDs[k-w] {
				b := k*f + uint64(i)
				if b >= v.nblocks {
					break
				}
				if id.IsZero() {
					zeros = append(zeros, b)
					continue
				}
				uses[id] = append(uses[id], b)
			}
		}
		type item struct {
			id ID
			l  loc
		}
		byPack := map[ID][]item{}
		for id := range uses {
			l, pack, ok := r.lookup(id)
			if !ok {
				// Perhaps stored by another process (a replicator) since the index was loaded.
				if err := r.refreshView(ctx, false); err != nil {
					return st, err
				}
				l, pack, ok = r.lookup(id)
			}
			if !ok {
				return st, fmt.Errorf("PIT %s volume %s: chunk %s: %w (run lifeboat store verify)", v.pit.ID, v.vol.Name, id, ErrNotFound)
			}
			byPack[pack] = append(byPack[pack], item{id, l})
		}
		// Reads: runs of chunks close together in a pack, read in one request.
		type read struct {
			pack  ID
			off   int64
			end   int64
			items []item
		}
		var reads []read
		for pack, items := range byPack {
			sort.Slice(items, func(i, j int) bool { return items[i].l.offset < items[j].l.offset })
			var cur *read
			for _, it := range items {
				off, end := int64(it.l.offset), int64(it.l.offset)+int64(it.l.length)
				if cur != nil && off-cur.end <= 1<<20 && end-cur.off <= 16<<20 {
					cur.end = max(cur.end, end)
					cur.items = append(cur.items, it)
					continue
				}
				reads = append(reads, read{pack: pack, off: off, end: end, items: []item{it}})
				cur = &reads[len(reads)-1]
			}
		}
		sort.Slice(reads, func(i, j int) bool {
			if reads[i].pack != reads[j].pack {
				return reads[i].pack.String() < reads[j].pack.String()
			}
			return reads[i].off < reads[j].off
		})
		g, gctx = errgroup.WithContext(ctx)
		g.SetLimit(opts.Parallelism)
		for _, rd := range reads {
			g.Go(func() error {
				data, err := r.be.ReadAt(gctx, packName(rd.pack), rd.off, rd.end-rd.off)
				moved := errors.Is(err, backend.ErrNotFound) // a garbage collection repacked it meanwhile
				if err != nil && !moved {
					return fmt.Errorf("read pack %s: %w", packName(rd.pack), err)
				}
				plain := make([]byte, 0, bs)
				buf := make([]byte, bs)
				for _, it := range rd.items {
					if moved {
						// One chunk at a time: readChunk reloads the index and finds its new pack.
						plain, err = r.readChunk(gctx, it.id, blobData, plain[:0])
					} else {
						s := int64(it.l.offset) - rd.off
						plain, err = r.openChunk(data[s:s+int64(it.l.length)], it.l, it.id, blobData, packName(rd.pack), plain[:0])
					}
					if err != nil {
						return err
					}
					for _, b := range uses[it.id] {
						if err := writeBlock(b, it.id, plain, buf); err != nil {
							return err
						}
						progress(blockLen(b))
					}
				}
				return nil
			})
		}
		if opts.WriteZeros || opts.OnlyDiffering {
			g.Go(func() error {
				buf := make([]byte, bs)
				for _, b := range zeros {
					if err := writeBlock(b, ID{}, zero, buf); err != nil {
						return err
					}
					progress(blockLen(b))
				}
				return nil
			})
		} else {
			for _, b := range zeros {
				progress(blockLen(b))
			}
		}
		zeroBlocks.Add(int64(len(zeros)))
		if err := g.Wait(); err != nil {
			return st, err
		}
	}
	st.WrittenBytes, st.WrittenBlocks, st.ZeroBlocks, st.SameBlocks = written.Load(), writtenBlocks.Load(), zeroBlocks.Load(), same.Load()
	return st, nil
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
