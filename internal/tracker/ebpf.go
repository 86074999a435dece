package tracker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// EBPFVolume is a volume for the eBPF tracker to watch.
type EBPFVolume struct {
	// Dev is the kernel's dev_t of the volume's block device: major<<20 | minor (see
	// KernelDev). A partition is handled: its writes are reported by the kernel against
	// the whole disk, and the tracker maps them back.
	Dev uint32
	// Blocks and BlockSize give the volume's size in the agent's blocks.
	Blocks    uint64
	BlockSize int
}

// EBPFOption adjusts NewEBPF.
type EBPFOption func(*ebpfConfig)

type ebpfConfig struct {
	ringSize int
	log      *slog.Logger
}

// DefaultRingSize is the default size of the ring buffer between the eBPF program and
// the agent: 4 MiB, about 170,000 writes before one is lost while the agent is not
// reading.
const DefaultRingSize = 4 << 20

// WithRingSize sets the size in bytes of the ring buffer (rounded up to a power of two
// and at least one page). A full ring buffer loses events, which Lost counts.
func WithRingSize(bytes int) EBPFOption {
	return func(c *ebpfConfig) { c.ringSize = bytes }
}

// WithLogger sets where the tracker logs.
func WithLogger(l *slog.Logger) EBPFOption {
	return func(c *ebpfConfig) { c.log = l }
}

// KernelDev returns the kernel's dev_t (major<<20 | minor, as block tracepoints report
// it) of the block device at path.
func KernelDev(path string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, fmt.Errorf("%s is not a block device: the eBPF tracker watches block devices only (use the scan tracker for image files)", path)
	}
	return kdev(unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
}

func kdev(major, minor uint32) uint32 { return major<<20 | minor&(1<<20-1) }

// event is what the eBPF program writes into the ring buffer for each completed write
// to a watched disk, and for each write request issued to it: 24 bytes, native byte
// order.
//
//	 0 u32 disk slot, with issueBit set for an issue
//	 4 u32 number of 512-byte sectors
//	 8 u64 first sector, counted from the start of the whole disk
//	16 u64 the request's address (0 for a bio), which pairs an issue with its completion
const eventSize = 24

const issueBit = 1 << 31

// Event kinds, also the keys of the sent counters.
const (
	kindComplete = 0
	kindIssue    = 1
)

// pollInterval is how often Run reads the ring buffer. The program does not wake the
// reader for each event (a wake-up is an inter-processor interrupt, which in a VM
// costs more than the rest of the program); Sync wakes it at once.
const pollInterval = 50 * time.Millisecond

// volRange is where a volume lies on its disk, in sectors.
type volRange struct {
	start, sectors uint64
	blockSize      uint64
	blocks         uint64
}

// EBPF is the eBPF change tracker: a program on the block layer's completion
// tracepoints (block:block_rq_complete for request-based devices such as loop, virtio,
// SCSI and NVMe; block:block_bio_complete for bio-based ones such as device-mapper or
// zram) that reports every completed write, discard, write-zeroes or other
// content-changing request to a watched disk through a BPF ring buffer. When the ring
// buffer is full the program counts the event as lost instead; the agent answers lost
// events with a RESCAN.
//
// Marks are a superset of the blocks that changed: a write that completes with an
// error is marked too (it may have changed some of its sectors), and a request that
// straddles a block boundary marks both blocks.
//
// Some kernels do not run the program for a few completions (see the known issue at
// trackerProgram). So the tracker also watches block:block_rq_issue and keeps the
// write requests in flight: a request issued again while its last issue has no
// completion, or one still in flight at a Sync or after a second, is marked anyway.
// At a consistency point the filesystems are frozen, every write has completed, and
// Sync marks whatever is still listed: the dirty sets are complete even then.
type EBPF struct {
	log   *slog.Logger
	vols  []volRange
	slots [][]int // disk slot → indices of the volumes on that disk

	devs, ring, lost *ebpf.Map
	sent             *ebpf.Map // events the program submitted to the ring buffer, by kind
	read             uint64    // events Run read from the ring buffer (Run's goroutine)
	undelivered      atomic.Uint64
	progs            []*ebpf.Program
	completionProgs  []*ebpf.Program // the programs whose skipped runs lose writes

	// Write requests issued and not seen completing, by address (Run's goroutine).
	flying      map[uint64]*flight
	lastSweep   time.Time
	recovered   atomic.Uint64 // completions the kernel did not report, marked from issues
	links       []link.Link
	rd          *ringbuf.Reader
	tracepoints []string

	mu      sync.Mutex
	running bool
	closed  bool
	waiters []chan error
}

