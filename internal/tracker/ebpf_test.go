package tracker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/freeze"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

const testBlock = 64 << 10

// needEBPF raises RLIMIT_MEMLOCK (as scripts/test does) and needs root.
func needEBPF(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	var lim unix.Rlimit
	lim.Cur, lim.Max = unix.RLIM_INFINITY, unix.RLIM_INFINITY
	_ = unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim)
}

// startTracker loads the tracker for the given devices (all with testBlock blocks) and
// runs it into one DirtySet per volume until the test ends.
func startTracker(t *testing.T, devs []string, opts ...EBPFOption) (*EBPF, []*DirtySet) {
	t.Helper()
	tr, sets := loadTracker(t, devs, opts...)
	runTracker(t, tr, sets)
	return tr, sets
}

func loadTracker(t *testing.T, devs []string, opts ...EBPFOption) (*EBPF, []*DirtySet) {
	t.Helper()
	needEBPF(t)
	var vols []EBPFVolume
	var sets []*DirtySet
	for _, d := range devs {
		kd, err := KernelDev(d)
		if err != nil {
			t.Fatal(err)
		}
		v, err := OpenVolume(d)
		if err != nil {
			t.Fatal(err)
		}
		blocks := v.Blocks(testBlock)
		v.Close()
		vols = append(vols, EBPFVolume{Dev: kd, Blocks: blocks, BlockSize: testBlock})
		sets = append(sets, NewDirtySet(blocks))
	}
	tr, err := NewEBPF(vols, opts...)
	testutil.Need(t, err == nil, fmt.Sprintf("the eBPF tracker cannot run here: %v", err))
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close tracker: %v", err)
		}
	})
	return tr, sets
}

func runTracker(t *testing.T, tr *EBPF, sets []*DirtySet) {
	t.Helper()
	runTrackerWith(t, tr, func(vol int, first, last uint64) { sets[vol].Mark(first, last) })
}

// runTrackerWith runs the tracker until the test ends and returns once Run runs.
func runTrackerWith(t *testing.T, tr *EBPF, mark func(vol int, first, last uint64)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, mark) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("tracker Run: %v", err)
		}
	})
	// Run must be running for Sync to work: wait for it (bounded).
	deadline := time.Now().Add(10 * time.Second)
	for {
		tr.mu.Lock()
		running := tr.running
		tr.mu.Unlock()
		if running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("tracker Run did not start within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func syncTracker(t *testing.T, tr *EBPF) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func alignedBuf(n int) []byte {
	raw := make([]byte, n+4096)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&raw[0])) % 4096); r != 0 {
		off = 4096 - r
	}
	return raw[off : off+n]
}

// directWrite writes n bytes of random data at off with O_DIRECT.
func directWrite(t *testing.T, dev string, off int64, n int) {
	t.Helper()
	fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", dev, err)
	}
	defer unix.Close(fd)
	buf := alignedBuf(n)
	for i := range buf {
		buf[i] = byte(rand.Uint32())
	}
	if w, err := unix.Pwrite(fd, buf, off); err != nil || w != n {
		t.Fatalf("O_DIRECT write of %d bytes at %d to %s: %d, %v", n, off, dev, w, err)
	}
}

func takeAll(d *DirtySet) []uint64 {
	return d.Take(nil, int(d.Count())+1)
}

