package store

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// A checkpoint removes the journals it folded in — those the head stored, and those it
// found when opened — without listing them.
func TestACheckpointRemovesTheJournalsItFoldedWithoutListing(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, testOptions())
	journals := func() []string {
		var out []string
		if err := be.List(ctx, headPrefix("s-j", "vda")+"j-", func(oi backend.ObjectInfo) error {
			out = append(out, oi.Name)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	h, err := r.OpenHead(ctx, "s-j", "vda", 8*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	for v := uint32(1); v <= 3; v++ {
		write(t, h, m, map[uint64]uint32{uint64(v): v})
		if err := h.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(journals()); n != 3 {
		t.Fatalf("%d journals after 3 flushes, want 3", n)
	}
	h.Close() // a crash: the journals stay

	var listed atomic.Int64
	lh := &listHook{Backend: be, before: func(prefix string) {
		if strings.HasSuffix(prefix, "/j-") {
			listed.Add(1)
		}
	}}
	r2, err := Open(ctx, lh, mk, withTestIndexDir(t, testOptions()))
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	h2, err := r2.OpenHead(ctx, "s-j", "vda", 8*testBS, HeadOptions{}) // replays, checkpoints
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if got := journals(); len(got) != 0 {
		t.Fatalf("journals left after the open's checkpoint: %v", got)
	}
	write(t, h2, m, map[uint64]uint32{5: 9})
	if err := h2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before := listed.Load()
	p := seal(t, r2, "pit-1", h2)
	if got := journals(); len(got) != 0 {
		t.Fatalf("journals left after the seal's checkpoint: %v", got)
	}
	if n := listed.Load() - before; n != 0 {
		t.Fatalf("the seal listed the journals %d times", n)
	}
	checkPIT(t, r2, p, "vda", 8*testBS, m)
}