var _ Tracker = (*EBPF)(nil)

// flight is a write request issued to a watched disk and not seen completing.
type flight struct {
	slot        uint32
	sector, end uint64
	swept       bool // marked once by a sweep already
}

// sweepEvery is how often Run marks the requests still in flight: a completion the
// kernel did not report is marked within about two of these.
const sweepEvery = time.Second

// NewEBPF loads the tracker for the given volumes and attaches it; events are recorded
// from then on, and delivered once Run is called. When the tracker cannot run here the
// error says why (not root, kernel too old, tracepoint missing, verifier refusal), for
// the agent to fall back to the scan tracker and report the reason.
func NewEBPF(vols []EBPFVolume, opts ...EBPFOption) (*EBPF, error) {
	cfg := ebpfConfig{ringSize: DefaultRingSize, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&cfg)
	}
	if len(vols) == 0 {
		return nil, errors.New("ebpf tracker: no volumes to watch")
	}
	e := &EBPF{log: cfg.log, flying: map[uint64]*flight{}}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()

	keys, err := e.addVolumes(vols)
	if err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("ebpf tracker: raise the locked-memory limit (RLIMIT_MEMLOCK) for eBPF maps: %w", err)
	}
	layouts, err := readKernelLayouts()
	if err != nil {
		return nil, fmt.Errorf("ebpf tracker: kernel %s: %w", kernelRelease(), err)
	}
	if layouts.bioErr != nil {
		cfg.log.Warn("ebpf tracker: writes to bio-based devices (device-mapper, md, zram) will not be seen", "err", layouts.bioErr)
	}
	if layouts.issueErr != nil {
		cfg.log.Warn("ebpf tracker: write requests are not followed from their issue, so a completion the kernel fails to report is caught by the periodic verification pass only", "err", layouts.issueErr)
	}
	ringSize := max(cfg.ringSize, os.Getpagesize())
	ringSize = 1 << bits.Len(uint(ringSize-1))
	if err := e.createMaps(keys, ringSize); err != nil {
		return nil, fmt.Errorf("ebpf tracker: %w", err)
	}
	for _, l := range []*completionLayout{layouts.rq, layouts.bio, layouts.issue} {
		if l == nil {
			continue
		}
		if err := e.attach(l); err != nil {
			return nil, fmt.Errorf("ebpf tracker: %w", err)
		}
	}
	e.rd, err = ringbuf.NewReader(e.ring)
	if err != nil {
		return nil, fmt.Errorf("ebpf tracker: open the ring buffer: %w", err)
	}
	ok = true
	cfg.log.Info("ebpf tracker attached", "tracepoints", e.tracepoints, "disks", len(e.slots),
		"volumes", len(vols), "ring_bytes", ringSize)
	return e, nil
}

