package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

func TestStoreCommands(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	url, key := "file://"+filepath.Join(dir, "st"), filepath.Join(dir, "master.key")
	flags := []string{"--store", url, "--key", key}
	out, errs, code := runCLI(append([]string{"store", "init"}, flags...)...)
	if code != 0 || !strings.Contains(out, "fingerprint") {
		t.Fatalf("store init: %d %s %s", code, out, errs)
	}
	// Put a PIT in it through the store's API, as a replicator would.
	be, _ := file.Open(filepath.Join(dir, "st"))
	mk, err := store.LoadMasterKey(key)
	if err != nil {
		t.Fatal(err)
	}
	r, err := store.Open(ctx, be, mk, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := r.OpenHead(ctx, "s-cli", "vda", 1<<20, store.HeadOptions{})
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := h.WriteBlocks(ctx, []store.Block{{Index: 0, Data: data}, {Index: 3, Data: data}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SealPIT(ctx, store.SealRequest{ID: "pit-cli", Server: "s-cli", Time: time.Now(), Level: consistency.Filesystem, Heads: []*store.Head{h}}); err != nil {
		t.Fatal(err)
	}
	r.Close()

	out, errs, code = runCLI(append([]string{"store", "verify", "--read-data"}, flags...)...)
	if code != 0 || !strings.Contains(out, "PITs") {
		t.Fatalf("store verify: %d %s %s", code, out, errs)
	}
	out, _, code = runCLI(append([]string{"store", "stats", "-o", "json"}, flags...)...)
	var st store.Stats
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Servers) != 1 || st.Servers[0].DedupRatio != 2 {
		t.Fatalf("store stats: %d %s", code, out)
	}
	if _, errs, code = runCLI(append([]string{"store", "gc", "--grace", "10ms"}, flags...)...); code != 0 {
		t.Fatalf("store gc: %s", errs)
	}
	// A damaged pack: verify --read-data fails with one sentence and names it.
	var pack string
	filepath.Walk(filepath.Join(dir, "st", "data"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			pack = p
		}
		return nil
	})
	b, _ := os.ReadFile(pack)
	b[len(b)/3] ^= 1
	os.WriteFile(pack, b, 0o600)
	out, errs, code = runCLI(append([]string{"store", "verify", "--read-data"}, flags...)...)
	if code != 1 || !strings.Contains(out, filepath.Base(pack)) || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
		t.Fatalf("verify of a damaged store: exit %d\n%s\n%s", code, out, errs)
	}
	// The wrong key: refused, saying so.
	other := filepath.Join(dir, "other.key")
	k2, _ := store.NewMasterKey()
	store.WriteMasterKey(other, k2)
	_, errs, code = runCLI("store", "verify", "--store", url, "--key", other)
	if code != 1 || !strings.Contains(errs, "master key") {
		t.Fatalf("verify with another key: %d %s", code, errs)
	}
}

// The steps of store verify and gc count what they say they do.
func TestStoreProgressUnits(t *testing.T) {
	for step, want := range map[string]unit{"index": "index objects", "packs": "packs", "references": "tree nodes", "rollbacks": ""} {
		if got := verifyUnit(step); got != want {
			t.Errorf("verify %s counts %q, want %q", step, got, want)
		}
	}
	for step, want := range map[string]unit{store.GCStepMark: "tree nodes", store.GCStepGrace: unitSeconds,
		store.GCStepRepack: "packs", store.GCStepRemove: "objects", store.GCStepIndex: ""} {
		if got := gcUnit(step); got != want {
			t.Errorf("gc %s counts %q, want %q", step, got, want)
		}
	}
}
