// Package atomicfile replaces a file's content so that a crash leaves the old content
// or the new one, never a part: the content goes to a temporary file in the same
// directory, which is fsynced, renamed over the file, and the directory fsynced so the
// rename itself survives.
//
// The temporary file's name starts with a dot and the file's own name
// ("." + name + ".tmp-…", the name cut to 128 bytes); one left by a crash is never
// taken for the file.
package atomicfile

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// maxBase is how much of the file's name the temporary file's name repeats.
const maxBase = 128

// WriteFile replaces the content of the file at path with data, with permissions mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return Write(context.Background(), path, mode, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// Write replaces the content of the file at path with what write writes to the
// temporary file it is given (at its start), with permissions mode. The file at path is
// replaced only if write returns nil and ctx is not done when the content is durable:
// an error leaves it as it was and removes the temporary file. Errors name path and
// wrap the system's error, so errors.Is finds its kind (fs.ErrNotExist, ENOSPC, …).
func Write(ctx context.Context, path string, mode os.FileMode, write func(*os.File) error) error {
	dir := filepath.Dir(path)
	base := filepath.Base(path)
	if len(base) > maxBase {
		base = base[:maxBase] // the temporary name stays within a file system's 255 bytes
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if !renamed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := write(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The last moment to honour a cancellation: after the rename the file is replaced.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	renamed = true
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("write %s: fsync its directory: %w", path, err)
	}
	return nil
}

// SyncDir fsyncs a directory, so that the names created or renamed in it survive a
// crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