// addVolumes finds the disk each volume lies on and where: it returns the device
// numbers the program watches (disks, and bio-based partitions) and their disk slots.
func (e *EBPF) addVolumes(vols []EBPFVolume) (map[uint32]uint32, error) {
	keys := map[uint32]uint32{} // dev_t → slot
	listed := map[uint32]bool{}
	for i, v := range vols {
		if v.BlockSize < 512 || v.BlockSize%512 != 0 {
			return nil, fmt.Errorf("ebpf tracker: volume %d: block size %d is not a multiple of 512", i, v.BlockSize)
		}
		if v.Dev == 0 {
			return nil, fmt.Errorf("ebpf tracker: volume %d has no device number", i)
		}
		disk, start, err := diskOf(v.Dev)
		if err != nil {
			return nil, fmt.Errorf("ebpf tracker: volume %d: %w", i, err)
		}
		slot, seen := keys[disk]
		if !seen {
			slot = uint32(len(e.slots))
			e.slots = append(e.slots, nil)
			keys[disk] = slot
		}
		if listed[v.Dev] {
			return nil, fmt.Errorf("ebpf tracker: volume %d: device %d:%d is listed twice", i, v.Dev>>20, v.Dev&(1<<20-1))
		}
		listed[v.Dev] = true
		// A bio-based partition reports its own dev_t, with sectors already made
		// absolute by the block layer's partition remap.
		keys[v.Dev] = slot
		e.slots[slot] = append(e.slots[slot], i)
		e.vols = append(e.vols, volRange{
			start:     start,
			sectors:   v.Blocks * uint64(v.BlockSize) / 512,
			blockSize: uint64(v.BlockSize),
			blocks:    v.Blocks,
		})
	}
	return keys, nil
}

// createMaps creates the program's maps: the watched devices, the ring buffer, and the
// lost and sent counters.
func (e *EBPF) createMaps(keys map[uint32]uint32, ringSize int) error {
	var err error
	e.devs, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "lb_devs", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: uint32(len(keys)),
	})
	if err != nil {
		return fmt.Errorf("create the device map: %w", explainPerm(err))
	}
	for dev, slot := range keys {
		if err := e.devs.Put(dev, slot); err != nil {
			return fmt.Errorf("fill the device map: %w", err)
		}
	}
	e.ring, err = ebpf.NewMap(&ebpf.MapSpec{Name: "lb_events", Type: ebpf.RingBuf, MaxEntries: uint32(ringSize)})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("kernel %s is too old: the BPF ring buffer needs Linux 5.8 or later: %w", kernelRelease(), err)
		}
		return fmt.Errorf("create the ring buffer: %w", explainPerm(err))
	}
	e.lost, err = ebpf.NewMap(&ebpf.MapSpec{Name: "lb_lost", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create the lost-events counter: %w", explainPerm(err))
	}
	e.sent, err = ebpf.NewMap(&ebpf.MapSpec{Name: "lb_sent", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		return fmt.Errorf("create the event counter: %w", explainPerm(err))
	}
	return nil
}

// attach loads the program for one tracepoint and attaches it.
func (e *EBPF) attach(l *completionLayout) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "lb_" + strings.TrimPrefix(l.tracepoint, "block_"),
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     l.tracepoint,
		License:      "Dual MIT/GPL",
		Instructions: trackerProgram(l, e.devs.FD(), e.ring.FD(), e.lost.FD(), e.sent.FD()),
	})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("the kernel's verifier refused the program for %s: %w", l.tracepoint, err)
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("kernel %s cannot attach eBPF to raw tracepoint %s (BTF-enabled raw tracepoints need Linux 5.5 or later): %w", kernelRelease(), l.tracepoint, err)
		}
		return fmt.Errorf("load the program for %s: %w", l.tracepoint, explainPerm(err))
	}
	e.progs = append(e.progs, prog)
	if !l.issue {
		e.completionProgs = append(e.completionProgs, prog)
	}
	lk, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		return fmt.Errorf("attach to tracepoint block:%s: %w", l.tracepoint, explainPerm(err))
	}
	e.links = append(e.links, lk)
	e.tracepoints = append(e.tracepoints, "block:"+l.tracepoint)
	return nil
}