func TestEBPFMarksExactlyTheWrittenBlocks(t *testing.T) {
	dev, _ := testutil.LoopDevice(t, 64<<20)
	tr, sets := startTracker(t, []string{dev})
	set := sets[0]
	if tr.Name() != NameEBPF {
		t.Errorf("Name() = %q", tr.Name())
	}

	// O_DIRECT writes: within one block, across a boundary, and the last block.
	directWrite(t, dev, 3*testBlock+8192, 4096)          // block 3
	directWrite(t, dev, 10*testBlock+32768, 2*testBlock) // blocks 10, 11, 12
	directWrite(t, dev, 64<<20-4096, 4096)               // the last block
	directWrite(t, dev, 500*testBlock-4096, 8192)        // blocks 499, 500
	syncTracker(t, tr)
	want := []uint64{3, 10, 11, 12, 499, 500, 1023}
	if got := takeAll(set); !slices.Equal(got, want) {
		t.Fatalf("after O_DIRECT writes, dirty blocks = %v, want %v", got, want)
	}

	// Reads, direct and buffered, mark nothing.
	v, err := OpenVolume(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if direct, why := v.Direct(); !direct {
		t.Fatalf("a loop device should allow O_DIRECT: %s", why)
	}
	n := 0
	if err := v.Scan(context.Background(), testBlock, 0, func(uint64, []byte, uint64) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 1024 {
		t.Fatalf("scan saw %d blocks, want 1024", n)
	}
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 1<<20), 7*testBlock); err != nil {
		t.Fatal(err)
	}
	f.Close()
	syncTracker(t, tr)
	if got := takeAll(set); len(got) != 0 {
		t.Fatalf("reads marked blocks %v", got)
	}

	// Writes through the page cache, made durable with fsync.
	f, err = os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xab}, 100), 20*testBlock+testBlock-50); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xcd}, 3*testBlock), 40*testBlock); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	syncTracker(t, tr)
	want = []uint64{20, 21, 40, 41, 42}
	if got := takeAll(set); !slices.Equal(got, want) {
		t.Fatalf("after buffered writes + fsync, dirty blocks = %v, want %v", got, want)
	}

	// Discard and write-zeroes change content too.
	fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ioctlRange(t, fd, unix.BLKDISCARD, 100*testBlock, testBlock)
	ioctlRange(t, fd, unix.BLKZEROOUT, 200*testBlock, 2*testBlock)
	syncTracker(t, tr)
	want = []uint64{100, 200, 201}
	if got := takeAll(set); !slices.Equal(got, want) {
		t.Fatalf("after discard and zero-out, dirty blocks = %v, want %v", got, want)
	}
	if lost := tr.Lost(); lost != 0 {
		t.Fatalf("Lost() = %d with a large ring buffer", lost)
	}
}

func ioctlRange(t *testing.T, fd int, req uint, off, n uint64) {
	t.Helper()
	r := [2]uint64{off, n}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r))); errno != 0 {
		t.Fatalf("ioctl %#x [%d, +%d): %v", req, off, n, errno)
	}
}

func TestEBPFIgnoresOtherDevices(t *testing.T) {
	watched, _ := testutil.LoopDevice(t, 16<<20)
	other, _ := testutil.LoopDevice(t, 16<<20)
	tr, sets := startTracker(t, []string{watched})
	for i := range 20 {
		directWrite(t, other, int64(i)*testBlock, 4096)
	}
	f, err := os.OpenFile(other, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// A write to the watched device after them proves events were flowing.
	directWrite(t, watched, 5*testBlock, 4096)
	syncTracker(t, tr)
	if got := takeAll(sets[0]); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("dirty blocks of the watched device = %v, want [5] only", got)
	}
}

func TestEBPFTwoVolumes(t *testing.T) {
	a, _ := testutil.LoopDevice(t, 16<<20)
	b, _ := testutil.LoopDevice(t, 16<<20)
	tr, sets := startTracker(t, []string{a, b})
	directWrite(t, a, 1*testBlock, 4096)
	directWrite(t, b, 2*testBlock, 4096)
	syncTracker(t, tr)
	if got := takeAll(sets[0]); !slices.Equal(got, []uint64{1}) {
		t.Errorf("volume 0: %v, want [1]", got)
	}
	if got := takeAll(sets[1]); !slices.Equal(got, []uint64{2}) {
		t.Errorf("volume 1: %v, want [2]", got)
	}
}

// TestEBPFRingOverflowCountsLost fills a one-page ring buffer while nothing reads it:
// every write is then either delivered or counted as lost, and some are lost.
func TestEBPFRingOverflowCountsLost(t *testing.T) {
	dev, _ := testutil.LoopDevice(t, 64<<20)
	tr, sets := loadTracker(t, []string{dev}, WithRingSize(4096))
	const writes = 600 // 16 bytes + 8 of header each: a 4 KiB ring holds 170
	for i := range writes {
		directWrite(t, dev, int64(i)*testBlock, 4096)
	}
	lostBefore := tr.Lost()
	if lostBefore == 0 {
		t.Fatalf("%d writes into a 4 KiB ring buffer with no reader lost nothing", writes)
	}
	var delivered atomic.Uint64
	var mu sync.Mutex
	var got []uint64
	runTrackerWith(t, tr, func(vol int, first, last uint64) {
		delivered.Add(1)
		mu.Lock()
		got = append(got, first, last)
		mu.Unlock()
		sets[vol].Mark(first, last)
	})
	syncTracker(t, tr)
	t.Logf("lost: %+v", tr.LostDetail())
	if delivered.Load()+tr.Lost() < writes {
		mu.Lock()
		t.Logf("delivered ranges: %v", got)
		mu.Unlock()
		t.Fatalf("delivered %d + lost %d = %d events, want at least one per write (%d)", delivered.Load(), tr.Lost(), delivered.Load()+tr.Lost(), writes)
	}
	t.Logf("ring of 4 KiB: %d events delivered, %d lost: the agent answers with a RESCAN", delivered.Load(), tr.Lost())
}

