package tracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"unsafe"

	"github.com/zeebo/xxh3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// maxIO is the largest single read: large enough for sequential disk speed, small
// enough to keep two of them in memory per volume.
const maxIO = 4 << 20

// readDepth is how many reads of scattered blocks ReadBlocks keeps in flight: a disk
// serves several at once, where one at a time pays every round trip in turn (the
// blocks of a consistency point are read while the filesystems are frozen).
const readDepth = 8

// A scan has scanReaders reads in flight and scanBuffers buffers: those being read,
// one being hashed, and one spare.
const (
	scanReaders = 2
	scanBuffers = 4
)

// Volume is a block device or an image file opened read-only for replication, with
// O_DIRECT where the filesystem allows it: blocks are read from the device, never from
// the page cache, which is what makes the dirty-set invariant hold (docs/architecture.md §4, invariant 1).
//
// ReadBlocks and Scan may run concurrently; Close must not run with either.
type Volume struct {
	path     string
	fd       int
	size     int64
	align    int // offset and length alignment of direct reads
	memAlign int // buffer address alignment of direct reads
	device   bool
	direct   bool
	reason   string // why reads are buffered, when they are
	pool     sync.Pool
}

// OpenVolume opens a block device or an image file read-only. It prefers O_DIRECT; when
// the filesystem refuses it (tmpfs on older kernels, some FUSE filesystems) the volume
// is opened for buffered reads instead and Direct says why, for the agent to report:
// buffered reads of a volume being written may return stale data from the page cache
// of another mount, so such a volume should not be tracked by eBPF.
func OpenVolume(path string) (*Volume, error) {
	v := &Volume{path: path, fd: -1}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		// O_NOATIME needs to own the file or CAP_FOWNER.
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	}
	if errors.Is(err, unix.EINVAL) {
		v.reason = fmt.Sprintf("the filesystem of %s refuses O_DIRECT at open", path)
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open volume %s: %w", path, err)
	}
	v.fd = fd
	v.direct = v.reason == ""
	if err := v.probe(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	v.pool.New = func() any { b := v.alloc(maxIO); return &b }
	return v, nil
}

// probe finds the volume's kind, size and alignment, and checks that a direct read
// works.
func (v *Volume) probe() error {
	var st unix.Stat_t
	if err := unix.Fstat(v.fd, &st); err != nil {
		return fmt.Errorf("stat volume %s: %w", v.path, err)
	}
	v.align, v.memAlign = 512, 4096
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		v.device = true
		var size uint64
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
		if errno != 0 {
			err := error(errno)
			return fmt.Errorf("size of block device %s (BLKGETSIZE64): %w", v.path, err)
		}
		v.size = int64(size)
		if ss, err := unix.IoctlGetInt(v.fd, unix.BLKSSZGET); err == nil && ss > 0 {
			v.align = ss
		}
	case unix.S_IFREG:
		v.size = st.Size
		var sx unix.Statx_t
		if err := unix.Statx(v.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx); err == nil &&
			sx.Mask&unix.STATX_DIOALIGN != 0 && sx.Dio_offset_align > 0 {
			v.align = int(sx.Dio_offset_align)
			v.memAlign = max(int(sx.Dio_mem_align), 512)
		} else {
			v.align = 4096 // unknown: the largest common logical block size
		}
	default:
		return fmt.Errorf("volume %s is neither a block device nor a regular file", v.path)
	}
	v.memAlign = max(v.memAlign, v.align, 4096)
	if !v.direct || v.size == 0 {
		return nil
	}
	buf := v.alloc(v.align)
	if _, err := unix.Pread(v.fd, buf, 0); errors.Is(err, unix.EINVAL) {
		// The open was accepted but direct reads are not: fall back to buffered reads.
		v.reason = fmt.Sprintf("the filesystem of %s refuses O_DIRECT reads", v.path)
		v.direct = false
		fl, err := unix.FcntlInt(uintptr(v.fd), unix.F_GETFL, 0)
		if err == nil {
			_, err = unix.FcntlInt(uintptr(v.fd), unix.F_SETFL, fl&^unix.O_DIRECT)
		}
		if err != nil {
			return fmt.Errorf("volume %s: O_DIRECT refused and buffered reads could not be enabled: %w", v.path, err)
		}
	} else if err != nil {
		return fmt.Errorf("read the first block of volume %s: %w", v.path, err)
	}
	return nil
}