// trackerProgram returns the eBPF program for one block completion tracepoint, attached
// as a BTF raw tracepoint (tp_btf): its context is the tracepoint's arguments, and it
// reads the kernel's structures directly at offsets taken from the kernel's BTF. For
// block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes) it
// reads, in C:
//
//	nr = nr_bytes >> 9; if (nr == 0) return 0;
//	op = rq->cmd_flags & REQ_OP_MASK; if (op is not content-changing) return 0;
//	dev = rq->q->disk->major << 20 | rq->q->disk->first_minor;
//	slot = bpf_map_lookup_elem(&devs, &dev); if (!slot) return 0;
//	ev = bpf_ringbuf_reserve(&ring, 16, 0);
//	if (!ev) { __sync_fetch_and_add(bpf_map_lookup_elem(&lost, &zero), 1); return 0; }
//	ev->slot = *slot; ev->nr = nr; ev->sector = rq->__sector;
//	bpf_ringbuf_submit(ev, 0);
//
// and for block_bio_complete(struct request_queue *q, struct bio *bio) the same with
// bio->bi_iter.bi_size, bio->bi_opf, bio->bi_bdev->bd_dev and bio->bi_iter.bi_sector.
// For block_rq_issue(struct request *rq) the length is rq->__data_len and the event
// is flagged as an issue. Request events carry the request's address.
//
// A BTF raw tracepoint needs no tracefs and no perf event, and reads the request
// itself rather than a copy of it.
//
// Known issue (Linux 6.18.44, Firecracker VM): on rare occasions the kernel does not run
// the program at all for completions handled in a softirq on top of some tasks (seen:
// the threads of the VM's PID 1), while ftrace records them; neither the recursion
// counter nor the ring buffer counters see it. Both this and a perf-event tracepoint
// program show it. The issue events catch these (see EBPF); see also
// TestEBPFReplicaEqualsDevice and the agent's periodic verification pass.
func trackerProgram(l *completionLayout, devs, ring, lost, sent int) asm.Instructions {
	load := func(dst, src asm.Register, f field) asm.Instruction {
		size := map[int]asm.Size{1: asm.Byte, 2: asm.Half, 4: asm.Word, 8: asm.DWord}[f.size]
		return asm.LoadMem(dst, src, f.off, size)
	}
	insns := asm.Instructions{
		// R6 = the request or bio.
		asm.LoadMem(asm.R6, asm.R1, int16(8*l.objArg), asm.DWord),
	}
	kind := int32(kindComplete)
	if l.issue {
		kind = kindIssue
	}
	// R7 = length in sectors.
	if l.bytesArg >= 0 {
		insns = append(insns,
			asm.LoadMem(asm.R7, asm.R1, int16(8*l.bytesArg), asm.DWord),
			asm.Mov.Reg32(asm.R7, asm.R7),
		)
	} else {
		insns = append(insns, load(asm.R7, asm.R6, l.size))
	}
	insns = append(insns,
		asm.RSh.Imm(asm.R7, 9),
		asm.JEq.Imm(asm.R7, 0, "exit"),
		load(asm.R2, asm.R6, l.opFlags),
		asm.And.Imm(asm.R2, reqOpMask),
	)
	for _, op := range l.markOps {
		insns = append(insns, asm.JEq.Imm(asm.R2, int32(op), "mark"))
	}
	insns = append(insns, asm.Ja.Label("exit"))
	// R8 = first sector; R4 = dev_t.
	insns = append(insns, load(asm.R8, asm.R6, l.sector).WithSymbol("mark"))
	if l.request {
		insns = append(insns,
			load(asm.R3, asm.R6, l.q),
			asm.JEq.Imm(asm.R3, 0, "exit"),
			load(asm.R3, asm.R3, l.disk),
			asm.JEq.Imm(asm.R3, 0, "exit"),
			load(asm.R4, asm.R3, l.major),
			load(asm.R5, asm.R3, l.minor),
			asm.LSh.Imm(asm.R4, 20),
			asm.Or.Reg(asm.R4, asm.R5),
		)
	} else {
		insns = append(insns,
			load(asm.R3, asm.R6, l.bdev),
			asm.JEq.Imm(asm.R3, 0, "exit"),
			load(asm.R4, asm.R3, l.bdDev),
		)
	}
	insns = append(insns,
		asm.StoreMem(asm.RFP, -4, asm.R4, asm.Word),
		asm.LoadMapPtr(asm.R1, devs),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "exit"),
		asm.LoadMem(asm.R9, asm.R0, 0, asm.Word),
	)
	if l.issue {
		insns = append(insns, asm.Or.Imm32(asm.R9, -1<<31)) // issueBit
	}
	insns = append(insns,
		asm.JEq.Imm(asm.R7, 0, "exit"),
		asm.LoadMapPtr(asm.R1, ring),
		asm.Mov.Imm(asm.R2, eventSize),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
	)
	if l.issue {
		// A lost issue loses no write (its completion marks the blocks): not counted.
		insns = append(insns, asm.JEq.Imm(asm.R0, 0, "exit"))
	} else {
		insns = append(insns, asm.JEq.Imm(asm.R0, 0, "lost"))
	}
	insns = append(insns,
		asm.StoreMem(asm.R0, 0, asm.R9, asm.Word),
		asm.StoreMem(asm.R0, 4, asm.R7, asm.Word),
		asm.StoreMem(asm.R0, 8, asm.R8, asm.DWord),
	)
	if l.request {
		insns = append(insns, asm.StoreMem(asm.R0, 16, asm.R6, asm.DWord))
	} else {
		insns = append(insns, asm.Mov.Imm(asm.R1, 0), asm.StoreMem(asm.R0, 16, asm.R1, asm.DWord))
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R2, 1), // BPF_RB_NO_WAKEUP: Run polls (see pollInterval)
		asm.FnRingbufSubmit.Call(),
	)
	insns = append(insns, countInsns(sent, kind)...)
	if !l.issue {
		lostCount := countInsns(lost, 0)
		lostCount[0] = lostCount[0].WithSymbol("lost")
		insns = append(append(insns, asm.Ja.Label("exit")), lostCount...)
	}
	return append(insns,
		asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
		asm.Return(),
	)
}

