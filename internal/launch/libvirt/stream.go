package libvirt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"golang.org/x/sys/unix"
)

// BlockSize is the unit in which uploads skip zeros and in-place writes compare.
const BlockSize = 1 << 20

// Progress is told the bytes done so far of a stream's total.
type Progress func(done, total int64)

// UploadSpec is a disk to upload into a new volume.
type UploadSpec struct {
	Pool, Name string
	Source     io.ReaderAt // an *os.File has its holes skipped without reading them
	Size       int64
	Progress   Progress // may be nil
}

// UploadVolume creates a raw volume and uploads the disk into it through libvirt's
// stream API. In pools whose new volumes read as zeros (dir, fs, netfs) zero blocks are
// not sent. If anything fails (the pool fills, ctx ends, the host goes away) the
// partial volume is deleted, over a new connection if this one is gone.
func (c *Client) UploadVolume(ctx context.Context, s UploadSpec) (err error) {
	info, err := c.Pool(ctx, s.Pool)
	if err != nil {
		return err
	}
	if _, err := c.CreateVolume(ctx, s.Pool, s.Name, s.Size); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if derr := c.deleteAfterFailure(s.Pool, s.Name); derr != nil {
				err = fmt.Errorf("%w (and the partial volume could not be deleted: %v)", err, derr)
			}
		}
	}()
	v, err := c.lookupVolume(ctx, s.Pool, s.Name)
	if err != nil {
		return err
	}
	ranges, err := dataRanges(ctx, s.Source, s.Size, info.zeroedVolumes())
	if err != nil {
		return fmt.Errorf("read the disk to upload: %w", err)
	}
	var total int64
	for _, r := range ranges {
		total += r.len
	}
	var done int64
	for _, r := range ranges {
		if err := c.uploadRange(ctx, v, s.Source, r, &done, total, s.Progress); err != nil {
			return fmt.Errorf("upload into volume %s/%s: %w", s.Pool, s.Name, err)
		}
	}
	c.log.Info("uploaded a volume", "pool", s.Pool, "volume", s.Name, "size", s.Size, "sent", total)
	return nil
}

// deleteAfterFailure deletes a partial volume with a context of its own (the caller's
// may have ended), reconnecting when the connection was closed.
func (c *Client) deleteAfterFailure(pool, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.CallTimeout)
	defer cancel()
	cl := c
	if !c.lv.IsConnected() {
		fresh, err := Dial(ctx, c.cfg)
		if err != nil {
			return err
		}
		defer fresh.Close()
		cl = fresh
	}
	return cl.DeleteVolume(ctx, pool, name)
}

// mergeGap is the longest run of zeros an upload sends rather than start another range.
const mergeGap = 4 * BlockSize

// span is a byte range.
type span struct{ off, len int64 }

// dataRanges lists the ranges of src to send: all of it, or, when skipZero, its
// non-zero 1 MiB blocks (holes of a file are skipped without reading them), merged
// across gaps of up to mergeGap.
func dataRanges(ctx context.Context, src io.ReaderAt, size int64, skipZero bool) ([]span, error) {
	if !skipZero {
		return []span{{0, size}}, nil
	}
	var out []span
	add := func(off, n int64) {
		// Zeros in a short gap cost less to send than another stream's round trip.
		if k := len(out) - 1; k >= 0 && off-(out[k].off+out[k].len) <= mergeGap {
			out[k].len = off + n - out[k].off
			return
		}
		out = append(out, span{off, n})
	}
	buf := make([]byte, BlockSize)
	for _, d := range fileData(src, size) {
		for off := d.off; off < d.off+d.len; off += BlockSize {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			n := min(BlockSize, d.off+d.len-off)
			if _, err := src.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			if !allZero(buf[:n]) {
				add(off, n)
			}
		}
	}
	return out, nil
}