// TestEBPFPartition watches a partition of a loop device: the kernel reports writes
// against the whole disk with absolute sectors, and the tracker maps them back.
func TestEBPFPartition(t *testing.T) {
	needEBPF(t)
	testutil.RequireCommand(t, "losetup", "mount")
	img := filepath.Join(t.TempDir(), "parted.img")
	const start = 2048 // sectors: 1 MiB
	const sectors = 32768
	mbr := make([]byte, 512)
	e := mbr[446:]
	e[4] = 0x83
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], sectors)
	mbr[510], mbr[511] = 0x55, 0xaa
	if err := os.WriteFile(img, mbr, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	out, err := testutil.Output("losetup", "--find", "--show", "--partscan", img)
	testutil.Need(t, err == nil, "a partitioned loop device could not be attached: "+fmt.Sprint(err))
	disk := strings.TrimSpace(out)
	t.Cleanup(func() {
		if _, err := testutil.Output("losetup", "--detach", disk); err != nil {
			t.Errorf("detach %s: %v", disk, err)
		}
	})
	part := disk + "p1"
	if _, err := os.Stat("/sys/class/block/" + filepath.Base(part)); err != nil {
		// A kernel without the MS-DOS partition parser: add the partition by hand
		// (BLKPG), as a partitioning tool would.
		testutil.RequireCommand(t, "addpart", "util-linux")
		testutil.Run(t, "addpart", disk, "1", strconv.Itoa(start), strconv.Itoa(sectors))
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(part); err == nil {
			break
		}
		if i == 1000 {
			t.Fatalf("%s did not appear", part)
		}
		time.Sleep(5 * time.Millisecond)
	}
	tr, sets := startTracker(t, []string{part})
	directWrite(t, part, 7*testBlock+4096, 4096) // partition block 7
	directWrite(t, disk, 0, 4096)                // before the partition
	directWrite(t, disk, 30<<20, 4096)           // after it
	syncTracker(t, tr)
	if got := takeAll(sets[0]); !slices.Equal(got, []uint64{7}) {
		t.Fatalf("partition dirty blocks = %v, want [7]", got)
	}
}

// TestEBPFBioBasedDevice checks block:block_bio_complete with a zram device, which is
// bio-based (no request queue).
func TestEBPFBioBasedDevice(t *testing.T) {
	needEBPF(t)
	_, err := os.Stat("/sys/class/zram-control/hot_add")
	testutil.Need(t, err == nil, "zram is not available (a bio-based device for this test; modprobe zram)")
	data, err := os.ReadFile("/sys/class/zram-control/hot_add")
	testutil.Need(t, err == nil, fmt.Sprintf("a zram device could not be added: %v", err))
	id := strings.TrimSpace(string(data))
	if _, err := strconv.Atoi(id); err != nil {
		t.Fatalf("zram hot_add gave %q", id)
	}
	t.Cleanup(func() {
		_ = os.WriteFile("/sys/block/zram"+id+"/reset", []byte("1"), 0)
		if err := os.WriteFile("/sys/class/zram-control/hot_remove", []byte(id), 0); err != nil {
			t.Errorf("remove zram%s: %v", id, err)
		}
	})
	if err := os.WriteFile("/sys/block/zram"+id+"/disksize", []byte("16M"), 0); err != nil {
		t.Fatalf("size zram%s: %v", id, err)
	}
	dev := "/dev/zram" + id
	tr, sets := startTracker(t, []string{dev})
	if !slices.Contains(tr.Tracepoints(), "block:block_bio_complete") {
		t.Fatalf("tracepoints %v lack block:block_bio_complete", tr.Tracepoints())
	}
	directWrite(t, dev, 9*testBlock, 4096)
	directWrite(t, dev, 20*testBlock+testBlock-4096, 8192)
	syncTracker(t, tr)
	if got := takeAll(sets[0]); !slices.Equal(got, []uint64{9, 20, 21}) {
		t.Fatalf("zram dirty blocks = %v, want [9 20 21]", got)
	}
}

