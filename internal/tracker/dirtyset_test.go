package tracker

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// model is the obvious implementation DirtySet is checked against.
type model struct {
	blocks uint64
	dirty  map[uint64]bool
}

func (m *model) mark(first, last uint64) {
	for b := first; b <= last && b < m.blocks; b++ {
		m.dirty[b] = true
	}
}

func TestDirtySetAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, blocks := range []uint64{0, 1, 63, 64, 65, 200, 4096 + 7, 70000} {
		d := NewDirtySet(blocks)
		m := &model{blocks: blocks, dirty: map[uint64]bool{}}
		for step := range 3000 {
			switch rng.IntN(5) {
			case 0, 1:
				first := rng.Uint64N(blocks + 10)
				last := first + rng.Uint64N(200)
				if rng.IntN(10) == 0 {
					last = first - 1 // empty range
				}
				d.Mark(first, last)
				if first <= last {
					m.mark(first, last)
				}
			case 2:
				if rng.IntN(50) == 0 {
					d.MarkAll()
					if blocks > 0 {
						m.mark(0, blocks-1)
					}
				}
			default:
				max := 1 + rng.IntN(100)
				got := d.Take(nil, max)
				if len(got) > max {
					t.Fatalf("blocks %d step %d: Take(%d) returned %d", blocks, step, max, len(got))
				}
				if !slices.IsSorted(got) {
					t.Fatalf("blocks %d step %d: Take returned unsorted %v", blocks, step, got)
				}
				for _, b := range got {
					if !m.dirty[b] {
						t.Fatalf("blocks %d step %d: Take returned clean block %d", blocks, step, b)
					}
					delete(m.dirty, b)
				}
				if len(got) < max && len(m.dirty) > 0 {
					t.Fatalf("blocks %d step %d: Take(%d) returned %d while %d are dirty", blocks, step, max, len(got), len(m.dirty))
				}
			}
			if d.Count() != uint64(len(m.dirty)) {
				t.Fatalf("blocks %d step %d: Count() = %d, model has %d", blocks, step, d.Count(), len(m.dirty))
			}
		}
		for b := range m.dirty {
			if !d.Dirty(b) {
				t.Fatalf("blocks %d: block %d lost its mark", blocks, b)
			}
		}
	}
}

func TestDirtySetRoundRobin(t *testing.T) {
	d := NewDirtySet(1000)
	d.Mark(0, 999)
	got := d.Take(nil, 10)
	if !slices.Equal(got, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("first Take = %v", got)
	}
	// A hot region at the start is written again: the next Take still moves on.
	d.Mark(0, 9)
	got = d.Take(nil, 5)
	if !slices.Equal(got, []uint64{10, 11, 12, 13, 14}) {
		t.Fatalf("Take after the hot region was re-marked = %v, want 10..14", got)
	}
	// Take to the end, then wrap: the wrapped part comes first, in ascending order.
	got = d.Take(nil, 985)
	if len(got) != 985 || got[0] != 15 || got[len(got)-1] != 999 {
		t.Fatalf("Take to the end: %d blocks from %d to %d", len(got), got[0], got[len(got)-1])
	}
	d.Mark(990, 995)
	got = d.Take(nil, 100)
	want := []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 990, 991, 992, 993, 994, 995}
	if !slices.Equal(got, want) {
		t.Fatalf("wrapping Take = %v, want %v", got, want)
	}
	if d.Count() != 0 {
		t.Fatalf("Count() = %d", d.Count())
	}
	// Appends to dst.
	d.Mark(3, 3)
	if got := d.Take([]uint64{42}, 10); !slices.Equal(got, []uint64{42, 3}) {
		t.Fatalf("Take with a non-empty dst = %v", got)
	}
	if got := d.Take(nil, 0); len(got) != 0 {
		t.Fatalf("Take(0) = %v", got)
	}
}

func TestDirtySetClamp(t *testing.T) {
	d := NewDirtySet(100)
	d.Mark(95, 1<<40)
	d.Mark(200, 300)
	d.Mark(^uint64(0)-1, ^uint64(0))
	if got := d.Take(nil, 100); !slices.Equal(got, []uint64{95, 96, 97, 98, 99}) {
		t.Fatalf("clamped marks = %v", got)
	}
}

func TestDirtySetResize(t *testing.T) {
	d := NewDirtySet(100)
	d.Mark(10, 10)
	d.Mark(90, 99)
	d.Resize(95) // shrink: marks past the end go
	if d.Count() != 6 || d.Dirty(95) {
		t.Fatalf("after shrink: Count() = %d", d.Count())
	}
	d.Resize(130) // grow: new blocks are dirty
	got := d.Take(nil, 1000)
	want := []uint64{10, 90, 91, 92, 93, 94}
	for b := uint64(95); b < 130; b++ {
		want = append(want, b)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("after grow: %v, want %v", got, want)
	}
	if d.Blocks() != 130 {
		t.Fatalf("Blocks() = %d", d.Blocks())
	}
}

// TestDirtySetConcurrent marks from one goroutine while another takes: every block
// marked is taken at least once after its last mark.
func TestDirtySetConcurrent(t *testing.T) {
	const blocks = 1 << 16
	d := NewDirtySet(blocks)
	var wg sync.WaitGroup
	marked := make([]bool, blocks)
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(1, 1))
		for range 200000 {
			b := rng.Uint64N(blocks)
			marked[b] = true
			d.Mark(b, b)
		}
	})
	seen := make([]bool, blocks)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	buf := make([]uint64, 0, 256)
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		for {
			buf = d.Take(buf[:0], 256)
			if len(buf) == 0 {
				break
			}
			for _, b := range buf {
				seen[b] = true
			}
		}
	}
	for b := range blocks {
		if marked[b] && !seen[b] {
			t.Fatalf("block %d was marked but never taken", b)
		}
		if !marked[b] && seen[b] {
			t.Fatalf("block %d was taken but never marked", b)
		}
	}
}

func BenchmarkDirtySetTakeSparse(b *testing.B) {
	const blocks = 262144 // 16 GiB at 64 KiB
	d := NewDirtySet(blocks)
	buf := make([]uint64, 0, 64)
	for b.Loop() {
		d.Mark(blocks-1, blocks-1)
		d.Mark(blocks/2, blocks/2)
		buf = d.Take(buf[:0], 64)
		if len(buf) != 2 {
			b.Fatalf("took %d", len(buf))
		}
	}
}

func BenchmarkDirtySetMarkTake(b *testing.B) {
	const blocks = 262144
	d := NewDirtySet(blocks)
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]uint64, 0, 64)
	for b.Loop() {
		for range 64 {
			x := rng.Uint64N(blocks)
			d.Mark(x, x)
		}
		buf = d.Take(buf[:0], 64)
	}
}
