// Package file is the staging store backend on a local directory (file://DIR): one file
// per object, written to a temporary file, fsynced, renamed into place and its directory
// fsynced (and the directories created for it, up to the root), so an object is whole or
// absent after a crash.
//
// A directory has no object retention of its own: locks are enforced by the store, and
// Capabilities reports it.
package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// tmpPrefix starts the names of temporary files of unfinished Puts (atomicfile's
// names start with a dot). No object name has an element starting with '.', so they
// never collide with an object.
const tmpPrefix = "."

// Backend keeps objects as files under a root directory.
type Backend struct {
	root string
}

// Open returns a backend on dir, creating it if needed.
func Open(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("staging directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create staging directory %s (check the path and its permissions): %w", abs, classify(err))
	}
	return &Backend{root: abs}, nil
}

// Root is the directory objects are kept in.
func (b *Backend) Root() string { return b.root }

// Location implements backend.Backend.
func (b *Backend) Location() string { return "file://" + b.root }

// Capabilities implements backend.Backend.
func (b *Backend) Capabilities() backend.Capabilities { return backend.Capabilities{} }

// Close implements backend.Backend.
func (b *Backend) Close() error { return nil }

// begin checks the context and the name of an operation and returns the object's path.
func (b *Backend) begin(ctx context.Context, op, name string) (string, error) {
	if err := backend.ValidName(name); err != nil {
		return "", &backend.Error{Op: op, Name: name, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return "", &backend.Error{Op: op, Name: name, Err: err}
	}
	return filepath.Join(b.root, filepath.FromSlash(name)), nil
}

func fail(op, name string, err error) error {
	return &backend.Error{Op: op, Name: name, Kind: kindOf(err), Err: err}
}

// readFail is fail for reads: a path through a file (ENOTDIR) or naming a directory
// (EISDIR) is no object.
func readFail(op, name string, err error) error {
	if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR) {
		return &backend.Error{Op: op, Name: name, Kind: backend.ErrNotFound, Err: err}
	}
	return fail(op, name, err)
}

// kindOf maps an OS error to the backend's error kinds.
func kindOf(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return backend.ErrNotFound
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return backend.ErrFull
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return backend.ErrAccess
	case errors.Is(err, syscall.EIO):
		return backend.ErrUnavailable
	}
	return nil
}

func classify(err error) error {
	if k := kindOf(err); k != nil {
		return fmt.Errorf("%w: %w", k, err)
	}
	return err
}

// Put implements backend.Backend: temporary file, fsync, rename, fsync the directory
// (atomicfile.Write).
func (b *Backend) Put(ctx context.Context, name string, data []byte, _ backend.PutOptions) error {
	p, err := b.begin(ctx, "put", name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	for try := 0; ; try++ {
		if err := b.mkdirAll(dir); err != nil {
			return fail("put", name, err)
		}
		err = atomicfile.Write(ctx, p, 0o600, func(f *os.File) error { return write(f, data) })
		// A concurrent Delete may prune the directory between the two calls.
		if err == nil || !errors.Is(err, fs.ErrNotExist) || try == 3 {
			break
		}
	}
	if err != nil {
		return fail("put", name, err)
	}
	return nil
}

// Objects of at least directMin bytes whose memory starts on a directAlign boundary
// (packs are: Go places large allocations on page boundaries) are written with
// O_DIRECT, all but their last partial block: the staging store writes far more than
// it reads back, so copying packs into the page cache only costs CPU and evicts what
// the machine does use.
const (
	directMin   = 1 << 20
	directAlign = 4096 // a multiple of every device's logical block size
)

// write writes data at the start of the new file f.
func write(f *os.File, data []byte) error {
	aligned := len(data) &^ (directAlign - 1)
	if len(data) >= directMin && uintptr(unsafe.Pointer(unsafe.SliceData(data)))%directAlign == 0 {
		done, err := writeDirect(f, data[:aligned])
		if err != nil {
			return err
		}
		if done {
			data = data[aligned:]
		} else if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	_, err := f.Write(data)
	return err
}

// writeDirect writes data (aligned) with O_DIRECT. It returns false and no error when
// the filesystem does not take direct I/O (the caller then writes through the page
// cache, from the start of the file).
func writeDirect(f *os.File, data []byte) (bool, error) {
	fd := int(f.Fd())
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return false, nil
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags|unix.O_DIRECT); err != nil {
		return false, nil
	}
	_, werr := f.Write(data)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags); err != nil && werr == nil {
		werr = err
	}
	if errors.Is(werr, unix.EINVAL) {
		return false, nil
	}
	return werr == nil, werr
}