// alloc returns n bytes (n rounded up to the alignment) at an address aligned for
// direct reads.
func (v *Volume) alloc(n int) []byte {
	n = (n + v.align - 1) / v.align * v.align
	raw := make([]byte, n+v.memAlign)
	off := 0
	if r := int(addrOf(raw) % uintptr(v.memAlign)); r != 0 {
		off = v.memAlign - r
	}
	return raw[off : off+n : off+n]
}

// Path returns the path the volume was opened with.
func (v *Volume) Path() string { return v.path }

// Size returns the volume's size in bytes.
func (v *Volume) Size() int64 { return v.size }

// IsDevice reports whether the volume is a block device (not an image file).
func (v *Volume) IsDevice() bool { return v.device }

// Align returns the alignment, in bytes, that direct reads need (the logical block size).
func (v *Volume) Align() int { return v.align }

// Direct reports whether reads bypass the page cache, and when they do not, why.
func (v *Volume) Direct() (bool, string) { return v.direct, v.reason }

// Blocks returns the number of blocks of blockSize bytes in the volume, the last one
// possibly partial.
func (v *Volume) Blocks(blockSize int) uint64 {
	if blockSize <= 0 {
		return 0
	}
	return uint64((v.size + int64(blockSize) - 1) / int64(blockSize))
}

// Close releases the volume.
func (v *Volume) Close() error {
	if v.fd < 0 {
		return nil
	}
	err := unix.Close(v.fd)
	v.fd = -1
	if err != nil {
		return fmt.Errorf("close volume %s: %w", v.path, err)
	}
	return nil
}

func (v *Volume) checkBlockSize(blockSize int) error {
	if blockSize <= 0 || blockSize%v.align != 0 || blockSize > maxIO {
		return fmt.Errorf("block size %d does not suit volume %s: it must be a multiple of %d bytes and at most %d",
			blockSize, v.path, v.align, maxIO)
	}
	return nil
}

// readAt fills buf from off, stopping early only at the end of the volume; it returns
// the number of bytes read.
func (v *Volume) readAt(buf []byte, off int64) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := unix.Pread(v.fd, buf[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, fmt.Errorf("read volume %s at byte %d: %w", v.path, off+int64(done), err)
		}
		if n == 0 {
			break
		}
		done += n
		if v.direct && n%v.align != 0 {
			break // a short direct read happens only at the end of a file
		}
	}
	return done, nil
}