func TestNewEBPFRejectsBadInput(t *testing.T) {
	if _, err := NewEBPF(nil); err == nil {
		t.Error("no volumes: no error")
	}
	if _, err := NewEBPF([]EBPFVolume{{Dev: 7 << 20, Blocks: 1, BlockSize: 1000}}); err == nil ||
		!strings.Contains(err.Error(), "block size") {
		t.Errorf("bad block size: %v", err)
	}
	if _, err := KernelDev("/dev/null"); err == nil {
		t.Error("KernelDev of a character device: no error")
	}
}

// TestEBPFReplicaEqualsDevice is docs/architecture.md §4's first invariant end to end: while a writer
// changes files on a mounted ext4, a consumer takes dirty blocks, reads them with
// O_DIRECT and copies them into a replica image. After the writer stops and the
// filesystem is frozen (a consistency point), Sync and a final drain make the replica
// equal to the device, byte for byte.
func TestEBPFReplicaEqualsDevice(t *testing.T) {
	const size = 256 << 20
	dev, _ := testutil.LoopDevice(t, size)
	testutil.MkfsExt4(t, dev)
	mnt := testutil.Mount(t, dev)
	tr, sets := startTracker(t, []string{dev})
	set := sets[0]
	set.MarkAll() // the initial sync goes through the same path

	vol, err := OpenVolume(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	replicaPath := filepath.Join(t.TempDir(), "replica.img")
	replica, err := os.Create(replicaPath)
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close()
	if err := replica.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// What the replica holds, as the agent's hash table would record it from acks.
	held, err := NewHashTable("replica", size, testBlock)
	if err != nil {
		t.Fatal(err)
	}
	copyBlock := func(b uint64, data []byte) error {
		if _, err := replica.WriteAt(data, int64(b)*testBlock); err != nil {
			return err
		}
		held.Set(b, xxh3.Hash(data))
		return nil
	}
	copyDirty := func() (int, error) {
		blocks := set.Take(nil, 64)
		err := vol.ReadBlocks(context.Background(), blocks, testBlock, copyBlock)
		return len(blocks), err
	}

	// The initial sync, before the writer starts.
	for i := 0; set.Count() > 0; i++ {
		if i > 1_000_000 {
			t.Fatal("the initial sync does not end")
		}
		if _, err := copyDirty(); err != nil {
			t.Fatal(err)
		}
	}

	// An independent witness: ftrace's own record of the device's completions.
	kd, err := KernelDev(dev)
	if err != nil {
		t.Fatal(err)
	}
	var sent0 uint64
	_ = tr.sent.Lookup(uint32(0), &sent0)
	full0 := tr.LostDetail().RingFull
	stopWitness := ftraceWitness(t, kd)

	// Writer: random files, random offsets, some fsyncs, some deletions; 3 s at most.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var writerErr error
	var wrote atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		fill := rand.NewChaCha8([32]byte{1})
		buf := make([]byte, 256<<10)
		for i := 0; ctx.Err() == nil && i < 100000; i++ {
			name := filepath.Join(mnt, fmt.Sprintf("f%02d", rng.IntN(40)))
			if rng.IntN(20) == 0 {
				_ = os.Remove(name)
				continue
			}
			f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE, 0o644)
			if err != nil {
				writerErr = err
				return
			}
			n := 512 + rng.IntN(len(buf)-512)
			_, _ = fill.Read(buf[:n])
			if _, err := f.WriteAt(buf[:n], int64(rng.IntN(2<<20))); err != nil {
				f.Close()
				writerErr = err
				return
			}
			wrote.Add(int64(n))
			if rng.IntN(16) == 0 {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				writerErr = err
				return
			}
		}
	}()
	// Consumer: copy dirty blocks while the writer runs.
	rounds, copied := 0, 0
	for ctx.Err() == nil && rounds < 1_000_000 {
		n, err := copyDirty()
		if err != nil {
			t.Fatal(err)
		}
		copied += n
		if n == 0 {
			time.Sleep(time.Millisecond)
		}
		rounds++
	}
	wg.Wait()
	if writerErr != nil {
		t.Fatalf("writer: %v", writerErr)
	}

	// The consistency point: freeze (which flushes ext4 to the device), Sync, drain.
	fz, err := freeze.Freeze(context.Background(), []string{mnt}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer fz.Thaw()
	syncTracker(t, tr)
	for i := 0; set.Count() > 0; i++ {
		if i > 1_000_000 {
			t.Fatal("the dirty set does not drain while the filesystem is frozen")
		}
		if _, err := copyDirty(); err != nil {
			t.Fatal(err)
		}
	}
	// Lost events are answered with a RESCAN, as the agent does: send every block
	// whose hash differs from what the replica holds.
	rescanned := 0
	if c := tr.LostDetail(); c != (LostCounts{}) {
		t.Logf("the tracker reports lost events %+v: RESCAN", c)
		err := vol.Scan(context.Background(), testBlock, 0, func(b uint64, data []byte, h uint64) error {
			if held.Matches(b, h) {
				return nil
			}
			rescanned++
			return copyBlock(b, data)
		})
		if err != nil {
			t.Fatal(err)
		}
		if rescanned == 0 {
			t.Logf("the RESCAN found nothing to send (a needless one)")
		}
	}
	// Compare the whole device with the replica.
	witnessed := uint64(stopWitness())
	var sent uint64
	_ = tr.sent.Lookup(uint32(0), &sent)
	seen := sent - sent0 + tr.LostDetail().RingFull - full0
	mismatched, err := differingBlocks(vol, replica)
	if err != nil {
		t.Fatal(err)
	}
	if witnessed > seen {
		// Linux 6.18 sometimes does not run the program at all for a completion (see
		// trackerProgram); nothing the tracker can count shows it. The requests it
		// follows from their issue must have caught it: the replica is still exact.
		t.Logf("KNOWN KERNEL ISSUE: ftrace saw %d write completions, the program ran for %d: %d never reached it; "+
			"%d noticed from a request issued again; %d blocks of the replica differ",
			witnessed, seen, witnessed-seen, tr.Recovered(), len(mismatched))
	}
	if len(mismatched) > 0 {
		syncTracker(t, tr)
		t.Fatalf("%d blocks differ, first %v (after the comparison: %d blocks dirty again, lost %+v; ftrace saw %d completions, the program %d)",
			len(mismatched), mismatched[:min(len(mismatched), 5)], set.Count(), tr.LostDetail(), witnessed, seen)
	}
	if err := fz.Thaw(); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	t.Logf("writer wrote %d MiB through ext4 while the consumer ran %d rounds and copied %d blocks (%d more by a RESCAN); ftrace saw %d write completions, the program %d; replica equals the device",
		wrote.Load()>>20, rounds, copied, rescanned, witnessed, seen)
}

