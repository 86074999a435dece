package file_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendtest"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

func open(t *testing.T, dir string) *file.Backend {
	t.Helper()
	b, err := file.Open(dir)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	return b
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return open(t, filepath.Join(t.TempDir(), "staging"))
	})
}

// tempFiles returns the temporary files of Puts left under root.
func tempFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") { // atomicfile's ".<name>.tmp-…", or older ".tmp-…"
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

// TestFull fills small real file systems: Put fails with ErrFull, leaves no temporary
// file, keeps the objects written before, and works again once space is freed.
func TestFull(t *testing.T) {
	for _, kind := range []string{"tmpfs", "ext4"} {
		t.Run(kind, func(t *testing.T) {
			var mnt string
			switch kind {
			case "tmpfs":
				testutil.RequireRoot(t)
				mnt = testutil.Mount(t, "tmpfs", "-t", "tmpfs", "-o", "size=8m")
			case "ext4":
				dev, _ := testutil.LoopDevice(t, 8<<20)
				testutil.MkfsExt4(t, dev)
				mnt = testutil.Mount(t, dev)
			}
			ctx := t.Context()
			b := open(t, filepath.Join(mnt, "staging"))
			earlier := map[string][]byte{}
			for i := range 2 {
				name := fmt.Sprintf("data/early-%d", i)
				earlier[name] = backendtest.Data(name, 1<<20)
				if err := b.Put(ctx, name, earlier[name], backend.PutOptions{}); err != nil {
					t.Fatalf("put %s on an empty file system: %v", name, err)
				}
			}

			// Larger than the file system.
			err := b.Put(ctx, "data/huge", backendtest.Data("huge", 16<<20), backend.PutOptions{})
			backendtest.RequireKind(t, err, backend.ErrFull, "data/huge")

			// Fill it up, in a bounded number of puts.
			full := false
			var last string
			for i := 0; i < 32 && !full; i++ {
				last = fmt.Sprintf("fill/%d", i)
				err := b.Put(ctx, last, backendtest.Data(last, 512<<10), backend.PutOptions{})
				if err != nil {
					backendtest.RequireKind(t, err, backend.ErrFull, last)
					full = true
				}
			}
			if !full {
				t.Fatal("32 puts of 512 KiB fit on an 8 MiB file system")
			}
			if tmp := tempFiles(t, b.Root()); len(tmp) != 0 {
				t.Fatalf("failed puts left temporary files: %v", tmp)
			}
			for name, data := range earlier {
				got, err := b.Get(ctx, name)
				if err != nil || string(got) != string(data) {
					t.Fatalf("get %s after the file system filled: %d bytes, %v", name, len(got), err)
				}
			}
			if _, err := b.Stat(ctx, last); !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("stat %s, whose put failed: %v, want ErrNotFound", last, err)
			}
			// Space freed, puts work again.
			if err := b.Delete(ctx, "data/early-0"); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if err := b.Put(ctx, "data/after", []byte("room again"), backend.PutOptions{}); err != nil {
				t.Fatalf("put after freeing space: %v", err)
			}
		})
	}
}

// TestReadOnly: a staging directory that cannot be written (a read-only mount; as
// root, permission bits would not stop the test) gives ErrAccess, and reads still work.
func TestReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testutil.Mount(t, "tmpfs", "-t", "tmpfs", "-o", "size=4m")
	ctx := t.Context()
	b := open(t, filepath.Join(mnt, "staging"))
	if err := b.Put(ctx, "data/kept", []byte("kept"), backend.PutOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	testutil.Run(t, "mount", "-o", "remount,ro", mnt)

	err := b.Put(ctx, "data/new", []byte("x"), backend.PutOptions{})
	backendtest.RequireKind(t, err, backend.ErrAccess, "data/new")
	err = b.Put(ctx, "other/new", []byte("x"), backend.PutOptions{})
	backendtest.RequireKind(t, err, backend.ErrAccess, "other/new")
	backendtest.RequireKind(t, b.Delete(ctx, "data/kept"), backend.ErrAccess, "data/kept")
	got, err := b.Get(ctx, "data/kept")
	if err != nil || string(got) != "kept" {
		t.Fatalf("get on a read-only file system: %q, %v", got, err)
	}
}

// TestLeftoverTempFiles: what a Put killed midway leaves is never listed or read.
func TestLeftoverTempFiles(t *testing.T) {
	ctx := t.Context()
	b := open(t, t.TempDir())
	if err := b.Put(ctx, "data/a", []byte("a"), backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".tmp-123", "data/.tmp-456", "data/.b.tmp-789"} {
		if err := os.WriteFile(filepath.Join(b.Root(), p), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := b.List(ctx, "", func(oi backend.ObjectInfo) error { got = append(got, oi.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[data/a]" {
		t.Fatalf("list = %v, want [data/a] only", got)
	}
}

func TestOpenRefusesAFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := file.Open(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("open on a regular file: %v, want an error naming it", err)
	}
}

// TestLargeObjectsBypassThePageCache: a pack-sized object is written with O_DIRECT (all
// but its last partial block), reads back whole, and an unaligned buffer or a file
// system without direct I/O still works through the page cache.
func TestLargeObjectsBypassThePageCache(t *testing.T) {
	data := make([]byte, 4<<20+777) // a large allocation: page-aligned
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{"tempdir": t.TempDir()}
	if os.Geteuid() == 0 {
		dirs["tmpfs"] = testutil.Mount(t, "tmpfs", "-t", "tmpfs", "-o", "size=32m")
	}
	for kind, dir := range dirs {
		t.Run(kind, func(t *testing.T) {
			ctx := t.Context()
			b := open(t, filepath.Join(dir, "staging"))
			for name, d := range map[string][]byte{"packs/aligned": data, "packs/unaligned": data[1:]} {
				if err := b.Put(ctx, name, d, backend.PutOptions{}); err != nil {
					t.Fatalf("put %s: %v", name, err)
				}
				got, err := b.Get(ctx, name)
				if err != nil || !bytes.Equal(got, d) {
					t.Fatalf("get %s: %d bytes, %v; want the %d bytes put", name, len(got), err, len(d))
				}
			}
			var st unix.Statfs_t
			if err := unix.Statfs(dir, &st); err != nil {
				t.Fatal(err)
			}
			if st.Type == unix.TMPFS_MAGIC || !directIO(dir) {
				t.Logf("%s keeps files in memory or takes no O_DIRECT: nothing more to look at", dir)
				return
			}
			p := filepath.Join(b.Root(), "packs", "aligned")
			// Get read it back into the cache; drop it, then rewrite and look.
			if err := b.Delete(ctx, "packs/aligned"); err != nil {
				t.Fatal(err)
			}
			if err := b.Put(ctx, "packs/aligned", data, backend.PutOptions{}); err != nil {
				t.Fatal(err)
			}
			if n := residentPages(t, p); n > 1 {
				t.Fatalf("%d pages of the object are in the page cache after Put; want at most its last partial page", n)
			}
		})
	}
}

// directIO reports whether files in dir can be opened with O_DIRECT.
func directIO(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, "direct-probe"), os.O_CREATE|os.O_WRONLY|unix.O_DIRECT, 0o600)
	if err != nil {
		return false
	}
	f.Close()
	os.Remove(f.Name())
	return true
}

// residentPages counts the pages of a file that are in the page cache.
func residentPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
