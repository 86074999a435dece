package store

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// countingBackend counts the reads of objects whose names start with prefix.
type countingBackend struct {
	backend.Backend
	prefix string
	gets   atomic.Int64
}

func (b *countingBackend) Get(ctx context.Context, name string) ([]byte, error) {
	if strings.HasPrefix(name, b.prefix) {
		b.gets.Add(1)
	}
	return b.Backend.Get(ctx, name)
}

// Listing a server's PITs again reads only the manifests that are new or rewritten
// (retention lists them every minute; with a point a second there are thousands), and
// forgets the deleted ones.
func TestListPITsReadsOnlyNewManifests(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	opts := testOptions()
	opts.Now = func() time.Time { return now }
	_, be, mk := newTestRepo(t, opts)
	cb := &countingBackend{Backend: be, prefix: "snapshots/"}
	r, err := Open(ctx, cb, mk, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h, err := r.OpenHead(ctx, "s-1", "vda", 10*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	seal := func(id string, at time.Time) {
		if _, err := r.SealPIT(ctx, SealRequest{ID: id, Server: "s-1", Time: at, Level: consistency.Filesystem, Heads: []*Head{h}}); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range []string{"pit-a", "pit-b", "pit-c"} {
		seal(id, now.Add(time.Duration(i-10)*time.Second))
	}
	list := func(want int) int64 {
		t.Helper()
		before := cb.gets.Load()
		pits, err := r.ListPITs(ctx, "s-1")
		if err != nil || len(pits) != want {
			t.Fatalf("ListPITs: %d PITs (%v), want %d", len(pits), err, want)
		}
		return cb.gets.Load() - before
	}
	list(3)
	if n := list(3); n != 0 {
		t.Fatalf("listing again read %d manifests, want none", n)
	}
	seal("pit-d", now.Add(-5*time.Second))
	if n := list(4); n != 1 {
		t.Fatalf("listing after a new PIT read %d manifests, want 1", n)
	}
	if _, err := r.ProtectPIT(ctx, "s-1", "pit-a", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := list(4); n != 1 {
		t.Fatalf("listing after a PIT was locked (its manifest rewritten) read %d manifests, want 1", n)
	}
	if err := r.DeletePIT(ctx, "s-1", "pit-b"); err != nil {
		t.Fatal(err)
	}
	if n := list(3); n != 0 {
		t.Fatalf("listing after a deletion read %d manifests, want none", n)
	}
}
