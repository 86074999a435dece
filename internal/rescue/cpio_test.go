package rescue

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cpioEntry is an entry as parseCpio reads it back.
type cpioEntry struct {
	name       string
	ino, mode  uint32
	nlink      uint32
	rmaj, rmin uint32
	data       string
}

// parseCpio reads a newc archive, checking its alignment and its trailer: the test's own
// reader, written from the format's description, not from cpioWriter.
func parseCpio(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	for {
		if off%4 != 0 || off+110 > len(b) {
			t.Fatalf("entry at %d: misaligned or truncated (archive of %d bytes)", off, len(b))
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("entry at %d: magic %q", off, h[:6])
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("entry at %d: field %d: %v", off, i, err)
			}
			return uint32(v)
		}
		size, namesize := int(field(6)), int(field(11))
		nameEnd := off + 110 + namesize
		if namesize < 1 || nameEnd > len(b) || b[nameEnd-1] != 0 {
			t.Fatalf("entry at %d: bad name size %d", off, namesize)
		}
		e := cpioEntry{name: string(b[off+110 : nameEnd-1]), ino: field(0), mode: field(1), nlink: field(4),
			rmaj: field(9), rmin: field(10)}
		if field(2) != 0 || field(3) != 0 || field(12) != 0 {
			t.Errorf("%s: uid %d gid %d check %d, want 0", e.name, field(2), field(3), field(12))
		}
		dataStart := nameEnd + pad4(nameEnd)
		if dataStart+size > len(b) {
			t.Fatalf("%s: %d bytes of data past the end", e.name, size)
		}
		e.data = string(b[dataStart : dataStart+size])
		off = dataStart + size + pad4(dataStart+size)
		if e.name == cpioTrailer {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestCpioWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := newCpioWriter(&buf)
	files := map[string]string{"a": "", "dir/b": "x", "dir/cc": "hello", "dir/long-name-of-file": strings.Repeat("z", 1027)}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.dir("dir", 0o755))
	must(c.dir("tmp", 0o777|fs.ModeSticky))
	for _, name := range []string{"a", "dir/b", "dir/cc", "dir/long-name-of-file"} {
		must(c.file(name, 0o640, int64(len(files[name])), strings.NewReader(files[name])))
	}
	must(c.charDevice("dev/console", 0o600, 5, 1))
	must(c.close())

	got := parseCpio(t, buf.Bytes())
	want := []struct {
		name string
		mode uint32
	}{
		{"dir", 0o040755}, {"tmp", 0o041777}, {"a", 0o100640}, {"dir/b", 0o100640}, {"dir/cc", 0o100640},
		{"dir/long-name-of-file", 0o100640}, {"dev/console", 0o020600},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	inodes := map[uint32]bool{}
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode {
			t.Errorf("entry %d = %s mode %o, want %s mode %o", i, g.name, g.mode, w.name, w.mode)
		}
		if content, ok := files[g.name]; ok && g.data != content {
			t.Errorf("%s holds %d bytes, want %d", g.name, len(g.data), len(content))
		}
		if g.name == "dev/console" && (g.rmaj != 5 || g.rmin != 1) {
			t.Errorf("dev/console is %d:%d, want 5:1", g.rmaj, g.rmin)
		}
		if inodes[g.ino] {
			t.Errorf("%s: inode %d is used twice", g.name, g.ino)
		}
		inodes[g.ino] = true
	}

	// An independent reader, when there is one: busybox's cpio lists the archive.
	if bb, err := exec.LookPath("busybox"); err == nil {
		cmd := exec.Command(bb, "cpio", "-t")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("busybox cpio -t: %v", err)
		}
		var names []string
		for _, w := range want {
			names = append(names, w.name)
		}
		if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(names, " ") {
			t.Errorf("busybox cpio -t lists %q, want %q", got, names)
		}
	}
}

func TestCpioWriterRefuses(t *testing.T) {
	for _, name := range []string{"", "/abs", "nul\x00"} {
		c := newCpioWriter(io.Discard)
		if err := c.dir(name, 0o755); err == nil {
			t.Errorf("dir(%q) = nil, want an error", name)
		}
	}
	c := newCpioWriter(io.Discard)
	if err := c.file("big", 0o644, 1<<32, strings.NewReader("")); err == nil {
		t.Error("a 4 GiB file: nil error, want one")
	}
	c = newCpioWriter(io.Discard)
	if err := c.file("short", 0o644, 10, strings.NewReader("abc")); err == nil || !strings.Contains(err.Error(), "3 bytes instead of 10") {
		t.Errorf("a file shorter than said: %v", err)
	}
	if err := c.close(); err == nil {
		t.Error("close after a failed entry: nil error, want the first error")
	}
}

// TestRescueArchive checks the archive BuildISO appends to Debian's initrd: the files
// init runs from, and no entry for a directory Debian's initrd has as a link.
func TestRescueArchive(t *testing.T) {
	dir := t.TempDir()
	bb, bin := filepath.Join(dir, "busybox"), filepath.Join(dir, "lifeboat")
	if err := os.WriteFile(bb, []byte("busybox!"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("lifeboat binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "initrd")
	debian := []byte("debian initrd, 30 bytes long..")[:30] // not a multiple of 4
	if err := os.WriteFile(initrd, debian, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := writeInitrd(t.Context(), out, ISOOptions{Initrd: initrd, Busybox: bb, Binary: bin}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:30], debian) || !bytes.Equal(b[30:32], []byte{0, 0}) {
		t.Fatalf("the initrd does not start with Debian's, padded to 32 bytes: %q", b[:32])
	}
	got := map[string]cpioEntry{}
	for _, e := range parseCpio(t, b[32:]) {
		got[e.name] = e
	}
	for name, data := range map[string]string{"init": initScript, "lifeboat/udhcpc.script": udhcpcScript,
		"lifeboat/bin/busybox": "busybox!", "lifeboat/bin/lifeboat": "lifeboat binary"} {
		if e := got[name]; e.data != data || e.mode != 0o100755 {
			t.Errorf("%s: mode %o, %d bytes; want mode 100755, %d bytes", name, e.mode, len(e.data), len(data))
		}
	}
	for _, name := range []string{"bin", "sbin", "lib", "lib64", "usr", "etc"} {
		if _, ok := got[name]; ok {
			t.Errorf("the archive has an entry %s, which would replace Debian's", name)
		}
	}
	if first, _, _ := strings.Cut(initScript, "\n"); first != "#!/lifeboat/bin/busybox sh" {
		t.Errorf("init's first line is %q", first)
	}
}