// fileData is where an *os.File holds data (SEEK_DATA/SEEK_HOLE, aligned out to
// blocks); the whole range for anything else.
func fileData(src io.ReaderAt, size int64) []span {
	f, ok := src.(*os.File)
	if !ok {
		return []span{{0, size}}
	}
	var out []span
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // no data after off
			}
			return []span{{0, size}}
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return []span{{0, size}}
		}
		start := data / BlockSize * BlockSize
		end := min(size, (hole+BlockSize-1)/BlockSize*BlockSize)
		if k := len(out) - 1; k >= 0 && out[k].off+out[k].len >= start {
			out[k].len = end - out[k].off
		} else if end > start {
			out = append(out, span{start, end - start})
		}
		off = max(hole, end)
	}
	return out
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// uploadRange sends one range of src into the volume at the same offset.
func (c *Client) uploadRange(ctx context.Context, v golibvirt.StorageVol, src io.ReaderAt, r span, done *int64, total int64, p Progress) error {
	pr := &progressReader{ctx: ctx, r: io.NewSectionReader(src, r.off, r.len), done: done, total: total, progress: p}
	return c.stream(ctx, fmt.Sprintf("upload %d bytes at offset %d", r.len, r.off), &pr.last, func() error {
		return c.lv.StorageVolUpload(v, pr, uint64(r.off), uint64(r.len), 0)
	})
}

// stream runs a stream RPC. When ctx ends, the stream's reader or writer fails, which
// aborts the stream; if that does not end it within a grace period, or no byte moves
// for StallTimeout, the connection is closed.
func (c *Client) stream(ctx context.Context, what string, last *atomic.Int64, f func() error) error {
	last.Store(time.Now().UnixNano())
	hard, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-hard.Done():
				return
			case <-ctx.Done():
				select {
				case <-hard.Done():
				case <-time.After(10 * time.Second):
					cancel(ctx.Err())
				}
				return
			case now := <-t.C:
				if now.Sub(time.Unix(0, last.Load())) > c.cfg.StallTimeout {
					cancel(fmt.Errorf("%w for %v", errStalled, c.cfg.StallTimeout))
					return
				}
			}
		}
	}()
	err := c.run(hard, what, f)
	if cause := context.Cause(hard); cause != nil && !errors.Is(cause, context.Canceled) {
		return fmt.Errorf("%s at %s: %w", what, c.addr, cause)
	}
	if ctx.Err() != nil && err != nil {
		return fmt.Errorf("%s at %s: %w", what, c.addr, ctx.Err())
	}
	return err
}

// progressReader reads a stream's source, failing once ctx ends.
type progressReader struct {
	ctx      context.Context
	r        io.Reader
	done     *int64
	total    int64
	progress Progress
	last     atomic.Int64
}

func (p *progressReader) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.r.Read(b)
	if n > 0 {
		*p.done += int64(n)
		p.last.Store(time.Now().UnixNano())
		if p.progress != nil {
			p.progress(*p.done, p.total)
		}
	}
	return n, err
}

// errStalled: no byte of a stream moved for Config.StallTimeout.
var errStalled = errors.New("no byte moved")

// errShortStream: a download stream ended before its length.
var errShortStream = errors.New("the stream ended early")

// DownloadVolume writes length bytes of a volume from offset into w.
//
// It downloads over a connection of its own, closed afterwards: go-libvirt does not
// finish a download stream (the client's closing packet), so libvirtd keeps it until
// the connection ends. With libvirt 9 under load a download was seen, now and then, to
// end early, stall, or (rarely) deliver 24 bytes that are not the volume's: a short
// download is an error, but a caller that must trust the bytes checks them (as
// WriteDiffering does, by writing whatever differs).
func (c *Client) DownloadVolume(ctx context.Context, pool, name string, w io.Writer, offset, length int64) error {
	dc, err := Dial(ctx, c.cfg)
	if err != nil {
		return fmt.Errorf("download volume %s/%s: %w", pool, name, err)
	}
	defer dc.Close()
	v, err := dc.lookupVolume(ctx, pool, name)
	if err != nil {
		return err
	}
	pw := &progressWriter{ctx: ctx, w: w}
	err = dc.stream(ctx, "download volume "+pool+"/"+name, &pw.last, func() error {
		return dc.lv.StorageVolDownload(v, pw, uint64(offset), uint64(length), 0)
	})
	if err == nil && pw.n != length {
		err = fmt.Errorf("download volume %s/%s at %s: %w after %d of %d bytes", pool, name, c.addr, errShortStream, pw.n, length)
	}
	return err
}

// VolumeSHA256 is the SHA-256 of the first length bytes of a volume, downloaded.
func (c *Client) VolumeSHA256(ctx context.Context, pool, name string, length int64) ([32]byte, error) {
	h := sha256.New()
	var sum [32]byte
	if err := c.DownloadVolume(ctx, pool, name, h, 0, length); err != nil {
		return sum, err
	}
	h.Sum(sum[:0])
	return sum, nil
}

