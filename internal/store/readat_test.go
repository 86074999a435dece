package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

func TestReadAtAcrossBlocksHolesAndTheEnd(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	const size = 20*testBS + 100 // a last block that is partly past the end
	h, err := r.OpenHead(ctx, "s-9", "disk0", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	write(t, h, m, map[uint64]uint32{0: 1, 1: 2, 5: 3, 20: 1})
	pit, err := r.SealPIT(ctx, SealRequest{ID: "pit-r", Server: "s-9", Time: time.Now(), Level: consistency.Filesystem, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := r.OpenVolume(ctx, pit, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	whole := make([]byte, 0, size)
	for b := uint64(0); b < v.Blocks(); b++ {
		if ver, ok := m[b]; ok {
			whole = append(whole, content(b, ver)...)
		} else {
			whole = append(whole, make([]byte, testBS)...)
		}
	}
	whole = whole[:size]
	for _, c := range []struct{ off, n int64 }{{0, 10}, {testBS - 7, 20}, {3, 3 * testBS}, {4*testBS + 1, 2 * testBS}, {size - 50, 50}} {
		p := make([]byte, c.n)
		n, err := v.ReadAt(p, c.off)
		if err != nil || int64(n) != c.n || !bytes.Equal(p, whole[c.off:c.off+c.n]) {
			t.Fatalf("ReadAt(%d bytes at %d): %d, %v; content equal: %v", c.n, c.off, n, err, bytes.Equal(p, whole[c.off:c.off+c.n]))
		}
	}
	p := make([]byte, 200)
	if n, err := v.ReadAt(p, size-100); n != 100 || !errors.Is(err, io.EOF) || !bytes.Equal(p[:n], whole[size-100:]) {
		t.Fatalf("a read past the end: %d, %v", n, err)
	}
	if n, err := v.ReadAt(p, size); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("a read at the end: %d, %v", n, err)
	}
	if _, err := v.ReadAt(p, -1); err == nil {
		t.Fatal("a negative offset was read")
	}
	for b, want := range map[uint64]bool{0: false, 2: true, 5: false, 19: true, 20: false} {
		if hole, err := v.Hole(ctx, b); err != nil || hole != want {
			t.Fatalf("Hole(%d): %v, %v; want %v", b, hole, err, want)
		}
	}
	if _, err := v.Hole(ctx, v.Blocks()); err == nil {
		t.Fatal("Hole past the end said nothing")
	}
}