// differingBlocks compares the whole device with the replica.
func differingBlocks(vol *Volume, replica *os.File) ([]uint64, error) {
	var out []uint64
	err := vol.Scan(context.Background(), testBlock, 0, func(b uint64, data []byte, _ uint64) error {
		got := make([]byte, len(data))
		if _, err := replica.ReadAt(got, int64(b)*testBlock); err != nil {
			return err
		}
		if !bytes.Equal(got, data) {
			out = append(out, b)
		}
		return nil
	})
	return out, err
}

// ftraceWitness records, in a tracefs instance of its own, the content-changing
// completions of the device with kernel dev_t kd; the function it returns stops the
// recording and counts them (a lower bound if ftrace's buffer overran).
func ftraceWitness(t *testing.T, kd uint32) func() int {
	t.Helper()
	root := "/sys/kernel/tracing"
	if _, err := os.Stat(filepath.Join(root, "instances")); err != nil {
		testutil.Run(t, "mount", "-t", "tracefs", "tracefs", root)
	}
	inst := filepath.Join(root, "instances", fmt.Sprintf("lifeboat-test-%d", os.Getpid()))
	if err := os.Mkdir(inst, 0o755); err != nil {
		t.Fatalf("tracefs instance: %v", err)
	}
	ev := filepath.Join(inst, "events", "block", "block_rq_complete")
	stop := func() { _ = os.WriteFile(filepath.Join(ev, "enable"), []byte("0"), 0) }
	t.Cleanup(func() {
		stop()
		if err := os.Remove(inst); err != nil {
			t.Errorf("remove tracefs instance: %v", err)
		}
	})
	for _, w := range []struct{ file, val string }{
		{filepath.Join(inst, "buffer_size_kb"), "16384"},
		{filepath.Join(ev, "filter"), fmt.Sprintf("dev == %d", kd)},
		{filepath.Join(ev, "enable"), "1"},
	} {
		if err := os.WriteFile(w.file, []byte(w.val), 0); err != nil {
			t.Fatalf("tracefs %s: %v", w.file, err)
		}
	}
	re := regexp.MustCompile(`block_rq_complete: \d+,\d+ (\S+) \(.*?\) \d+ \+ (\d+)`)
	return func() int {
		stop()
		data, err := os.ReadFile(filepath.Join(inst, "trace"))
		if err != nil {
			t.Fatalf("read tracefs instance: %v", err)
		}
		n := 0
		for _, m := range re.FindAllStringSubmatch(string(data), -1) {
			op := strings.TrimPrefix(m[1], "F")
			if op == "" || op[0] == 'R' || op[0] == 'F' || m[2] == "0" {
				continue
			}
			n++
		}
		return n
	}
}