// countInsns adds one to element key of the u64 array map m (its jumps go to "exit").
func countInsns(m int, key int32) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -8, int64(key), asm.Word),
		asm.LoadMapPtr(asm.R1, m),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "exit"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
	}
}

// diskOf returns the whole disk holding the block device dev (dev itself unless it is a
// partition) and the device's first sector on that disk, from sysfs.
func diskOf(dev uint32) (disk uint32, start uint64, err error) {
	major, minor := dev>>20, dev&(1<<20-1)
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	if _, err := os.Stat(dir); err != nil {
		return 0, 0, fmt.Errorf("block device %d:%d: %w", major, minor, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err != nil {
		return dev, 0, nil
	}
	s, err := readSysUint(filepath.Join(dir, "start"))
	if err != nil {
		return 0, 0, fmt.Errorf("partition %d:%d: %w", major, minor, err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("partition %d:%d: %w", major, minor, err)
	}
	parent, err := os.ReadFile(filepath.Join(filepath.Dir(real), "dev"))
	if err != nil {
		return 0, 0, fmt.Errorf("disk of partition %d:%d: %w", major, minor, err)
	}
	pmaj, pmin, ok := strings.Cut(strings.TrimSpace(string(parent)), ":")
	a, err1 := strconv.ParseUint(pmaj, 10, 32)
	b, err2 := strconv.ParseUint(pmin, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("disk of partition %d:%d: bad device number %q", major, minor, parent)
	}
	return kdev(uint32(a), uint32(b)), s, nil
}

func readSysUint(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "(unknown)"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// explainPerm adds what to do to a permission error.
func explainPerm(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w (the eBPF tracker needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN for tracefs)", err)
	}
	return err
}

// Name returns NameEBPF.
func (e *EBPF) Name() string { return NameEBPF }

// Tracepoints returns the tracepoints the program is attached to.
func (e *EBPF) Tracepoints() []string { return append([]string(nil), e.tracepoints...) }

// Run reads the ring buffer and calls mark for every block range written, from the
// calling goroutine, until ctx ends (it returns ctx's error) or the tracker is closed
// (it returns nil). It may be called once.
func (e *EBPF) Run(ctx context.Context, mark func(volume int, first, last uint64)) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return errors.New("ebpf tracker: Run after Close")
	}
	if e.running {
		e.mu.Unlock()
		return errors.New("ebpf tracker: Run called twice")
	}
	e.running = true
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.running = false
		ws := e.waiters
		e.waiters = nil
		e.mu.Unlock()
		for _, w := range ws {
			w <- errors.New("ebpf tracker stopped before the sync completed")
		}
	}()

	stop := context.AfterFunc(ctx, func() { _ = e.rd.Flush() })
	defer stop()

	var rec ringbuf.Record
	for {
		e.rd.SetDeadline(time.Now().Add(pollInterval))
		err := e.rd.ReadInto(&rec)
		switch {
		case err == nil:
			e.deliver(rec.RawSample, mark)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Polled: the events up to now were read.
			if time.Since(e.lastSweep) >= sweepEvery {
				e.sweep(mark, false)
			}
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := e.serveSyncs(mark); err != nil {
				return err
			}
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("ebpf tracker: read the ring buffer: %w", err)
		}
	}
}

