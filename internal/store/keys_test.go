package store

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// keyObjects counts the key objects of a repository.
func keyObjects(t *testing.T, be backend.Backend) int {
	t.Helper()
	n := 0
	if err := be.List(context.Background(), "keys/", func(backend.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAccountKeyAndMasterKeyEachOpenTheRepository: a repository made with the master key
// and given an account key with AddKey opens with either and reads the same PIT; AddKey
// again writes nothing; another account's key opens nothing.
func TestAccountKeyAndMasterKeyEachOpenTheRepository(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	r, be, master := newTestRepo(t, opts)
	h, err := r.OpenHead(ctx, "s-1", "vda", 4*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WriteBlocks(ctx, []Block{{Index: 1, Data: content(1, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	pit, err := r.SealPIT(ctx, SealRequest{ID: "pit-1", Server: "s-1", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	h.Close()

	account, _ := NewMasterKey()
	for range 2 {
		if err := r.AddKey(ctx, account); err != nil {
			t.Fatal(err)
		}
	}
	if n := keyObjects(t, be); n != 2 {
		t.Fatalf("%d key objects after adding one key twice, want 2 (AddKey is not idempotent)", n)
	}
	if err := r.AddKey(ctx, master); err != nil || keyObjects(t, be) != 2 {
		t.Fatalf("AddKey of the key the repository was made with wrote a key object (%v)", err)
	}
	r.Close()

	for name, k := range map[string]MasterKey{"account key": account, "master key": master} {
		got := reopen(t, be, k, opts)
		v, err := got.OpenVolume(ctx, pit, "vda")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := v.ReadBlock(ctx, 1, nil)
		if err != nil || !bytes.Equal(b, content(1, 1)) {
			t.Fatalf("%s reads block 1 wrong (%v)", name, err)
		}
	}

	// Another account's repository: this account's key does not open it.
	_, beB, _ := newTestRepo(t, opts)
	if _, err := Open(ctx, beB, account, opts); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("account A's key on account B's repository: %v, want ErrWrongKey", err)
	}
}

func TestWrapIsBoundToItsPurpose(t *testing.T) {
	k, _ := NewMasterKey()
	other, _ := NewMasterKey()
	sealed := k.Wrap([]byte("account key bytes"), "account acct-1")
	if got, err := k.Unwrap(sealed, "account acct-1"); err != nil || string(got) != "account key bytes" {
		t.Fatalf("unwrap: %q, %v", got, err)
	}
	if _, err := k.Unwrap(sealed, "account acct-2"); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("unwrap for another account: %v, want ErrWrongKey", err)
	}
	if _, err := other.Unwrap(sealed, "account acct-1"); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("unwrap with another key: %v, want ErrWrongKey", err)
	}
	if _, err := k.Unwrap(sealed[:10], "account acct-1"); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("unwrap of a truncated value: %v, want ErrWrongKey", err)
	}
}
