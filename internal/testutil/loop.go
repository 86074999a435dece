package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// LoopDevice creates a sparse backing file of size bytes in a temporary directory,
// attaches it to a free loop device and returns the device path and the backing file.
// The device is detached when the test ends, even if it fails.
func LoopDevice(t testing.TB, size int64) (dev, file string) {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "losetup", "mount")
	file = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatalf("create backing file: %v", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		t.Fatalf("size backing file: %v", err)
	}
	f.Close()
	out, err := Output("losetup", "--find", "--show", file)
	Need(t, err == nil, "a loop device could not be attached: "+errString(err))
	dev = strings.TrimSpace(out)
	t.Cleanup(func() {
		if _, err := Output("losetup", "--detach", dev); err != nil {
			t.Errorf("detach %s: %v", dev, err)
		}
	})
	return dev, file
}

// MkfsExt4 makes an ext4 filesystem on dev (a device or an image file).
func MkfsExt4(t testing.TB, dev string) {
	t.Helper()
	RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	Run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
}

// Mount mounts dev on a new temporary directory and returns it; it is unmounted when
// the test ends (before the directory is removed), unless the test unmounted it
// itself (Unmount).
func Mount(t testing.TB, dev string, opts ...string) string {
	t.Helper()
	RequireRoot(t)
	dir, err := os.MkdirTemp("", "lifeboat-mnt-")
	if err != nil {
		t.Fatalf("mount point: %v", err)
	}
	args := append([]string{}, opts...)
	args = append(args, dev, dir)
	if _, err := Output("mount", args...); err != nil {
		os.Remove(dir)
		t.Fatalf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() {
		if _, err := Output("mountpoint", "-q", dir); err != nil {
			os.Remove(dir) // unmounted by the test
			return
		}
		if err := unmount(dir); err != nil {
			// A lazy unmount still frees the device once nothing uses it.
			t.Errorf("umount %s: %v", dir, err)
			_, _ = Output("umount", "-l", dir)
		}
		os.Remove(dir)
	})
	return dir
}

// Unmount unmounts a directory Mount mounted, before the test ends.
func Unmount(t testing.TB, dir string) {
	t.Helper()
	if err := unmount(dir); err != nil {
		t.Fatalf("umount %s: %v", dir, err)
	}
}

// unmount unmounts dir, retrying for a while when it is busy: a process the test
// killed (or an orphan of one, such as a hook's child of a SIGKILLed agent) may still
// be letting go of its files.
func unmount(dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		if _, err = Output("umount", dir); err == nil || !strings.Contains(err.Error(), "busy") {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
