package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// With a commit interval, many heads flushing at once share a pack (and an index
// object) instead of storing one each, and every flush still makes its blocks durable.
func TestFlushesOfManyHeadsShareAPack(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.CommitInterval = 300 * time.Millisecond
	r, be, mk := newTestRepo(t, opts)
	indexObjects := func() int {
		n := 0
		if err := be.List(ctx, "index/", func(backend.ObjectInfo) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := indexObjects()
	const heads = 20
	hs := make([]*Head, heads)
	for i := range hs {
		h, err := r.OpenHead(ctx, fmt.Sprintf("s-%d", i), "vda", 8*testBS, HeadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		hs[i] = h
	}
	models := make([]model, heads)
	for round := uint32(1); round <= 2; round++ {
		var wg sync.WaitGroup
		for i, h := range hs {
			if models[i] == nil {
				models[i] = model{}
			}
			write(t, h, models[i], map[uint64]uint32{uint64(i % 8): round*100 + uint32(i)})
			wg.Go(func() {
				if err := h.Flush(ctx); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	// Opening stored nothing in packs; 40 flushes of 20 heads in two rounds: a pack
	// sent at once, then one per interval.
	if got := indexObjects() - before; got < 1 || got > 4 {
		t.Fatalf("40 flushes of 20 heads stored %d index objects; want a few shared ones", got)
	}
	r2 := reopen(t, be, mk, testOptions())
	for i, h := range hs {
		checkPIT(t, r2, seal(t, r, fmt.Sprintf("pit-%d", i), h), "vda", 8*testBS, models[i])
	}
}

// A lone flush does not wait for the commit interval: only a pack sent within it
// delays the next.
func TestALoneFlushIsNotDelayedByTheCommitInterval(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.CommitInterval = time.Hour
	r, _, _ := newTestRepo(t, opts)
	h, err := r.OpenHead(ctx, "s-1", "vda", 8*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	write(t, h, model{}, map[uint64]uint32{1: 1})
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := h.Flush(fctx); err != nil {
		t.Fatalf("the first flush waited for the interval: %v", err)
	}
}