// serveSyncs answers the pending Sync calls: it takes them, then drains the ring buffer
// to its end, which holds every event of a write completed before they were called.
func (e *EBPF) serveSyncs(mark func(int, uint64, uint64)) error {
	for {
		e.mu.Lock()
		ws := e.waiters
		e.waiters = nil
		e.mu.Unlock()
		if len(ws) == 0 {
			return nil
		}
		// Every event counted in sent before the drain is committed to the ring
		// buffer, so the drain reads it: fewer reads mean the ring lost events.
		sent, sentErr := e.sentEvents()
		if err := e.drain(mark); err != nil {
			for _, w := range ws {
				w <- err
			}
			return err
		}
		// Requests still in flight may have completed unreported: at a consistency
		// point (filesystems frozen) every one of them has.
		e.sweep(mark, true)
		if sentErr == nil && sent > e.read {
			if miss := sent - e.read; miss > e.undelivered.Load() {
				e.undelivered.Store(miss)
			}
		}
		for _, w := range ws {
			w <- nil
		}
	}
}

// drain reads every event in the ring buffer now, without waiting for more.
func (e *EBPF) drain(mark func(int, uint64, uint64)) error {
	var rec ringbuf.Record
	e.rd.SetDeadline(time.Unix(1, 0)) // in the past: never wait
	defer e.rd.SetDeadline(time.Time{})
	for {
		err := e.rd.ReadInto(&rec)
		switch {
		case err == nil:
			e.deliver(rec.RawSample, mark)
		case errors.Is(err, ringbuf.ErrFlushed):
			// Another Sync arrived; serveSyncs takes it next.
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil
		case errors.Is(err, ringbuf.ErrClosed):
			return errors.New("ebpf tracker closed during a sync")
		default:
			return fmt.Errorf("ebpf tracker: read the ring buffer: %w", err)
		}
	}
}

