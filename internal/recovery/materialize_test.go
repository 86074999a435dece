package recovery_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

const bs = 64 << 10

// pitOf writes volumes (name → content) into a new store as one PIT.
func pitOf(t *testing.T, vols map[string][]byte) (*store.Repo, store.PIT) {
	t.Helper()
	r, pit, _ := pitOfAt(t, vols)
	return r, pit
}

// pitOfAt is pitOf, and says the store's directory.
func pitOfAt(t *testing.T, vols map[string][]byte) (*store.Repo, store.PIT, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	be, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := store.NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	r, err := store.Init(ctx, be, mk, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	var heads []*store.Head
	for name, data := range vols {
		h, err := r.OpenHead(ctx, "s-1", name, int64(len(data)), store.HeadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var blocks []store.Block
		for b := 0; b*bs < len(data); b++ {
			blocks = append(blocks, store.Block{Index: uint64(b), Data: data[b*bs : min((b+1)*bs, len(data))]})
		}
		if err := h.WriteBlocks(ctx, blocks); err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
	}
	pit, err := r.SealPIT(ctx, store.SealRequest{ID: "pit-1", Server: "s-1", Time: time.Now(), Level: consistency.Crash, Heads: heads})
	if err != nil {
		t.Fatal(err)
	}
	return r, pit, dir
}

func content(size int, seed uint64) []byte {
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, 1))
	for off := 0; off < size; off += 4 * bs { // one block in four holds data
		for i := off; i < min(off+bs, size); i++ {
			b[i] = byte(rng.Uint32())
		}
	}
	return b
}

// TestMaterializeEveryMode writes two volumes at once: one as a fresh sparse file, one
// over an existing disk (only differing blocks); then a volume onto a block device
// full of garbage, where zero blocks must be written as zeros.
func TestMaterializeEveryMode(t *testing.T) {
	ctx := context.Background()
	a, b := content(40*bs, 1), content(24*bs+1000, 2) // b's last block is short
	repo, pit := pitOf(t, map[string][]byte{"vda": a, "vdb": b})
	dir := t.TempDir()
	old := append([]byte(nil), b...)
	copy(old[3*bs:], bytes.Repeat([]byte{7}, bs)) // differs in block 3 (data) and 5 (a hole in the PIT)
	copy(old[5*bs:], bytes.Repeat([]byte{9}, 10))
	existing := filepath.Join(dir, "existing.raw")
	if err := os.WriteFile(existing, old, 0o600); err != nil {
		t.Fatal(err)
	}
	var last, total int64
	stats, err := recovery.Materialize(ctx, repo, pit, []launch.Disk{
		{Volume: "vda", SizeBytes: int64(len(a)), Path: filepath.Join(dir, "fresh", "vda.raw"), Mode: launch.WriteFresh},
		{Volume: "vdb", SizeBytes: int64(len(b)), Path: existing, Mode: launch.WriteDiffering},
	}, true, func(done, tot int64) { last, total = done, tot })
	if err != nil {
		t.Fatal(err)
	}
	// The seed tables are the agent's view of the PIT: every block's hash, zeros included.
	for i, vol := range [][]byte{a, b} {
		h := stats[i].Hashes
		if h == nil || h.Blocks() != uint64((len(vol)+bs-1)/bs) {
			t.Fatalf("volume %d: hash table %v, want one entry per block", i, h)
		}
		for blk := range h.Blocks() {
			data := vol[int(blk)*bs : min(int(blk+1)*bs, len(vol))]
			if !h.Matches(blk, wire.Hash(data)) {
				t.Fatalf("volume %d block %d: the seed table does not hold the PIT's hash", i, blk)
			}
		}
	}
	if last != total || total != int64(len(a)+len(b)) {
		t.Errorf("progress ended at %d of %d, want %d", last, total, len(a)+len(b))
	}
	got, _ := os.ReadFile(filepath.Join(dir, "fresh", "vda.raw"))
	if !bytes.Equal(got, a) {
		t.Fatal("the fresh disk differs from the PIT")
	}
	if stats[0].WrittenBlocks != 10 || stats[0].ZeroBlocks != 30 {
		t.Errorf("fresh disk: %+v, want 10 blocks written and 30 holes", stats[0].ExportStats)
	}
	got, _ = os.ReadFile(existing)
	if !bytes.Equal(got, b) {
		t.Fatal("the existing disk differs from the PIT")
	}
	if stats[1].WrittenBlocks != 2 {
		t.Errorf("existing disk: %+v, want the 2 differing blocks written", stats[1].ExportStats)
	}

	// A block device: every block is written, holes as zeros.
	dev, _ := testutil.LoopDevice(t, int64(len(a)))
	if err := os.WriteFile(dev, bytes.Repeat([]byte{0xff}, len(a)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := recovery.Materialize(ctx, repo, pit, []launch.Disk{{Volume: "vda", SizeBytes: int64(len(a)), Path: dev, Mode: launch.WriteDevice}}, false, nil); err != nil {
		t.Fatal(err)
	}
	got, err = os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(a)], a) {
		t.Fatal("the block device differs from the PIT (were zero blocks written?)")
	}
}

// TestImageProviderPlansDevices: block devices must be devices and large enough.
func TestImageProviderPlansDevices(t *testing.T) {
	ctx := context.Background()
	small, _ := testutil.LoopDevice(t, 1<<20)
	big, _ := testutil.LoopDevice(t, 4<<20)
	plain := filepath.Join(t.TempDir(), "plain.raw")
	if err := os.WriteFile(plain, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	p := launch.Providers(launch.Options{})[api.ProviderImage]
	req := func(devs ...string) launch.Request {
		s := api.DefaultLaunchSettings(1, 512<<20)
		s.Provider, s.ImageTarget = api.ProviderImage, &api.ImageTarget{Devices: devs}
		return launch.Request{RecoveryInstanceID: "i-1", Volumes: []launch.Volume{{Name: "vda", SizeBytes: 2 << 20}}, Settings: s, Dir: t.TempDir()}
	}
	for devs, say := range map[string]string{small: "too small", plain: "not a block device"} {
		_, err := p.Plan(ctx, req(devs))
		var ref *launch.Refusal
		if !errors.As(err, &ref) || !bytes.Contains([]byte(ref.Reason), []byte(say)) {
			t.Errorf("%s: %v, want a refusal saying %q", devs, err, say)
		}
	}
	plan, err := p.Plan(ctx, req(big))
	if err != nil || len(plan.Disks) != 1 || plan.Disks[0].Mode != launch.WriteDevice || plan.Disks[0].Path != big {
		t.Fatalf("plan %+v %v", plan, err)
	}
}
