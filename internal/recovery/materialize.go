package recovery

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// VolumeStats is what materializing one volume did.
type VolumeStats struct {
	Volume string `json:"volume"`
	Path   string `json:"path"`
	store.ExportStats
	// Hashes is the PIT's volume as the agent's hash table (every block's XXH3-64 at
	// the store's block size), when Materialize was asked for it.
	Hashes *tracker.HashTable `json:"-"`
}

// Materialize writes a PIT's volumes to their disks, all volumes at once, each streamed
// from the staging store in large sequential pack reads: a fresh disk gets a sparse
// file (holes for zero blocks), a device every block, an existing disk only the blocks
// that differ. progress, when set, is called with the bytes done over all volumes.
// The disks are synced before it returns, so a crash of the host after it cannot lose
// what a launch then boots from.
//
// With hashes, each volume's VolumeStats.Hashes is its hash table as the PIT holds it,
// computed on the way: what a reversed agent's replica starts as (SeedTables).
func Materialize(ctx context.Context, repo *store.Repo, pit store.PIT, disks []launch.Disk, hashes bool, progress func(done, total int64)) ([]VolumeStats, error) {
	var total int64
	for _, d := range disks {
		total += d.SizeBytes
	}
	done := make([]atomic.Int64, len(disks))
	var mu sync.Mutex
	report := func() {
		if progress == nil {
			return
		}
		var sum int64
		for i := range done {
			sum += done[i].Load()
		}
		mu.Lock()
		progress(sum, total)
		mu.Unlock()
	}
	stats := make([]VolumeStats, len(disks))
	g, gctx := errgroup.WithContext(ctx)
	for i, d := range disks {
		g.Go(func() error {
			stats[i] = VolumeStats{Volume: d.Volume, Path: d.Path}
			if hashes {
				t, err := seedTable(repo, pit, d.Volume)
				if err != nil {
					return err
				}
				stats[i].Hashes = t
			}
			st, err := materializeOne(gctx, repo, pit, d, stats[i].Hashes, func(n, _ int64) {
				done[i].Store(n)
				report()
			})
			stats[i].ExportStats = st
			if err != nil {
				return fmt.Errorf("volume %s to %s: %w", d.Volume, d.Path, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return stats, err
	}
	return stats, nil
}

// seedTable is a hash table of the PIT's volume in which every block holds the hash of
// zeros: Export's OnBlock replaces those of the blocks that are not.
func seedTable(repo *store.Repo, pit store.PIT, volume string) (*tracker.HashTable, error) {
	var size int64
	for _, v := range pit.Volumes {
		if v.Name == volume {
			size = v.Size
		}
	}
	bs := repo.BlockSize()
	t, err := tracker.NewHashTable(volume, size, bs)
	if err != nil {
		return nil, err
	}
	zeros := make([]byte, bs)
	full := wire.Hash(zeros)
	for b := range t.Blocks() {
		if n := size - int64(b)*int64(bs); n < int64(bs) {
			t.Set(b, wire.Hash(zeros[:n]))
		} else {
			t.Set(b, full)
		}
	}
	return t, nil
}

func materializeOne(ctx context.Context, repo *store.Repo, pit store.PIT, d launch.Disk, hashes *tracker.HashTable, progress func(done, total int64)) (store.ExportStats, error) {
	v, err := repo.OpenVolume(ctx, pit, d.Volume)
	if err != nil {
		return store.ExportStats{}, err
	}
	flags := os.O_RDWR
	opts := store.ExportOptions{Progress: progress}
	if hashes != nil {
		opts.OnBlock = func(b uint64, data []byte) { hashes.Set(b, wire.Hash(data)) }
	}
	switch d.Mode {
	case launch.WriteFresh:
		if err := os.MkdirAll(filepath.Dir(d.Path), 0o700); err != nil {
			return store.ExportStats{}, err
		}
		flags |= os.O_CREATE | os.O_TRUNC
	case launch.WriteDevice:
		opts.WriteZeros = true
	case launch.WriteDiffering:
		opts.OnlyDiffering = true
	}
	f, err := os.OpenFile(d.Path, flags, 0o600)
	if err != nil {
		return store.ExportStats{}, err
	}
	st, err := v.Export(ctx, f, opts)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return st, err
}
