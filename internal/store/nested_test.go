package store

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

// TestRepositoryNestedUnderAcctIsLeftAlone: the control plane puts an account's default
// store under the system store's location (DIR/acct-…, docs/store-format.md §1). The
// outer repository's garbage collection, verification and statistics list only their
// own prefixes: they neither report nor remove the inner repository's objects, which
// still read back whole.
func TestRepositoryNestedUnderAcctIsLeftAlone(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	dir := t.TempDir()
	outerBE, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	innerBE, err := file.Open(filepath.Join(dir, "acct-00000000000000001"))
	if err != nil {
		t.Fatal(err)
	}
	mk, _ := NewMasterKey()
	outer, err := Init(ctx, outerBE, mk, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	inner, err := Init(ctx, innerBE, mk, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	write := func(r *Repo, v uint32) PIT {
		h, err := r.OpenHead(ctx, "s-1", "vda", 8*testBS, HeadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.WriteBlocks(ctx, []Block{{Index: 2, Data: content(2, v)}}); err != nil {
			t.Fatal(err)
		}
		if err := h.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		p, err := r.SealPIT(ctx, SealRequest{ID: "pit-1", Server: "s-1", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	write(outer, 1)
	pit := write(inner, 3)

	if _, err := outer.GC(ctx, GCOptions{Grace: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	rep, err := outer.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil || !rep.OK() || len(rep.Warnings) > 0 {
		t.Fatalf("verify of the outer repository: %+v, %v", rep, err)
	}
	if _, err := outer.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	again := reopen(t, innerBE, mk, opts)
	v, err := again.OpenVolume(ctx, pit, "vda")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := v.ReadBlock(ctx, 2, nil); err != nil || !bytes.Equal(b, content(2, 3)) {
		t.Fatalf("the inner repository's block after the outer one's GC: %v", err)
	}
	if rep, err := again.Verify(ctx, VerifyOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("verify of the inner repository: %+v, %v", rep, err)
	}
}