// sentEvents returns how many events the program submitted, of both kinds.
func (e *EBPF) sentEvents() (uint64, error) {
	var total uint64
	for _, k := range []uint32{kindComplete, kindIssue} {
		var n uint64
		if err := e.sent.Lookup(k, &n); err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// deliver turns one event into marks of the volumes it touches, or (an issue) into a
// request in flight.
func (e *EBPF) deliver(raw []byte, mark func(int, uint64, uint64)) {
	e.read++
	if len(raw) < eventSize {
		return
	}
	slot := binary.NativeEndian.Uint32(raw[0:])
	issue := slot&issueBit != 0
	slot &^= issueBit
	nr := uint64(binary.NativeEndian.Uint32(raw[4:]))
	sector := binary.NativeEndian.Uint64(raw[8:])
	rq := binary.NativeEndian.Uint64(raw[16:])
	if int(slot) >= len(e.slots) {
		return
	}
	end := sector + nr
	if end < sector {
		end = ^uint64(0)
	}
	f := e.flying[rq]
	switch {
	case issue && rq == 0:
		return
	case issue:
		// A request is issued again only after it completed (or was requeued): if its
		// completion was not seen, the kernel did not report it.
		if f != nil {
			e.recovered.Add(1)
			e.markRange(f.slot, f.sector, f.end, mark)
		}
		e.flying[rq] = &flight{slot: slot, sector: sector, end: end}
		return
	case rq == 0:
	case f != nil && end >= f.end:
		delete(e.flying, rq)
	case f != nil:
		f.sector = end // a partial completion; the rest follows
	}
	e.markRange(slot, sector, end, mark)
}

// sweep marks the write requests still in flight. At a Sync (all) every one is
// marked and kept; otherwise those marked by the previous sweep are dropped (a second
// has passed: they completed, reported or not) and the others marked.
func (e *EBPF) sweep(mark func(int, uint64, uint64), all bool) {
	e.lastSweep = time.Now()
	n := 0
	for rq, f := range e.flying {
		if f.swept && !all {
			delete(e.flying, rq)
			continue
		}
		f.swept = true
		e.markRange(f.slot, f.sector, f.end, mark)
		n++
	}
	if n > 0 {
		e.log.Debug("ebpf tracker: marked write requests without a completion", "requests", n, "sync", all)
	}
}

// Recovered returns how many completions the kernel did not report that the tracker
// noticed from a request issued again.
func (e *EBPF) Recovered() uint64 { return e.recovered.Load() }

// markRange marks the blocks of the volumes that sectors [sector, end) of a disk touch.
func (e *EBPF) markRange(slot uint32, sector, end uint64, mark func(int, uint64, uint64)) {
	for _, vi := range e.slots[slot] {
		v := e.vols[vi]
		lo, hi := max(sector, v.start), min(end, v.start+v.sectors)
		if lo >= hi {
			continue
		}
		first := (lo - v.start) * 512 / v.blockSize
		last := ((hi-v.start)*512 - 1) / v.blockSize
		mark(vi, first, min(last, v.blocks-1))
	}
}

// Sync returns once every write that completed before Sync was called has been passed
// to mark by Run. At a consistency point the agent calls it after the freeze: the
// filesystems have written everything, so the dirty sets are then complete.
func (e *EBPF) Sync(ctx context.Context) error {
	ch := make(chan error, 1)
	e.mu.Lock()
	if !e.running {
		e.mu.Unlock()
		return errors.New("ebpf tracker: Sync needs Run to be running")
	}
	e.waiters = append(e.waiters, ch)
	e.mu.Unlock()
	if err := e.rd.Flush(); err != nil {
		return fmt.Errorf("ebpf tracker: wake the reader: %w", err)
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("ebpf tracker: sync: %w", ctx.Err())
	}
}

// Lost returns how many write completions the tracker may have missed so far (the sum
// of LostDetail's counts). Any increase means some writes may not have been marked:
// the agent answers with a RESCAN. Call it after Sync.
func (e *EBPF) Lost() uint64 {
	c := e.LostDetail()
	return c.RingFull + c.Skipped + c.Undelivered
}

// LostCounts are the ways a write completion can escape the tracker.
type LostCounts struct {
	// RingFull: events the program dropped because the ring buffer was full.
	RingFull uint64
	// Skipped: completions (of any device) for which the kernel did not run the
	// program because it was already running on that CPU (counted by the kernel).
	Skipped uint64
	// Undelivered: events the program submitted that the reader never got (checked
	// at each Sync).
	Undelivered uint64
}

// LostDetail returns the counts behind Lost.
func (e *EBPF) LostDetail() LostCounts {
	var c LostCounts
	if e.lost != nil {
		_ = e.lost.Lookup(uint32(0), &c.RingFull)
	}
	for _, p := range e.completionProgs {
		if st, err := p.Stats(); err == nil {
			c.Skipped += st.RecursionMisses
		}
	}
	c.Undelivered = e.undelivered.Load()
	return c
}

// Close detaches the program and frees the maps. A Run in progress returns nil.
func (e *EBPF) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	var errs []error
	for _, l := range e.links {
		errs = append(errs, l.Close())
	}
	if e.rd != nil {
		errs = append(errs, e.rd.Close())
	}
	for _, p := range e.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range []*ebpf.Map{e.devs, e.ring, e.lost, e.sent} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ebpf tracker: close: %w", err)
	}
	return nil
}
