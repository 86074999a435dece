// Package file is the staging store backend on a local directory (file://DIR): one file
// per object, written to a temporary file, fsynced, renamed into place and its directory
// fsynced, so an object is whole or absent after a crash.
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

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

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
		return nil, fmt.Errorf("create staging directory %s: %w", abs, classify(err))
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

func (b *Backend) path(name string) (string, error) {
	if err := backend.ValidName(name); err != nil {
		return "", err
	}
	return filepath.Join(b.root, filepath.FromSlash(name)), nil
}

func fail(op, name string, err error) error {
	return &backend.Error{Op: op, Name: name, Kind: kindOf(err), Err: err}
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

// Put implements backend.Backend: temporary file, fsync, rename, fsync the directory.
func (b *Backend) Put(ctx context.Context, name string, data []byte, _ backend.PutOptions) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.path(name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	var f *os.File
	for try := 0; ; try++ {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fail("put", name, err)
		}
		f, err = os.CreateTemp(dir, ".tmp-")
		// A concurrent Delete may prune the directory between the two calls.
		if err == nil || !errors.Is(err, fs.ErrNotExist) || try == 3 {
			break
		}
	}
	if err != nil {
		return fail("put", name, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fail("put", name, err)
	}
	if err := f.Sync(); err != nil {
		return fail("put", name, err)
	}
	if err := f.Close(); err != nil {
		return fail("put", name, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fail("put", name, err)
	}
	ok = true
	if err := syncDir(dir); err != nil {
		return fail("put", name, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Get implements backend.Backend.
func (b *Backend) Get(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fail("get", name, err)
	}
	return data, nil
}

// ReadAt implements backend.Backend.
func (b *Backend) ReadAt(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	if off < 0 || length < 0 {
		return nil, &backend.Error{Op: "read", Name: name, Kind: backend.ErrOutOfRange, Err: fmt.Errorf("offset %d, length %d", off, length)}
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fail("read", name, err)
	}
	defer f.Close()
	buf := make([]byte, length)
	n, err := f.ReadAt(buf, off)
	if err == io.EOF || (err == nil && int64(n) < length) {
		return nil, &backend.Error{Op: "read", Name: name, Kind: backend.ErrOutOfRange,
			Err: fmt.Errorf("%d bytes at offset %d, only %d there", length, off, n)}
	}
	if err != nil {
		return nil, fail("read", name, err)
	}
	return buf, nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return backend.ObjectInfo{}, err
	}
	p, err := b.path(name)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return backend.ObjectInfo{}, fail("stat", name, err)
	}
	if fi.IsDir() {
		return backend.ObjectInfo{}, fail("stat", name, fs.ErrNotExist)
	}
	return backend.ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements backend.Backend. Temporary files of unfinished Puts are skipped.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	// Walk from the deepest directory the prefix names, then filter by the full prefix.
	start := b.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(b.root, filepath.FromSlash(prefix[:i]))
	}
	var infos []backend.ObjectInfo
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".tmp-") {
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
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements backend.Backend. Empty directories left behind are removed.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := b.path(name)
	if err != nil {
		return err
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
func (b *Backend) Retain(_ context.Context, name string, _ time.Time) error {
	return &backend.Error{Op: "retain", Name: name, Kind: backend.ErrRetentionUnsupported}
}
