package agent

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// stubTracker is a tracker.Tracker whose Sync and Lost the test sets.
type stubTracker struct {
	syncs int
	lost  uint64
}

func (s *stubTracker) Name() string                                         { return tracker.NameEBPF }
func (s *stubTracker) Run(context.Context, func(int, uint64, uint64)) error { return nil }
func (s *stubTracker) Sync(context.Context) error                           { s.syncs++; return nil }
func (s *stubTracker) Lost() uint64                                         { return s.lost }
func (s *stubTracker) Close() error                                         { return nil }

// imageSet opens an image file of blocks 4 KiB blocks as a volumeSet.
func imageSet(t *testing.T, blocks int) (*volumeSet, []byte) {
	t.Helper()
	path := imageFile(t, t.TempDir(), "disk.img", blocks*testBS, 3)
	vols, err := openVolumes([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeVolumes(vols) })
	vols[0].dirty = tracker.NewDirtySet(uint64(blocks))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return &volumeSet{vols: vols, blockSize: testBS, freezeWhy: "no watchdog in this test"}, data
}

// collected runs Collect and returns the blocks it delivered, checking their data and
// hash against the image.
func collected(t *testing.T, src Source, image []byte, held func(uint64, uint64) bool) ([]uint64, error) {
	t.Helper()
	var got []uint64
	err := src.Collect(context.Background(), 0, held, func(b uint64, data []byte, hash uint64) error {
		if !bytes.Equal(data, image[b*testBS:(b+1)*testBS]) || hash != wire.Hash(data) {
			t.Errorf("block %d: data or hash differ from the image", b)
		}
		got = append(got, b)
		return nil
	})
	return got, err
}

func TestEBPFSourceCollectsTheDirtyBlocks(t *testing.T) {
	set, image := imageSet(t, 64)
	tr := &stubTracker{lost: 4}
	src := &ebpfSource{volumeSet: set, tr: tr}
	for _, b := range []uint64{1, 5, 9, 63} {
		src.Mark(0, b)
	}
	got, err := collected(t, src, image, func(uint64, uint64) bool { return true }) // held is not asked
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0] != 1 || got[3] != 63 || src.Dirty(0) != 0 {
		t.Fatalf("collected %v, %d left dirty; want 1 5 9 63 and none", got, src.Dirty(0))
	}
	if err := src.Sync(context.Background()); err != nil || tr.syncs != 1 || src.Lost() != 4 || !src.Continuous() {
		t.Fatal("Sync, Lost or Continuous do not follow the tracker")
	}
	if _, err := src.Mounts(); err == nil || !strings.Contains(err.Error(), "no watchdog") {
		t.Fatalf("Mounts without a watchdog: %v, want the reason", err)
	}
}

// A read that fails puts every taken block back: none is lost from the dirty set.
func TestEBPFSourceCollectPutsBackWhatItCouldNotRead(t *testing.T) {
	set, image := imageSet(t, 64)
	src := &ebpfSource{volumeSet: set, tr: &stubTracker{}}
	for b := uint64(0); b < 10; b++ {
		src.Mark(0, b)
	}
	set.vols[0].dev.Close() // every read fails from now on
	if _, err := collected(t, src, image, nil); err == nil {
		t.Fatal("Collect read a closed volume")
	}
	if src.Dirty(0) != 10 {
		t.Fatalf("%d blocks dirty after a failed read, want the 10 taken", src.Dirty(0))
	}
}

func TestScanSourceCollectsWhatTheReplicaDoesNotHold(t *testing.T) {
	set, image := imageSet(t, 32)
	src := &scanSource{set}
	want := map[uint64]bool{3: true, 17: true}
	got, err := collected(t, src, image, func(b, h uint64) bool {
		if h != wire.Hash(image[b*testBS:(b+1)*testBS]) {
			t.Errorf("block %d offered with a wrong hash", b)
		}
		return !want[b]
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != 3 || got[1] != 17 {
		t.Fatalf("collected %v, want 3 17", got)
	}
	if src.Continuous() || src.Lost() != 0 || src.Tracker() != tracker.NameScan {
		t.Fatal("the scan source claims to track writes")
	}
	if v := src.Volumes(); len(v) != 1 || v[0].SizeBytes != 32*testBS || v[0].Name != "disk.img" {
		t.Fatalf("volumes %+v", v)
	}
}
