package ext4image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

func needTools(t *testing.T) {
	t.Helper()
	testutil.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	testutil.RequireCommand(t, "debugfs", "e2fsprogs")
}

// mkImage makes a whole-disk ext4 image holding the files of a map (path → content).
func mkImage(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.raw")
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-d", root, img, "32M")
	return img
}

func TestReadWriteWholeDisk(t *testing.T) {
	needTools(t)
	ctx := context.Background()
	img := mkImage(t, map[string]string{"/etc/hostname": "old\n", "/dir with space/f": "x"})
	all, err := Find(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].Partition != 0 || all[0].Offset != 0 {
		t.Fatalf("Find = %+v, want one whole-disk filesystem", all)
	}
	uuid := strings.TrimSpace(testutil.Run(t, "blkid", "-o", "value", "-s", "UUID", img))
	if all[0].UUID != uuid {
		t.Errorf("UUID = %q, blkid says %q", all[0].UUID, uuid)
	}
	f, err := Root(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.ReadFile(ctx, "/etc/hostname")
	if err != nil || string(got) != "old\n" {
		t.Fatalf("ReadFile = %q, %v", got, err)
	}
	// Replace an existing file, create one in a directory with a space, and one in
	// directories that do not exist yet.
	if err := f.WriteFile(ctx, "/etc/hostname", []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteFile(ctx, "/dir with space/g", []byte("g"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.MkdirAll(ctx, "/etc/lifeboat/deep", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := f.MkdirAll(ctx, "/etc/lifeboat/deep", 0o700); err != nil {
		t.Fatalf("MkdirAll of an existing directory: %v", err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: more than inline data
	if err := f.WriteFile(ctx, "/etc/lifeboat/deep/big", big, 0o640); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"/etc/hostname": "new\n", "/dir with space/g": "g", "/etc/lifeboat/deep/big": string(big)} {
		got, err := f.ReadFile(ctx, p)
		if err != nil || string(got) != want {
			t.Errorf("ReadFile(%s) = %d bytes, %v; want %d bytes", p, len(got), err, len(want))
		}
	}
	e, err := f.Stat(ctx, "/etc/lifeboat/deep/big")
	if err != nil || e.Mode != 0o640 || e.UID != 0 || e.GID != 0 || e.Size != int64(len(big)) {
		t.Errorf("Stat(big) = %+v, %v; want mode 0640 root:root size %d", e, err, len(big))
	}
	e, err = f.Stat(ctx, "/etc/lifeboat")
	if err != nil || e.Mode != fs.ModeDir|0o700 {
		t.Errorf("Stat(/etc/lifeboat) = %+v, %v; want a 0700 directory", e, err)
	}
	if _, err := f.Stat(ctx, "/etc/missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a missing file: %v, want fs.ErrNotExist", err)
	}
	if _, err := f.ReadFile(ctx, "/nope/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile in a missing directory: %v, want fs.ErrNotExist", err)
	}
	if err := f.WriteFile(ctx, "/nope/x", nil, 0o644); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteFile in a missing directory: %v, want fs.ErrNotExist", err)
	}
	if err := f.WriteFile(ctx, "/etc", nil, 0o644); err == nil {
		t.Error("WriteFile over a directory succeeded")
	}
	if _, err := f.ReadDir(ctx, "/etc/hostname"); err == nil {
		t.Error("ReadDir of a file succeeded")
	}
	for _, bad := range []string{"etc/hostname", "/etc/../x", `/etc/a"b`, "/etc/a\nb"} {
		if _, err := f.Stat(ctx, bad); err == nil {
			t.Errorf("Stat(%q) accepted a path debugfs cannot be given", bad)
		}
	}
	if err := f.Remove(ctx, "/dir with space/g"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(ctx, "/dir with space/g"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a removed file: %v, want fs.ErrNotExist", err)
	}
	if err := f.Remove(ctx, "/dir with space/g"); err != nil {
		t.Errorf("Remove of a missing file: %v, want none", err)
	}
	if err := f.Remove(ctx, "/etc/lifeboat"); err == nil {
		t.Error("Remove of a directory succeeded")
	}
	// The image is still a consistent filesystem after the changes.
	testutil.Run(t, "e2fsck", "-f", "-n", img)
}

func TestSymlinkIsReplacedNotFollowed(t *testing.T) {
	needTools(t)
	ctx := context.Background()
	img := mkImage(t, map[string]string{"/etc/target": "keep"})
	f, err := Root(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.debugfs(ctx, true, `cd "/etc"`, `symlink "link" "/etc/target"`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFile(ctx, "/etc/link"); err == nil {
		t.Error("ReadFile followed a symbolic link")
	}
	if err := f.WriteFile(ctx, "/etc/link", []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.ReadFile(ctx, "/etc/target"); string(got) != "keep" {
		t.Errorf("the link's target changed to %q", got)
	}
	if got, _ := f.ReadFile(ctx, "/etc/link"); string(got) != "mine" {
		t.Errorf("/etc/link = %q, want the new regular file", got)
	}
}

func TestPartitionedDisks(t *testing.T) {
	needTools(t)
	testutil.RequireCommand(t, "sfdisk", "fdisk")
	ctx := context.Background()
	for _, tc := range []struct {
		label, table string
		wantPart     int
		wantOffset   int64
	}{
		// A BIOS boot partition first, the root filesystem second, as cloud images are.
		{"gpt", "label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\nstart=6144, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n", 2, 6144 * 512},
		{"mbr", "label: dos\nstart=2048, size=2048, type=82\nstart=4096, type=83\n", 2, 4096 * 512},
	} {
		t.Run(tc.label, func(t *testing.T) {
			dir := t.TempDir()
			root := filepath.Join(dir, "root")
			if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("part\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(dir, "disk.raw")
			if err := os.WriteFile(img, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, 40<<20); err != nil {
				t.Fatal(err)
			}
			sfdisk := exec.Command("sfdisk", "-q", img)
			sfdisk.Stdin = strings.NewReader(tc.table)
			if out, err := sfdisk.CombinedOutput(); err != nil {
				t.Fatalf("sfdisk: %v: %s", err, out)
			}
			testutil.Run(t, "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", tc.wantOffset), "-d", root, img, "30M")
			f, err := Root(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			if f.Partition != tc.wantPart || f.Offset != tc.wantOffset {
				t.Fatalf("Root = partition %d at %d, want partition %d at %d", f.Partition, f.Offset, tc.wantPart, tc.wantOffset)
			}
			if err := f.WriteFile(ctx, "/etc/hostname", []byte("changed\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, err := f.ReadFile(ctx, "/etc/hostname"); err != nil || string(got) != "changed\n" {
				t.Fatalf("ReadFile = %q, %v", got, err)
			}
			// The partition table is untouched.
			if out := testutil.Run(t, "sfdisk", "-d", img); !strings.Contains(out, "start=") {
				t.Errorf("partition table gone: %s", out)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.raw")
	if err := os.WriteFile(empty, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Find(empty); !errors.Is(err, ErrNoFilesystem) {
		t.Errorf("Find on zeros: %v, want ErrNoFilesystem", err)
	}
	testutil.RequireCommand(t, "qemu-img", "qemu-utils")
	q := filepath.Join(dir, "disk.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", q, "16M")
	if _, err := Find(q); err == nil || !strings.Contains(err.Error(), "qemu-img convert") {
		t.Errorf("Find on qcow2: %v, want the conversion command", err)
	}
}

func TestReplayJournal(t *testing.T) {
	needTools(t)
	ctx := context.Background()
	img := mkImage(t, map[string]string{"/etc/hostname": "x\n"})
	// What a snapshot of a mounted filesystem looks like: the journal needs recovery.
	f, err := Root(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if f.NeedsRecovery {
		t.Fatal("a fresh filesystem needs recovery")
	}
	if _, err := f.debugfs(ctx, true, "feature needs_recovery"); err != nil {
		t.Fatal(err)
	}
	if f, err = Root(ctx, img); err != nil || !f.NeedsRecovery {
		t.Fatalf("after setting needs_recovery: %+v, %v", f, err)
	}
	if err := f.ReplayJournal(ctx); err != nil {
		t.Fatal(err)
	}
	if f, err = Root(ctx, img); err != nil || f.NeedsRecovery {
		t.Fatalf("after ReplayJournal: %+v, %v; want a clean journal", f, err)
	}
}

func TestParseList(t *testing.T) {
	out := "/2/040755/0/0/.//\n/2/040755/0/0/..//\n/13/100644/1000/100/hostname/3/\n/17/120777/0/0/l/13/\n/18/100600/0/0/new file/0/\ngarbage\n/1/2/3/\n"
	got := parseList(out)
	want := []Entry{
		{Name: ".", Inode: 2, Mode: fs.ModeDir | 0o755},
		{Name: "..", Inode: 2, Mode: fs.ModeDir | 0o755},
		{Name: "hostname", Inode: 13, Mode: 0o644, UID: 1000, GID: 100, Size: 3},
		{Name: "l", Inode: 17, Mode: fs.ModeSymlink | 0o777, Size: 13},
		{Name: "new file", Inode: 18, Mode: 0o600},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parseList =\n%+v\nwant\n%+v", got, want)
	}
}

func FuzzParseListLine(f *testing.F) {
	f.Add("/13/100644/1000/100/hostname/3/")
	f.Add("/2/040755/0/0/..//")
	f.Add("/2/040755/0/0/a/b/5/")
	f.Fuzz(func(t *testing.T, line string) {
		e, ok := parseListLine(line)
		if !ok {
			return
		}
		if e.Name == "" || strings.Contains(e.Name, "/") || e.Size < 0 {
			t.Fatalf("parsed an impossible entry %+v from %q", e, line)
		}
	})
}

func FuzzCandidates(f *testing.F) {
	mbr := make([]byte, 4096)
	mbr[510], mbr[511] = 0x55, 0xAA
	mbr[446+4] = 0xEE
	mbr[446+12] = 0xff
	copy(mbr[512:], "EFI PART")
	mbr[512+72] = 2
	mbr[512+80] = 4
	mbr[512+84] = 128
	mbr[1024] = 1
	mbr[1024+32] = 3
	f.Add(mbr)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		cands, err := candidates(r, int64(len(data)))
		if err != nil {
			return
		}
		if len(cands) == 0 || cands[0].partition != 0 {
			t.Fatalf("the whole disk is not the first candidate: %+v", cands)
		}
		if len(cands) > 1+maxGPTEntries {
			t.Fatalf("%d candidates: more than the table can hold", len(cands))
		}
		for _, c := range cands {
			if c.offset < 0 {
				t.Fatalf("negative offset %+v", c)
			}
			readSuperblock(r, c.offset)
		}
	})
}
