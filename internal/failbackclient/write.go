package failbackclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// retries bounds the attempts at one range of blocks (a cut link, a restarted control
// plane) before the client gives up; the disk stays unbootable then.
const retries = 20

// writer makes one disk equal to its assignment's image.
type writer struct {
	c    *api.Client
	a    api.FailbackAssignment
	out  io.Writer
	log  *slog.Logger
	path string

	f       *os.File
	first   []byte // the image's first block, written last
	done    int64  // bytes of the disk compared so far
	written int64  // bytes written
	last    time.Time
}

// run writes the disk: its first block zeroed (unbootable), then range by range the
// blocks whose hash differs from the image's, synced; then the first block, synced.
func (w *writer) run(ctx context.Context) error {
	f, err := os.OpenFile(w.path, os.O_RDWR, 0)
	if err != nil {
		return w.fail(ctx, fmt.Errorf("open disk %s: %w", w.path, err))
	}
	defer f.Close()
	w.f = f
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size < w.a.SizeBytes {
		return w.fail(ctx, fmt.Errorf("disk %s holds %d bytes, the recovery point needs %d", w.path, size, w.a.SizeBytes))
	}
	bs := int64(w.a.BlockSize)
	fmt.Fprintf(w.out, "writing %s onto %s (job %s): the disk is unbootable until the write is complete\n",
		sizeText(w.a.SizeBytes), w.path, w.a.JobID)
	if err := w.unboot(bs); err != nil {
		return w.fail(ctx, err)
	}
	blocks := uint64((w.a.SizeBytes + bs - 1) / bs)
	for start := uint64(0); start < blocks; start += api.MaxDiffHashes {
		n := min(api.MaxDiffHashes, blocks-start)
		if err := w.rangeWithRetries(ctx, start, n); err != nil {
			return w.fail(ctx, err)
		}
	}
	if err := w.finish(); err != nil {
		return w.fail(ctx, err)
	}
	fmt.Fprintf(w.out, "complete: %s written of %s compared; the disk is bootable\n", sizeText(w.written), sizeText(w.a.SizeBytes))
	return w.c.FailbackProgress(context.WithoutCancel(ctx), api.FailbackProgress{JobID: w.a.JobID, DoneBytes: w.a.SizeBytes,
		TotalBytes: w.a.SizeBytes, WrittenBytes: w.written, Done: true})
}

// unboot zeroes the disk's first block (boot sector, partition table, the superblock of
// a whole-disk filesystem) and syncs: until the write completes nothing boots or mounts it.
func (w *writer) unboot(bs int64) error {
	if _, err := w.f.WriteAt(make([]byte, bs), 0); err != nil {
		return fmt.Errorf("make %s unbootable: %w", w.path, err)
	}
	return w.f.Sync()
}

// rangeWithRetries writes one range, again after a failure (what was written already
// then compares equal and is not sent twice).
func (w *writer) rangeWithRetries(ctx context.Context, start, n uint64) error {
	done, written := w.done, w.written
	var err error
	for attempt := 1; attempt <= retries; attempt++ {
		w.done, w.written = done, written
		if err = w.writeRange(ctx, start, n); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.log.Warn("a range of blocks failed; trying again", "start", start, "attempt", attempt, "err", err)
		fmt.Fprintf(w.out, "retrying blocks from %d (attempt %d of %d): %v\n", start, attempt+1, retries, err)
		_ = w.c.FailbackProgress(ctx, api.FailbackProgress{JobID: w.a.JobID, DoneBytes: w.done, TotalBytes: w.a.SizeBytes,
			WrittenBytes: w.written, Error: err.Error()})
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(min(attempt, 10)) * time.Second):
		}
	}
	return err
}

// writeRange hashes blocks [start, start+n) of the disk, sends the hashes, and writes
// the blocks the answer holds (keeping the first block for the end).
func (w *writer) writeRange(ctx context.Context, start, n uint64) error {
	bs := int64(w.a.BlockSize)
	hashes := make([]uint64, n)
	buf := make([]byte, bs)
	for i := range hashes {
		b := start + uint64(i)
		l := min(bs, w.a.SizeBytes-int64(b)*bs)
		if _, err := w.f.ReadAt(buf[:l], int64(b)*bs); err != nil && err != io.EOF {
			return fmt.Errorf("read block %d of %s: %w", b, w.path, err)
		}
		hashes[i] = wire.Hash(buf[:l])
	}
	body, err := w.c.FailbackDiff(ctx, api.FailbackDiffRequest{JobID: w.a.JobID, Start: start, Hashes: hashes})
	if err != nil {
		return err
	}
	defer body.Close()
	x, err := api.NewExtentReader(body)
	if err != nil {
		return err
	}
	for {
		off, data, err := x.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("the diff stream of blocks from %d: %w", start, err)
		}
		if err := w.put(off, data); err != nil {
			return err
		}
		w.progress(ctx, false)
	}
	w.done = min(w.a.SizeBytes, int64(start+n)*bs)
	w.progress(ctx, true)
	return nil
}

// put writes an extent, except the part in the first block, which is kept for the end.
func (w *writer) put(off int64, data []byte) error {
	bs := int64(w.a.BlockSize)
	if off < bs {
		k := min(int64(len(data)), bs-off)
		if w.first == nil {
			w.first = make([]byte, bs)
		}
		copy(w.first[off:], data[:k])
		off, data = off+k, data[k:]
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := w.f.WriteAt(data, off); err != nil {
		return fmt.Errorf("write %s at %d: %w", w.path, off, err)
	}
	w.written += int64(len(data))
	return nil
}

// finish syncs everything, then writes the first block and syncs again.
func (w *writer) finish() error {
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", w.path, err)
	}
	if w.first != nil {
		n := min(int64(w.a.BlockSize), w.a.SizeBytes)
		if _, err := w.f.WriteAt(w.first[:n], 0); err != nil {
			return fmt.Errorf("write the first block of %s: %w", w.path, err)
		}
		w.written += n
	}
	return w.f.Sync()
}

// progress reports to the control plane every 2 s (or now).
func (w *writer) progress(ctx context.Context, now bool) {
	if !now && time.Since(w.last) < 2*time.Second {
		return
	}
	w.last = time.Now()
	_ = w.c.FailbackProgress(ctx, api.FailbackProgress{JobID: w.a.JobID, DoneBytes: w.done, TotalBytes: w.a.SizeBytes, WrittenBytes: w.written})
	fmt.Fprintf(w.out, "%s compared, %s written\n", sizeText(w.done), sizeText(w.written))
}

// fail reports a failure to the control plane (for the job's log) and returns it.
func (w *writer) fail(ctx context.Context, err error) error {
	_ = w.c.FailbackProgress(context.WithoutCancel(ctx), api.FailbackProgress{JobID: w.a.JobID, DoneBytes: w.done,
		TotalBytes: w.a.SizeBytes, WrittenBytes: w.written, Error: err.Error()})
	return fmt.Errorf("%w (the disk is not complete and does not boot: run the failback client again)", err)
}

func sizeText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}
