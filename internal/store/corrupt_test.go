package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

// sealedRepo makes a repository with one PIT of 32 random blocks and returns its
// directory.
func sealedRepo(t *testing.T) (string, MasterKey, PIT) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	be, _ := file.Open(dir)
	mk, _ := NewMasterKey()
	r, err := Init(ctx, be, mk, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	h, _ := r.OpenHead(ctx, "s-z", "vda", 32*testBS, HeadOptions{})
	blocks := map[uint64]uint32{}
	for b := uint64(0); b < 32; b++ {
		blocks[b] = 1
	}
	write(t, h, model{}, blocks)
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-z", Server: "s-z", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	return dir, mk, p
}

func objects(t *testing.T, dir, prefix string) []string {
	t.Helper()
	be, _ := file.Open(dir)
	var out []string
	be.List(context.Background(), prefix, func(oi backend.ObjectInfo) error {
		out = append(out, oi.Name)
		return nil
	})
	if len(out) == 0 {
		t.Fatalf("no objects under %s", prefix)
	}
	return out
}

func flip(t *testing.T, path string, at func(size int64) int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[at(int64(len(data)))] ^= 0x40
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptPackIsReportedNeverReturnedAsData(t *testing.T) {
	ctx := context.Background()
	dir, mk, pit := sealedRepo(t)
	var biggest string
	var size int64
	for _, name := range objects(t, dir, "data/") {
		fi, _ := os.Stat(filepath.Join(dir, name))
		if fi.Size() > size {
			biggest, size = name, fi.Size()
		}
	}
	flip(t, filepath.Join(dir, biggest), func(n int64) int64 { return n / 3 })
	be, _ := file.Open(dir)
	r := reopen(t, be, mk, testOptions())
	// Reading the volume hits the damaged chunk: an error naming the pack, no data.
	v, err := r.OpenVolume(ctx, pit, "vda")
	if err != nil {
		t.Fatal(err)
	}
	var sawErr error
	for b := uint64(0); b < v.Blocks() && sawErr == nil; b++ {
		if _, err := v.ReadBlock(ctx, b, nil); err != nil {
			sawErr = err
		}
	}
	if !errors.Is(sawErr, ErrCorrupt) || !strings.Contains(sawErr.Error(), biggest) {
		t.Fatalf("reading a corrupt chunk: %v; want ErrCorrupt naming %s", sawErr, biggest)
	}
	f, _ := os.Create(filepath.Join(t.TempDir(), "out"))
	defer f.Close()
	if _, err := v.Export(ctx, f, ExportOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("export over a corrupt chunk: %v", err)
	}
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !strings.Contains(strings.Join(rep.Errors, "\n"), biggest) {
		t.Fatalf("verify --read-data: %v", rep.Errors)
	}
}

func TestTruncatedPackAndCorruptObjectsAreNamed(t *testing.T) {
	ctx := context.Background()
	dir, mk, pit := sealedRepo(t)
	pack := objects(t, dir, "data/")[0]
	if err := os.Truncate(filepath.Join(dir, pack), 1000); err != nil {
		t.Fatal(err)
	}
	be, _ := file.Open(dir)
	r := reopen(t, be, mk, testOptions())
	rep, err := r.Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !strings.Contains(strings.Join(rep.Errors, "\n"), pack) {
		t.Fatalf("verify of a truncated pack: %v", rep.Errors)
	}

	// A damaged manifest: an error naming it.
	manifest := "snapshots/s-z/" + pit.ID
	flip(t, filepath.Join(dir, manifest), func(n int64) int64 { return n - 5 })
	if _, err := r.LoadPIT(ctx, "s-z", pit.ID); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), manifest) {
		t.Fatalf("load of a corrupt manifest: %v", err)
	}
	// A damaged index object: opening says which, and rebuilding the index mends it.
	idx := objects(t, dir, "index/")[0]
	flip(t, filepath.Join(dir, idx), func(n int64) int64 { return n / 2 })
	if _, err := Open(ctx, be, mk, testOptions()); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), idx) {
		t.Fatalf("open with a corrupt index object: %v", err)
	}
}

func TestRebuildIndexFromPacks(t *testing.T) {
	ctx := context.Background()
	dir, mk, pit := sealedRepo(t)
	be, _ := file.Open(dir)
	r := reopen(t, be, mk, testOptions())
	// Lose every index object, then rebuild from the packs' own indexes.
	for _, name := range objects(t, dir, "index/") {
		be.Delete(ctx, name)
	}
	st, err := r.RebuildIndex(ctx)
	if err != nil || st.Chunks == 0 || len(st.Unreadable) != 0 {
		t.Fatalf("rebuild: %+v %v", st, err)
	}
	r2 := reopen(t, be, mk, testOptions())
	m := model{}
	for b := uint64(0); b < 32; b++ {
		m[b] = 1
	}
	checkPIT(t, r2, pit, "vda", 32*testBS, m)
}