// mkdirAll creates dir and its missing parents below the root, fsyncing the parent of
// each, so the path to a new object survives a crash as the object does.
func (b *Backend) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != b.root && len(parent) > len(b.root) {
		if err := b.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// Also when a concurrent Put made it: it may not have synced the parent yet.
	return atomicfile.SyncDir(parent)
}

// Get implements backend.Backend.
func (b *Backend) Get(ctx context.Context, name string) ([]byte, error) {
	p, err := b.begin(ctx, "get", name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, readFail("get", name, err)
	}
	return data, nil
}

// ReadAt implements backend.Backend.
func (b *Backend) ReadAt(ctx context.Context, name string, off, length int64) ([]byte, error) {
	p, err := b.begin(ctx, "read", name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, readFail("read", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, readFail("read", name, err)
	}
	if fi.IsDir() {
		return nil, readFail("read", name, syscall.EISDIR)
	}
	size := fi.Size()
	if off < 0 || length < 0 || off > size || length > size-off {
		return nil, &backend.Error{Op: "read", Name: name, Kind: backend.ErrOutOfRange,
			Err: fmt.Errorf("%d bytes at offset %d of a %d-byte object", length, off, size)}
	}
	buf := make([]byte, length)
	n, err := f.ReadAt(buf, off)
	if err == io.EOF || (err == nil && int64(n) < length) {
		// The file is never written in place, so only an outside hand truncates it.
		return nil, &backend.Error{Op: "read", Name: name, Kind: backend.ErrOutOfRange,
			Err: fmt.Errorf("%d bytes at offset %d, only %d there", length, off, n)}
	}
	if err != nil {
		return nil, readFail("read", name, err)
	}
	return buf, nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	p, err := b.begin(ctx, "stat", name)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return backend.ObjectInfo{}, readFail("stat", name, err)
	}
	if fi.IsDir() {
		return backend.ObjectInfo{}, readFail("stat", name, syscall.EISDIR)
	}
	return backend.ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements backend.Backend. Temporary files of unfinished Puts are skipped.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if err := backend.ValidPrefix(prefix); err != nil {
		return &backend.Error{Op: "list", Name: prefix, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return &backend.Error{Op: "list", Name: prefix, Err: err}
	}
	// Walk from the deepest directory the prefix names, then filter by the full prefix.
	start := b.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(b.root, filepath.FromSlash(prefix[:i]))
	}
	var infos []backend.ObjectInfo
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || (p == start && errors.Is(err, syscall.ENOTDIR)) {
				return nil // removed while listing, or the prefix runs through an object
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(b.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while listing
			}
			return err
		}
		infos = append(infos, backend.ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return fail("list", prefix, err)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return &backend.Error{Op: "list", Name: prefix, Err: err}
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements backend.Backend. Empty directories left behind are removed.
func (b *Backend) Delete(ctx context.Context, name string) error {
	p, err := b.begin(ctx, "delete", name)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return nil
	case err != nil:
		return fail("delete", name, err)
	case fi.IsDir():
		return nil // a directory of other objects' names, not an object
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail("delete", name, err)
	}
	// Best effort: prune now-empty parent directories up to the root.
	for dir := filepath.Dir(p); dir != b.root && strings.HasPrefix(dir, b.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// Retain implements backend.Backend: a directory cannot lock files against its owner.
func (b *Backend) Retain(ctx context.Context, name string, _ time.Time) error {
	if _, err := b.begin(ctx, "retain", name); err != nil {
		return err
	}
	return &backend.Error{Op: "retain", Name: name, Kind: backend.ErrRetentionUnsupported}
}