// progressWriter writes a stream's data, failing once ctx ends.
type progressWriter struct {
	ctx  context.Context
	w    io.Writer
	n    int64 // bytes written
	last atomic.Int64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	p.last.Store(time.Now().UnixNano())
	n, err := p.w.Write(b)
	p.n += int64(n)
	return n, err
}

// compareAttempts bounds how often WriteDiffering reads a volume whose download ended
// early or stalled (see DownloadVolume).
const compareAttempts = 3

// compareVolume downloads the volume and compares it with src block by block.
func (c *Client) compareVolume(ctx context.Context, pool, name string, src io.ReaderAt, size int64) (*blockComparer, error) {
	var err error
	for attempt := 1; attempt <= compareAttempts; attempt++ {
		cmp := &blockComparer{src: src, size: size, buf: make([]byte, 0, BlockSize), srcBuf: make([]byte, BlockSize)}
		err = c.DownloadVolume(ctx, pool, name, cmp, 0, size)
		if err == nil {
			if err = cmp.flush(); err != nil {
				return nil, err
			}
			return cmp, nil
		}
		if ctx.Err() != nil || !(errors.Is(err, errStalled) || errors.Is(err, errShortStream)) {
			break
		}
		c.log.Warn("reading a volume to compare it stopped early; reading it again", "pool", pool, "volume", name, "attempt", attempt, "err", err)
	}
	return nil, fmt.Errorf("read volume %s/%s to compare it: %w", pool, name, err)
}

// DiffStats says what an in-place write compared and wrote.
type DiffStats struct {
	Blocks       int64 // 1 MiB blocks compared
	Differing    int64 // blocks that differed and were written
	BytesWritten int64
}

// WriteDiffering makes the first size bytes of an existing volume equal src, writing
// only the 1 MiB blocks that differ: it downloads the volume, compares each block with
// src, then uploads the differing ranges at their offsets.
func (c *Client) WriteDiffering(ctx context.Context, pool, name string, src io.ReaderAt, size int64, p Progress) (DiffStats, error) {
	var st DiffStats
	info, err := c.Volume(ctx, pool, name)
	if err != nil {
		return st, err
	}
	if info.CapacityBytes < uint64(size) {
		return st, fmt.Errorf("volume %s/%s holds %d bytes and the disk %d: the volume is too small", pool, name, info.CapacityBytes, size)
	}
	cmp, err := c.compareVolume(ctx, pool, name, src, size)
	if err != nil {
		return st, err
	}
	st.Blocks, st.Differing = cmp.blocks, cmp.differing
	v, err := c.lookupVolume(ctx, pool, name)
	if err != nil {
		return st, err
	}
	var total, done int64
	for _, r := range cmp.ranges {
		total += r.len
	}
	for _, r := range cmp.ranges {
		if err := c.uploadRange(ctx, v, src, r, &done, total, p); err != nil {
			return st, fmt.Errorf("write volume %s/%s: %w", pool, name, err)
		}
	}
	st.BytesWritten = done
	c.log.Info("wrote the differing blocks of a volume", "pool", pool, "volume", name, "blocks", st.Blocks, "differing", st.Differing)
	return st, nil
}

// blockComparer receives a volume's bytes and records the 1 MiB blocks that differ
// from src, as merged ranges.
type blockComparer struct {
	src       io.ReaderAt
	size      int64
	off       int64 // bytes of the volume compared so far
	buf       []byte
	srcBuf    []byte
	blocks    int64
	differing int64
	ranges    []span
}

func (b *blockComparer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), BlockSize-len(b.buf))
		b.buf = append(b.buf, p[:k]...)
		p = p[k:]
		if len(b.buf) == BlockSize {
			if err := b.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// flush compares the buffered block.
func (b *blockComparer) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	n := len(b.buf)
	if b.off+int64(n) > b.size {
		return fmt.Errorf("the volume sent more than the %d bytes asked", b.size)
	}
	if _, err := b.src.ReadAt(b.srcBuf[:n], b.off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the disk at %d: %w", b.off, err)
	}
	b.blocks++
	if !bytes.Equal(b.buf, b.srcBuf[:n]) {
		b.differing++
		if k := len(b.ranges) - 1; k >= 0 && b.ranges[k].off+b.ranges[k].len == b.off {
			b.ranges[k].len += int64(n)
		} else {
			b.ranges = append(b.ranges, span{b.off, int64(n)})
		}
	}
	b.off += int64(n)
	b.buf = b.buf[:0]
	return nil
}
