package store

import (
	"context"
	"testing"
	"time"
)

// With RefreshInBackground, a writer learns of the chunks other processes store without
// anything asking for a refresh, and Close stops the refreshes.
func TestTheViewIsRefreshedInTheBackground(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.GCGrace = 800 * time.Millisecond // a refresh every 100 ms
	_, be, mk := newTestRepo(t, opts)
	lc := &listCounter{Backend: be}
	bg := opts
	bg.RefreshInBackground = true
	r1, err := Open(ctx, lc, mk, withTestIndexDir(t, bg))
	if err != nil {
		t.Fatal(err)
	}
	h1, err := r1.OpenHead(ctx, "s-a", "vda", 8*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}

	r2 := reopen(t, be, mk, opts)
	h2, err := r2.OpenHead(ctx, "s-b", "vda", 8*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	data := content(3, 42)
	if err := h2.WriteBlocks(ctx, []Block{{Index: 3, Data: data}}); err != nil {
		t.Fatal(err)
	}
	if err := h2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	id := r1.keys.id(data)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, ok := r1.lookup(id); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer did not learn of a chunk another process stored within 20 s (refreshes every 100 ms)")
		}
	}

	h1.Close()
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	n := lc.lists.Load()
	time.Sleep(300 * time.Millisecond)
	if m := lc.lists.Load(); m != n {
		t.Fatalf("the index was listed %d times after Close", m-n)
	}
}
