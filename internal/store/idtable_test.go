package store

import (
	"context"
	"math/rand/v2"
	"testing"
)

func testID(i uint64) ID {
	var id ID
	id[0], id[1], id[2], id[3] = 1, byte(i), byte(i>>8), byte(i>>16)
	return id
}

// An idTable allocates pages only for non-zero ids, forgets what a shrink cut off, and
// with() leaves the table it copies unchanged.
func TestIDTable(t *testing.T) {
	const fanout = 16
	n := uint64(3*idPageMin + 100) // three full pages and a partial one
	tb := newIDTable(n, fanout)
	tb.set(5, ID{}) // a zero id allocates nothing
	if tb.pages[0] != nil {
		t.Fatal("storing a zero id allocated a page")
	}
	for _, i := range []uint64{0, idPageMin + 7, n - 1} {
		tb.set(i, testID(i))
	}
	if tb.pages[1] == nil || tb.pages[2] != nil || len(tb.pages[3]) != 100 {
		t.Fatalf("pages allocated: %v %v %v, last holds %d", tb.pages[0] != nil, tb.pages[1] != nil, tb.pages[2] != nil, len(tb.pages[3]))
	}
	if tb.get(idPageMin+7) != testID(idPageMin+7) || !tb.get(idPageMin+8).IsZero() || !tb.get(2*idPageMin).IsZero() {
		t.Fatal("get returns other ids than set")
	}
	c := tb.with(map[uint64]ID{idPageMin + 7: testID(99), 2 * idPageMin: testID(98)})
	if tb.get(idPageMin+7) != testID(idPageMin+7) || !tb.get(2*idPageMin).IsZero() {
		t.Fatal("with changed the table it copied")
	}
	if c.get(idPageMin+7) != testID(99) || c.get(2*idPageMin) != testID(98) || c.get(0) != testID(0) || &c.pages[0][0] != &tb.pages[0][0] {
		t.Fatal("with: updates missing, or an untouched page not shared")
	}
	var groups []uint64
	_ = c.groups(fanout, func(g uint64, ids []ID) error {
		groups = append(groups, g)
		if g == (n-1)/fanout && len(ids) != int(n%fanout) {
			t.Fatalf("the last group holds %d ids, want %d", len(ids), n%fanout)
		}
		return nil
	})
	want := []uint64{0, (idPageMin + 7) / fanout, 2 * idPageMin / fanout, (n - 1) / fanout}
	if len(groups) != len(want) {
		t.Fatalf("groups %v, want %v", groups, want)
	}
	for i := range want {
		if groups[i] != want[i] {
			t.Fatalf("groups %v, want %v", groups, want)
		}
	}
	// Shrink into the second page, then grow back: what was cut off reads zero.
	tb.resize(idPageMin + 5)
	if len(tb.pages) != 2 || len(tb.pages[1]) != 5 {
		t.Fatalf("after a shrink: %d pages, the last of %d ids", len(tb.pages), len(tb.pages[1]))
	}
	tb.resize(n)
	if !tb.get(idPageMin+7).IsZero() || !tb.get(n-1).IsZero() || tb.get(0) != testID(0) || len(tb.pages[1]) != idPageMin {
		t.Fatal("growing again shows ids a shrink cut off, or lost others")
	}
}

// A sparse level of leaves survives buildTree and loadLeaves at every tree height.
func TestSparseTreeRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions()) // fanout 16
	rng := rand.New(rand.NewPCG(5, 6))
	for _, nleaves := range []uint64{1, 15, 16, 17, 300, 70000, 1 << 22} {
		leaves := newIDTable(nleaves, r.cfg.Fanout)
		set := map[uint64]ID{}
		for range 20 {
			k := rng.Uint64N(nleaves)
			id, _, _, err := r.storeNode(ctx, 0, append([]ID{testID(k)}, make([]ID, r.cfg.Fanout-1)...))
			if err != nil {
				t.Fatal(err)
			}
			leaves.set(k, id)
			set[k] = id
		}
		root, level, _, _, err := r.buildTree(ctx, leaves)
		if err != nil {
			t.Fatal(err)
		}
		if _, want := r.treeShape(nleaves * uint64(r.cfg.Fanout)); level != want {
			t.Fatalf("%d leaves: root level %d, want %d", nleaves, level, want)
		}
		got, err := r.loadLeaves(ctx, root, level, nleaves)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		_ = got.groups(1, func(k uint64, ids []ID) error {
			n++
			if set[k] != ids[0] {
				t.Fatalf("%d leaves: leaf %d came back as %s", nleaves, k, ids[0])
			}
			return nil
		})
		if n != len(set) {
			t.Fatalf("%d leaves: %d non-zero leaves came back, %d were set", nleaves, n, len(set))
		}
	}
}
