package tracker

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHashTableSaveLoad(t *testing.T) {
	var golden uint64 = 0x9e3779b97f4a7c15
	dir := t.TempDir()
	path := filepath.Join(dir, "vda.hashes")
	const bs = 64 << 10
	const size = 1000*bs + 4096 // a short last block
	h, err := NewHashTable("vda", size, bs)
	if err != nil {
		t.Fatal(err)
	}
	if h.Blocks() != 1001 {
		t.Fatalf("Blocks() = %d", h.Blocks())
	}
	for b := uint64(0); b < 1001; b += 3 {
		h.Set(b, b*golden)
	}
	h.Set(5000, 1) // past the end: ignored
	h.SetGeneration(7)
	if err := h.Save(path); err != nil {
		t.Fatal(err)
	}
	g, err := LoadHashTable(path, "vda", size, bs)
	if err != nil {
		t.Fatal(err)
	}
	if g.Generation() != 7 || g.Name() != "vda" || g.BlockSize() != bs || g.Size() != size || g.Known() != h.Known() {
		t.Fatalf("loaded: gen %d name %q bs %d size %d known %d/%d", g.Generation(), g.Name(), g.BlockSize(), g.Size(), g.Known(), h.Known())
	}
	for b := uint64(0); b < 1001; b++ {
		got, ok := g.Get(b)
		if ok != (b%3 == 0) || ok && got != b*golden {
			t.Fatalf("block %d: %x %v", b, got, ok)
		}
	}
	if !g.Matches(3, 3*golden) || g.Matches(3, 1) || g.Matches(4, 0) {
		t.Fatal("Matches is wrong")
	}
	g.Forget(3)
	if _, ok := g.Get(3); ok {
		t.Fatal("Forget did not forget")
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries after Save", len(entries))
	}

	// A missing file: empty table, no error.
	e, err := LoadHashTable(filepath.Join(dir, "none"), "vda", size, bs)
	if err != nil || e.Known() != 0 {
		t.Fatalf("missing file: %v, %d known", err, e.Known())
	}
	// Another volume or block size: empty table and a reason.
	for _, c := range []struct {
		name string
		bs   int
	}{{"vdb", bs}, {"vda", 4096}} {
		e, err := LoadHashTable(path, c.name, size, c.bs)
		if err == nil || e == nil || e.Known() != 0 {
			t.Fatalf("load for %s/%d: %v", c.name, c.bs, err)
		}
	}
	// The volume grew: old hashes kept, the old short last block forgotten.
	g, err = LoadHashTable(path, "vda", 2000*bs, bs)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Get(999); !ok {
		t.Fatal("a whole block's hash was lost on growth")
	}
	if _, ok := g.Get(1000); ok {
		t.Fatal("the old short last block's hash was kept after growth")
	}
	if g.Blocks() != 2000 {
		t.Fatalf("Blocks() after growth = %d", g.Blocks())
	}
}

// TestHashTableDamage flips every byte and truncates at every length of a small file:
// each damaged file is reported and yields an empty table, never a wrong one.
func TestHashTableDamage(t *testing.T) {
	h, err := NewHashTable("disk0", 10*4096+512, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for b := range uint64(11) {
		h.Set(b, b+100)
	}
	data, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeHashTable(data); err != nil {
		t.Fatalf("intact file: %v", err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "t")
	for i := range data {
		bad := bytes.Clone(data)
		bad[i] ^= 0x40
		if _, err := DecodeHashTable(bad); err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}
	for n := range len(data) {
		if _, err := DecodeHashTable(data[:n]); err == nil {
			t.Fatalf("truncation to %d bytes went unnoticed", n)
		}
	}
	if _, err := DecodeHashTable(append(bytes.Clone(data), 0)); err == nil {
		t.Fatal("a trailing byte went unnoticed")
	}
	bad := bytes.Clone(data)
	bad[100] ^= 1
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := LoadHashTable(path, "disk0", 10*4096+512, 4096)
	if err == nil || !strings.Contains(err.Error(), "damaged") || e.Known() != 0 {
		t.Fatalf("damaged file: %v, %d known", err, e.Known())
	}
}

func TestNewHashTableRejects(t *testing.T) {
	for _, c := range []struct {
		name string
		size int64
		bs   int
	}{{"x", 100, 1000}, {"x", -1, 4096}, {"x", 100, 0}, {strings.Repeat("n", 2000), 100, 4096}, {"\xff", 100, 4096}} {
		if _, err := NewHashTable(c.name, c.size, c.bs); err == nil {
			t.Errorf("NewHashTable(%q, %d, %d) accepted", c.name, c.size, c.bs)
		}
	}
}

func FuzzDecodeHashTable(f *testing.F) {
	h, _ := NewHashTable("vda", 3*4096+100, 4096)
	h.Set(0, 1)
	h.Set(3, 2)
	good, _ := h.MarshalBinary()
	f.Add(good)
	empty, _ := NewHashTable("", 0, 512)
	e, _ := empty.MarshalBinary()
	f.Add(e)
	f.Add([]byte(hashMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		t1, err := DecodeHashTable(data)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		again, err := t1.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, data) {
			t.Fatal("decode then encode changed the file")
		}
	})
}
