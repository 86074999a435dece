package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/freeze"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// Source is the server's volumes as a replication session sees them: which blocks
// changed, their data, and a freeze of their filesystems. Volumes are named by their
// index, blocks by their number at BlockSize. The agent's sources are ebpfSource and
// scanSource; the session's tests use a fake.
type Source interface {
	// Tracker is the tracker's name as reported in the server's state.
	Tracker() string
	// Continuous reports whether writes are marked dirty as they happen (eBPF). A source
	// that is not continuous is scanned whole at every session and consistency point.
	Continuous() bool
	BlockSize() int
	// Volumes describes the volumes, as the Hello names them.
	Volumes() []wire.Volume

	// Dirty counts a volume's dirty blocks; IsDirty tells one. Take clears and returns
	// up to max dirty blocks (cleared before they are read: a write completing after
	// it marks the block again). Mark makes a block dirty again (not sent after all).
	Dirty(vol int) uint64
	IsDirty(vol int, block uint64) bool
	Take(vol int, dst []uint64, max int) []uint64
	Mark(vol int, block uint64)

	// Read reads chosen blocks; Scan reads a volume whole, with each block's hash.
	Read(ctx context.Context, vol int, blocks []uint64, fn func(block uint64, data []byte) error) error
	Scan(ctx context.Context, vol int, fn func(block uint64, data []byte, hash uint64) error) error
	// Collect calls fn with every block of the volume that may differ from the replica
	// now: the dirty ones (taken), or for a scan every block but those held reports as
	// on the replica already. Blocks collected are no longer dirty: a caller that does
	// not send them marks them again.
	Collect(ctx context.Context, vol int, held func(block, hash uint64) bool, fn func(block uint64, data []byte, hash uint64) error) error
	// Sync returns once every write completed before it was called is marked.
	Sync(ctx context.Context) error
	// Lost counts the marks the tracker dropped so far (any increase: rescan).
	Lost() uint64

	// Mounts lists the filesystems to freeze for a filesystem-consistent point, or says
	// why there can be none.
	Mounts() ([]string, error)
	// Freeze freezes them for at most bound.
	Freeze(ctx context.Context, mounts []string, bound time.Duration) (Frozen, error)
}

// Frozen is a freeze in force (*freeze.Frozen).
type Frozen interface {
	// Thaw ends it; a *freeze.NotConsistentError says the bound passed first.
	Thaw() error
	// Elapsed is how long the filesystems were (or have been) frozen.
	Elapsed() time.Duration
}

// volumeSet is the agent's volumes: opened devices or image files with their dirty sets,
// and the freeze watchdog. The two trackers share it.
type volumeSet struct {
	vols      []*volume
	blockSize int
	wd        *freeze.Watchdog // nil: freezeWhy says why
	freezeWhy string
}

func (s *volumeSet) BlockSize() int { return s.blockSize }

func (s *volumeSet) Volumes() []wire.Volume {
	out := make([]wire.Volume, len(s.vols))
	for i, v := range s.vols {
		out[i] = wire.Volume{Name: v.Name, SizeBytes: uint64(v.SizeBytes), BlockSize: uint32(max(v.dev.Align(), 512))}
	}
	return out
}

func (s *volumeSet) Dirty(vol int) uint64               { return s.vols[vol].dirty.Count() }
func (s *volumeSet) IsDirty(vol int, block uint64) bool { return s.vols[vol].dirty.Dirty(block) }
func (s *volumeSet) Mark(vol int, block uint64)         { s.vols[vol].dirty.Mark(block, block) }
func (s *volumeSet) Take(vol int, dst []uint64, n int) []uint64 {
	return s.vols[vol].dirty.Take(dst, n)
}

func (s *volumeSet) Read(ctx context.Context, vol int, blocks []uint64, fn func(block uint64, data []byte) error) error {
	return s.vols[vol].dev.ReadBlocks(ctx, blocks, s.blockSize, fn)
}

func (s *volumeSet) Scan(ctx context.Context, vol int, fn func(block uint64, data []byte, hash uint64) error) error {
	return s.vols[vol].dev.Scan(ctx, s.blockSize, 0, fn)
}

// Mounts looks the mounts of the block devices up again (a filesystem may have been
// mounted since the agent started).
func (s *volumeSet) Mounts() ([]string, error) {
	var mounts []string
	for _, v := range s.vols {
		if v.device {
			if ms, err := freeze.MountsOf([]string{v.Path}); err == nil {
				v.mounts = ms
			}
		}
		for _, m := range v.mounts {
			mounts = append(mounts, m.MountPoint)
		}
	}
	switch {
	case s.wd == nil:
		return nil, errors.New(s.freezeWhy)
	case len(mounts) == 0:
		return nil, errors.New("no filesystem of the server's volumes is mounted here, so none can be frozen")
	}
	return mounts, nil
}

func (s *volumeSet) Freeze(ctx context.Context, mounts []string, bound time.Duration) (Frozen, error) {
	fr, err := s.wd.Freeze(ctx, mounts, bound)
	if err != nil {
		return nil, err
	}
	return fr, nil
}

// ebpfSource follows writes with the eBPF tracker, whose marks land in the dirty sets.
type ebpfSource struct {
	*volumeSet
	tr tracker.Tracker
}

func (s *ebpfSource) Tracker() string                { return tracker.NameEBPF }
func (s *ebpfSource) Continuous() bool               { return true }
func (s *ebpfSource) Sync(ctx context.Context) error { return s.tr.Sync(ctx) }
func (s *ebpfSource) Lost() uint64                   { return s.tr.Lost() }

// Collect takes the volume's dirty blocks and reads them.
func (s *ebpfSource) Collect(ctx context.Context, vol int, _ func(block, hash uint64) bool, fn func(block uint64, data []byte, hash uint64) error) error {
	var buf []uint64
	for s.Dirty(vol) > 0 {
		buf = s.Take(vol, buf[:0], 4096)
		err := s.Read(ctx, vol, buf, func(block uint64, data []byte) error { return fn(block, data, wire.Hash(data)) })
		if err != nil {
			for _, b := range buf { // taken, maybe not delivered: dirty again
				s.Mark(vol, b)
			}
			return err
		}
	}
	return nil
}

// scanSource is the scan tracker: nothing marks writes, so every session and every
// consistency point reads the volumes whole and compares each block's hash with the
// replica's. Its dirty sets hold only blocks put back by the session.
type scanSource struct{ *volumeSet }

func (s *scanSource) Tracker() string            { return tracker.NameScan }
func (s *scanSource) Continuous() bool           { return false }
func (s *scanSource) Sync(context.Context) error { return nil }
func (s *scanSource) Lost() uint64               { return 0 }

// scanLimit bounds what a scan source's consistency point gathers in memory.
const scanLimit = 256 << 20

// Collect scans the volume and gathers the blocks the replica does not hold (at most
// scanLimit bytes: more than that changed since the last point is sent by the next).
func (s *scanSource) Collect(ctx context.Context, vol int, held func(block, hash uint64) bool, fn func(block uint64, data []byte, hash uint64) error) error {
	var total int64
	return s.Scan(ctx, vol, func(block uint64, data []byte, hash uint64) error {
		if held(block, hash) {
			return nil
		}
		if total += int64(len(data)); total > scanLimit {
			return fmt.Errorf("more than %d MiB changed since the last pass", scanLimit>>20)
		}
		return fn(block, data, hash)
	})
}
