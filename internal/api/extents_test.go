package api

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// extentStream writes a stream of a volume of size bytes with three regions of n bytes
// each: at the start, at a quarter, and at the end.
func extentStream(t testing.TB, size int64, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewExtentWriter(&buf, ExtentHeader{Size: size, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, size / 4, size - int64(n)} {
		if err := w.Extent(off, bytes.Repeat([]byte{fill(off)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fill(off int64) byte { return byte(off%251) + 1 }

// readAll decodes a stream into an image of its size.
func readAll(data []byte) ([]byte, error) {
	r, err := NewExtentReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	var img []byte
	if r.Header().Size <= 64<<20 { // a damaged header may claim any size up to the bound
		img = make([]byte, r.Header().Size)
	}
	for {
		off, b, err := r.Next()
		if errors.Is(err, io.EOF) {
			return img, nil
		}
		if err != nil {
			return nil, err
		}
		if img != nil {
			copy(img[off:], b)
		}
	}
}

func TestExtentStreamRoundTrip(t *testing.T) {
	const size, n = 64 << 20, 5 << 20 // regions longer than one extent
	img, err := readAll(extentStream(t, size, n))
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, size / 4, size - n} {
		if img[off] != fill(off) || img[off+n-1] != fill(off) {
			t.Fatalf("region at %d differs from what was written", off)
		}
	}
	if img[n] != 0 || img[size/4-1] != 0 || img[size/4+n] != 0 {
		t.Fatal("a hole was not zero")
	}
}

// TestExtentStreamDetectsTruncationAndChange: every cut, every flipped byte and any
// trailing byte makes the reader fail.
func TestExtentStreamDetectsTruncationAndChange(t *testing.T) {
	data := extentStream(t, 1<<20, 100)
	for n := 0; n < len(data); n++ {
		if _, err := readAll(data[:n]); !errors.Is(err, ErrBadExtents) {
			t.Fatalf("a stream cut at %d of %d bytes: %v, want ErrBadExtents", n, len(data), err)
		}
	}
	for i := range data {
		bad := bytes.Clone(data)
		bad[i] ^= 0x40
		if _, err := readAll(bad); err == nil {
			t.Fatalf("a stream with byte %d changed was accepted", i)
		}
	}
	if _, err := readAll(append(bytes.Clone(data), 0)); !errors.Is(err, ErrBadExtents) {
		t.Fatalf("a byte after the trailer: %v, want ErrBadExtents", err)
	}
}

func TestExtentWriterRefusesDisorder(t *testing.T) {
	w, err := NewExtentWriter(io.Discard, ExtentHeader{Size: 1000, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Extent(500, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{505, 1}, {0, 1}, {990, 11}, {1001, 0}} {
		if err := w.Extent(c.off, make([]byte, c.n)); !errors.Is(err, ErrBadExtents) {
			t.Errorf("extent [%d,+%d) after [500,510): %v, want ErrBadExtents", c.off, c.n, err)
		}
	}
	if _, err := NewExtentWriter(io.Discard, ExtentHeader{Size: -1, BlockSize: 4096}); err == nil {
		t.Error("a negative size was accepted")
	}
}

func TestExportFileName(t *testing.T) {
	for _, ok := range []string{"vda", "dm-0", "nvme0n1p1", "x-2f", ".hidden"} {
		if got, err := ExportFileName(ok); err != nil || got != ok+".img" {
			t.Errorf("%q: %q, %v", ok, got, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "/etc/passwd", `..\x`, "a\x00b", "a\nb"} {
		if _, err := ExportFileName(bad); err == nil {
			t.Errorf("volume name %q was accepted as a file name", bad)
		}
	}
}

// FuzzExtentReader: no input makes the reader panic, allocate past one extent, or hand
// out an extent outside the volume or out of order; a stream it reads to the end is
// exactly what the writer makes of the same extents (so the digest was checked).
func FuzzExtentReader(f *testing.F) {
	f.Add(extentStream(f, 1<<20, 10))
	f.Add([]byte(extentMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewExtentReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		var again bytes.Buffer
		w, err := NewExtentWriter(&again, r.Header())
		if err != nil {
			t.Fatalf("the reader accepted header %+v, the writer does not", r.Header())
		}
		size, next := r.Header().Size, int64(0)
		for {
			off, b, err := r.Next()
			if errors.Is(err, io.EOF) {
				if err := w.Close(); err != nil || !bytes.Equal(again.Bytes(), data) {
					t.Fatalf("a stream read to its end is not what the writer makes of it (%v)", err)
				}
				return
			}
			if err != nil {
				return
			}
			if off < next || len(b) == 0 || len(b) > MaxExtentBytes || off+int64(len(b)) > size {
				t.Fatalf("extent [%d,+%d) after %d in %d bytes", off, len(b), next, size)
			}
			if err := w.Extent(off, b); err != nil {
				t.Fatal(err)
			}
			next = off + int64(len(b))
		}
	})
}