// TestEBPFIssuedRequestsCatchUnreportedCompletions feeds the reader the events of a
// kernel that did not report some completions: a request issued again without a
// completion, and one still listed at a Sync, are marked anyway; completed ones are
// forgotten.
func TestEBPFIssuedRequestsCatchUnreportedCompletions(t *testing.T) {
	e := &EBPF{log: slog.Default(), flying: map[uint64]*flight{},
		vols:  []volRange{{start: 0, sectors: 1 << 20, blockSize: 4096, blocks: 1 << 17}},
		slots: [][]int{{0}}}
	var marked []uint64
	mark := func(_ int, first, last uint64) {
		for b := first; b <= last; b++ {
			marked = append(marked, b)
		}
	}
	ev := func(issue bool, sector uint64, sectors uint32, rq uint64) {
		raw := make([]byte, eventSize)
		slot := uint32(0)
		if issue {
			slot |= issueBit
		}
		binary.NativeEndian.PutUint32(raw[0:], slot)
		binary.NativeEndian.PutUint32(raw[4:], sectors)
		binary.NativeEndian.PutUint64(raw[8:], sector)
		binary.NativeEndian.PutUint64(raw[16:], rq)
		e.deliver(raw, mark)
	}
	ev(true, 8, 8, 0xA)  // block 1 issued
	ev(false, 8, 8, 0xA) // and completed: marked
	ev(true, 80, 8, 0xA) // block 10 issued; its completion is never reported
	if !slices.Equal(marked, []uint64{1}) || len(e.flying) != 1 {
		t.Fatalf("after a reported completion and an issue: marked %v, %d in flight", marked, len(e.flying))
	}
	ev(true, 160, 16, 0xA) // the same request again: block 10's write completed unreported
	if !slices.Equal(marked, []uint64{1, 10}) || e.Recovered() != 1 {
		t.Fatalf("a request issued again: marked %v, recovered %d", marked, e.Recovered())
	}
	ev(false, 160, 8, 0xA) // a partial completion marks its part and keeps the rest listed
	if !slices.Equal(marked, []uint64{1, 10, 20}) || len(e.flying) != 1 {
		t.Fatalf("a partial completion: marked %v, %d in flight", marked, len(e.flying))
	}
	ev(true, 400, 8, 0xB)
	marked = nil
	e.sweep(mark, true) // a Sync: everything listed is marked and kept
	slices.Sort(marked)
	if !slices.Equal(marked, []uint64{21, 50}) || len(e.flying) != 2 {
		t.Fatalf("a Sync marked %v, %d still in flight", marked, len(e.flying))
	}
	marked = nil
	e.sweep(mark, false) // a second later: they have completed, reported or not
	if len(marked) != 0 || len(e.flying) != 0 {
		t.Fatalf("the next sweep marked %v, %d still in flight", marked, len(e.flying))
	}
	ev(true, 8, 8, 0) // a bio (no request address) is not followed
	if len(e.flying) != 0 || len(marked) != 0 {
		t.Fatalf("a bio issue: marked %v, %d in flight", marked, len(e.flying))
	}
}