// ReadBlocks reads the given blocks and calls fn with each block's content, in the
// order given. Runs of adjacent blocks are read with one large aligned read, up to
// readDepth runs at once. data is valid only during the call to fn; the last block of
// a volume whose size is not a multiple of blockSize is short. Blocks past the end of
// the volume are skipped. An error from fn stops the reads and is returned as it is.
func (v *Volume) ReadBlocks(ctx context.Context, blocks []uint64, blockSize int, fn func(block uint64, data []byte) error) error {
	if err := v.checkBlockSize(blockSize); err != nil {
		return err
	}
	bufp := v.pool.Get().(*[]byte)
	defer v.pool.Put(bufp)
	buf := *bufp
	perRead := len(buf) / blockSize
	nblocks := v.Blocks(blockSize)
	// A wave is the runs that fit in buf together; they are read concurrently, then
	// handed to fn in order.
	type run struct {
		first              uint64
		n                  int
		at                 int64 // offset in buf
		want, length, read int64 // bytes of the volume, of the aligned read, read
	}
	var wave []run
	used := int64(0)
	flush := func() error {
		g := errgroup.Group{}
		g.SetLimit(readDepth)
		for k := range wave {
			r := &wave[k]
			g.Go(func() error {
				got, err := v.readAt(buf[r.at:r.at+r.length], int64(r.first)*int64(blockSize))
				r.read = int64(got)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		for _, r := range wave {
			if r.read < r.want {
				return fmt.Errorf("read volume %s: %w at byte %d (the volume shrank?)", v.path, io.ErrUnexpectedEOF, int64(r.first)*int64(blockSize)+r.read)
			}
			for k := range r.n {
				lo := r.at + int64(k*blockSize)
				hi := min(lo+int64(blockSize), r.at+r.want)
				if err := fn(r.first+uint64(k), buf[lo:hi]); err != nil {
					return err
				}
			}
		}
		wave, used = wave[:0], 0
		return nil
	}
	for i := 0; i < len(blocks); {
		if err := ctx.Err(); err != nil {
			return err
		}
		first := blocks[i]
		if first >= nblocks {
			i++
			continue
		}
		n := 1
		for i+n < len(blocks) && n < perRead && blocks[i+n] == first+uint64(n) && blocks[i+n] < nblocks {
			n++
		}
		off := int64(first) * int64(blockSize)
		want := min(int64(n*blockSize), v.size-off)
		length := (want + int64(v.align) - 1) / int64(v.align) * int64(v.align)
		if used+length > int64(len(buf)) {
			if err := flush(); err != nil {
				return err
			}
		}
		wave = append(wave, run{first: first, n: n, at: used, want: want, length: length})
		used += length
		i += n
	}
	return flush()
}

// Scan reads the volume sequentially from block from to the end and calls fn with each
// block's content and its xxh3-64 hash. Reads are large and direct, and scanReaders of
// them are in flight while fn handles the blocks of an earlier one (a queue depth of
// two keeps a disk busy where one request at a time would leave gaps). data is valid
// only during the call to fn. An error from fn stops the scan and is returned as it is.
func (v *Volume) Scan(ctx context.Context, blockSize int, from uint64, fn func(block uint64, data []byte, hash uint64) error) error {
	if err := v.checkBlockSize(blockSize); err != nil {
		return err
	}
	chunk := int64(maxIO / blockSize * blockSize)
	type result struct {
		buf *[]byte
		off int64
		n   int
		err error
	}
	type job struct {
		buf *[]byte
		off int64
		res chan result
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	free := make(chan *[]byte, scanBuffers)
	for range scanBuffers {
		free <- v.pool.Get().(*[]byte)
	}
	jobs := make(chan job, scanBuffers)
	order := make(chan chan result, scanBuffers) // results in volume order
	var wg sync.WaitGroup
	wg.Go(func() { // hands out chunks, in order
		defer close(jobs)
		defer close(order)
		for off := int64(from) * int64(blockSize); off < v.size; off += chunk {
			var bufp *[]byte
			select {
			case bufp = <-free:
			case <-ctx.Done():
				return
			}
			j := job{buf: bufp, off: off, res: make(chan result, 1)}
			order <- j.res // buffered as deep as there are buffers: never blocks
			jobs <- j
		}
	})
	for range scanReaders {
		wg.Go(func() {
			for j := range jobs {
				if ctx.Err() != nil {
					j.res <- result{buf: j.buf, err: ctx.Err()}
					continue
				}
				want := min(chunk, v.size-j.off)
				length := (want + int64(v.align) - 1) / int64(v.align) * int64(v.align)
				n, err := v.readAt((*j.buf)[:length], j.off)
				if err == nil && int64(n) < want {
					err = fmt.Errorf("read volume %s: %w at byte %d (the volume shrank?)", v.path, io.ErrUnexpectedEOF, j.off+int64(n))
				}
				j.res <- result{buf: j.buf, off: j.off, n: int(min(int64(n), want)), err: err}
			}
		})
	}
	defer func() {
		cancel()
		// Unblock the dispatcher and collect every buffer before returning them.
		for rc := range order {
			r := <-rc
			v.pool.Put(r.buf)
		}
		wg.Wait()
		for {
			select {
			case b := <-free:
				v.pool.Put(b)
			default:
				return
			}
		}
	}()
	for rc := range order {
		r := <-rc
		if r.err != nil {
			v.pool.Put(r.buf)
			return r.err
		}
		block := uint64(r.off / int64(blockSize))
		for lo := 0; lo < r.n; lo += blockSize {
			data := (*r.buf)[lo:min(lo+blockSize, r.n)]
			if err := fn(block, data, xxh3.Hash(data)); err != nil {
				v.pool.Put(r.buf)
				return err
			}
			block++
		}
		free <- r.buf
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
