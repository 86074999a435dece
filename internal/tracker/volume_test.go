package tracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// imageFile writes an image of size random bytes and returns its path and content.
func imageFile(t testing.TB, dir string, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{3}).Read(data)
	p := filepath.Join(dir, "vol.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func TestVolumeFileReadBlocksAndScan(t *testing.T) {
	const bs = 64 << 10
	// Not a multiple of the block size: the last block is short.
	p, data := imageFile(t, t.TempDir(), 5*maxIO+3*bs+4096)
	v, err := OpenVolume(p)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.Size() != int64(len(data)) || v.IsDevice() {
		t.Fatalf("Size() = %d, IsDevice() = %v", v.Size(), v.IsDevice())
	}
	if direct, why := v.Direct(); !direct {
		t.Logf("buffered: %s", why)
	}
	nb := v.Blocks(bs)
	if nb != uint64((len(data)+bs-1)/bs) {
		t.Fatalf("Blocks() = %d", nb)
	}
	blockOf := func(b uint64) []byte {
		lo := int(b) * bs
		return data[lo:min(lo+bs, len(data))]
	}

	// Adjacent runs, a long run past one read, gaps, out of order, the short last
	// block, a block past the end (skipped), and scattered blocks, more than fit in
	// one wave of concurrent reads.
	want := []uint64{0, 1, 2, 7, 5, 6, nb - 1, nb + 5}
	for b := uint64(10); b < 10+maxIO/bs+3; b++ {
		want = append(want, b)
	}
	for b := uint64(10 + maxIO/bs + 4); b < nb-1 && len(want) < 300; b += 2 {
		want = append(want, b)
	}
	var got []uint64
	err = v.ReadBlocks(context.Background(), want, bs, func(b uint64, d []byte) error {
		got = append(got, b)
		if !bytes.Equal(d, blockOf(b)) {
			return fmt.Errorf("block %d: wrong content", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want = slices.DeleteFunc(want, func(b uint64) bool { return b >= nb })
	if len(got) != len(want) {
		t.Fatalf("ReadBlocks delivered %d blocks, want %d", len(got), len(want))
	}
	for i, b := range got {
		if b != want[i] {
			t.Fatalf("delivery %d: block %d, want %d (in the order given)", i, b, want[i])
		}
	}

	// Scan from a block in the middle: every block, in order, with its xxh3.
	next := uint64(3)
	err = v.Scan(context.Background(), bs, 3, func(b uint64, d []byte, h uint64) error {
		if b != next {
			return fmt.Errorf("scan gave block %d, want %d", b, next)
		}
		next++
		if !bytes.Equal(d, blockOf(b)) || h != xxh3.Hash(blockOf(b)) {
			return fmt.Errorf("block %d: wrong content or hash", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if next != nb {
		t.Fatalf("scan ended at block %d, want %d", next, nb)
	}

	// An error from fn stops the scan and comes back as it is.
	stop := errors.New("stop")
	n := 0
	err = v.Scan(context.Background(), bs, 0, func(uint64, []byte, uint64) error {
		n++
		if n == 100 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 100 {
		t.Fatalf("scan with a failing fn: %v after %d blocks", err, n)
	}
	// A cancelled context stops it too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := v.Scan(ctx, bs, 0, func(uint64, []byte, uint64) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("scan with a cancelled context: %v", err)
	}
	if err := v.ReadBlocks(ctx, []uint64{1}, bs, func(uint64, []byte) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadBlocks with a cancelled context: %v", err)
	}
	// Block sizes that do not fit.
	for _, bad := range []int{0, 1000, maxIO * 2} {
		if err := v.Scan(context.Background(), bad, 0, func(uint64, []byte, uint64) error { return nil }); err == nil {
			t.Errorf("block size %d accepted", bad)
		}
	}
}

func TestVolumeDevice(t *testing.T) {
	dev, _ := testutil.LoopDevice(t, 8<<20)
	directWrite(t, dev, 3*testBlock, testBlock)
	v, err := OpenVolume(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !v.IsDevice() || v.Size() != 8<<20 || v.Align() < 512 {
		t.Fatalf("device: IsDevice %v, Size %d, Align %d", v.IsDevice(), v.Size(), v.Align())
	}
	if direct, why := v.Direct(); !direct {
		t.Fatalf("a loop device refused O_DIRECT: %s", why)
	}
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, testBlock)
	if _, err := f.ReadAt(want, 3*testBlock); err != nil {
		t.Fatal(err)
	}
	err = v.ReadBlocks(context.Background(), []uint64{3}, testBlock, func(b uint64, d []byte) error {
		if !bytes.Equal(d, want) {
			return errors.New("block 3 differs from what was written")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestVolumeWithoutODirect opens an image on a filesystem that refuses O_DIRECT, if
// this kernel has one at hand (tmpfs refuses it before Linux 6.6); otherwise it checks
// that tmpfs gives direct reads.
func TestVolumeOnTmpfs(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.Run(t, "mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", dir)
	t.Cleanup(func() {
		if _, err := testutil.Output("umount", dir); err != nil {
			t.Errorf("umount %s: %v", dir, err)
		}
	})
	p, data := imageFile(t, dir, 1<<20+100)
	v, err := OpenVolume(p)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	direct, why := v.Direct()
	if !direct && why == "" {
		t.Fatal("buffered reads without a reason")
	}
	t.Logf("tmpfs: direct=%v %s", direct, why)
	var got []byte
	err = v.Scan(context.Background(), 4096, 0, func(_ uint64, d []byte, _ uint64) error {
		got = append(got, d...)
		return nil
	})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("scan of a tmpfs image: %v (equal %v)", err, bytes.Equal(got, data))
	}
}

func TestOpenVolumeErrors(t *testing.T) {
	if _, err := OpenVolume(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file: no error")
	}
	if _, err := OpenVolume("/dev/null"); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Errorf("character device: %v", err)
	}
}

// BenchmarkScanVsDD scans a 1 GiB image (LIFEBOAT_SCAN_BENCH_FILE names another) and
// reads it with dd iflag=direct bs=1M, the anchor; it reports both speeds and their
// ratio.
func BenchmarkScanVsDD(b *testing.B) {
	path := os.Getenv("LIFEBOAT_SCAN_BENCH_FILE")
	if path == "" {
		const size = 1 << 30
		path = filepath.Join(b.TempDir(), "bench.img")
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 4<<20)
		rng := rand.NewChaCha8([32]byte{9})
		for off := 0; off < size; off += len(buf) {
			_, _ = rng.Read(buf)
			if _, err := f.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	v, err := OpenVolume(path)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	if direct, why := v.Direct(); !direct {
		b.Logf("buffered reads: %s", why)
	}

	var scanTime, ddTime time.Duration
	re := regexp.MustCompile(`copied, ([0-9.]+) s`)
	for b.Loop() {
		start := time.Now()
		err := v.Scan(context.Background(), 64<<10, 0, func(uint64, []byte, uint64) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
		scanTime += time.Since(start)
		out, err := exec.Command("dd", "if="+path, "of=/dev/null", "bs=1M", "iflag=direct").CombinedOutput()
		if err != nil {
			b.Fatalf("dd: %v: %s", err, out)
		}
		m := re.FindSubmatch(out)
		if m == nil {
			b.Fatalf("dd said %s", out)
		}
		secs, _ := strconv.ParseFloat(string(m[1]), 64)
		ddTime += time.Duration(secs * float64(time.Second))
	}
	mb := float64(v.Size()) * float64(b.N) / 1e6
	b.ReportMetric(mb/scanTime.Seconds(), "scan-MB/s")
	b.ReportMetric(mb/ddTime.Seconds(), "dd-MB/s")
	b.ReportMetric(ddTime.Seconds()/scanTime.Seconds(), "scan/dd")
}
