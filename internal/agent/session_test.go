package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// serve runs the session's goroutines around produce instead of its loop.
func serve(t *testing.T, s *session, produce func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.serve(ctx, produce)
}

// runFor runs the session's loop until stop returns true (checked every 10 ms), then
// ends the session as a config change would.
func runFor(t *testing.T, s *session, cfg api.ReplicationConfig, rescan bool, stop func() bool) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ended := cfg
	ended.Control.Desired = api.DesiredPaused
	var mu sync.Mutex
	done := false
	s.opt.Config = func() api.ReplicationConfig {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return ended
		}
		return cfg
	}
	go func() {
		for ctx.Err() == nil && !stop() {
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		done = true
		mu.Unlock()
	}()
	return s.run(ctx, cfg, rescan, rescan)
}

func TestInitialSyncSendsEveryBlockAndPointsSeal(t *testing.T) {
	src := newFakeSource(true, 64, 16)
	for b := uint64(0); b < 64; b += 3 {
		src.write(0, b, byte(b+1))
	}
	src.write(1, 15, 9)
	src.mounts = []string{t.TempDir()}
	link, rep := pipeLink(t, 2)
	s := testSession(src, link, sessionOptions{})
	err := runFor(t, s, testConfig(), true, func() bool { return s.st.lastSealed() != nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.matches(src.contents()); err != nil {
		t.Fatal(err)
	}
	p := s.st.lastSealed()
	if p.Level != consistency.Filesystem || !strings.HasPrefix(p.SnapshotID, "pit-") {
		t.Fatalf("last point %+v, want a filesystem-consistent sealed PIT", p)
	}
	if s.st.lastMatched.IsZero() {
		t.Fatal("the replica matched the source but the lag was never measured")
	}
}

// A dropped link loses nothing: what was acknowledged is in the hash tables, what was
// sent and not acknowledged is dirty again, and the next session (no rescan) sends it.
func TestDroppedLinkRequeuesWhatWasNotAcknowledged(t *testing.T) {
	src := newFakeSource(true, 2048)
	for b := uint64(0); b < 2048; b++ {
		src.write(0, b, byte(b%250+1))
	}
	link, rep := pipeLink(t, 1)
	rep.dropAt = 20 // of the 2048 blocks in batches of ~62, about 1240 arrive
	s := testSession(src, link, sessionOptions{})
	err := runFor(t, s, testConfig(), false, func() bool { return false })
	if err == nil {
		t.Fatal("the session survived a dropped link")
	}
	acked := s.tables[0].Known()
	if acked == 0 || acked >= 2048 {
		t.Fatalf("%d blocks acknowledged before the drop, want some but not all", acked)
	}
	if got := src.Dirty(0) + acked; got != 2048 {
		t.Fatalf("%d dirty + %d acknowledged = %d blocks, want all 2048 accounted for", src.Dirty(0), acked, got)
	}
	link2, rep2 := pipeLink(t, 1)
	s2 := testSession(src, link2, sessionOptions{})
	s2.tables = s.tables
	if err := runFor(t, s2, testConfig(), false, func() bool { return src.Dirty(0) == 0 && s2.backlog() == 0 }); err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < 2048; b++ {
		if rep.block(0, b) == nil && rep2.block(0, b) == nil {
			t.Fatalf("block %d reached neither session's replica", b)
		}
	}
	if s2.tables[0].Known() != 2048 {
		t.Fatalf("the hash table knows %d blocks after the second session, want 2048", s2.tables[0].Known())
	}
}

// A block written again while its first version is in flight is sent again, and an
// acknowledgement of the first version does not make the session forget the second:
// written back to the first content meanwhile, it is sent a third time.
func TestBlockWrittenAgainWhileInFlight(t *testing.T) {
	src := newFakeSource(true, 8)
	link, rep := pipeLink(t, 1)
	rep.holding()
	s := testSession(src, link, sessionOptions{})
	err := serve(t, s, func(ctx context.Context) error {
		send := func(b byte) uint64 {
			src.write(0, 5, b)
			if _, err := s.drain(ctx); err != nil {
				t.Fatal(err)
			}
			seq := s.seq
			eventually(t, "the batch to arrive", func() bool { rep.mu.Lock(); defer rep.mu.Unlock(); return rep.last == seq })
			return seq
		}
		first := send('A')
		send('B')
		rep.ackUpTo(first)
		eventually(t, "the first acknowledgement", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.acked == first })
		last := send('A')
		if last <= first+1 {
			t.Errorf("the block written back to its first content was not sent again (seq %d)", last)
		}
		rep.ackUpTo(last)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.block(0, 5); got == nil || got[0] != 'A' {
		t.Fatalf("the replica holds %q… of block 5, want the last write A", got[:1])
	}
	if h, _ := s.tables[0].Get(5); h != wire.Hash(src.contents()[0][5*testBS:6*testBS]) {
		t.Fatal("the hash table does not hold the hash of the last version")
	}
}

// Every PIT holds exactly the blocks written before its freeze, however the writes
// race the points: those written after the drain that precedes the freeze are in it,
// those written right after the thaw are not.
func TestPITsHoldOnlyWritesBeforeTheirFreeze(t *testing.T) {
	src := newFakeSource(true, 256)
	src.mounts = []string{t.TempDir()}
	var n byte
	src.beforeFreeze = func() { n++; src.write(0, uint64(n), n) }
	src.afterThaw = func() { src.write(0, uint64(n)+1, n) }
	var mu sync.Mutex
	frozen := map[uint64][][]byte{} // freeze number → the volumes then
	src.onFreeze = func(vols [][]byte) {
		mu.Lock()
		frozen[uint64(len(frozen)+1)] = vols
		mu.Unlock()
	}
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{})
	stop := make(chan struct{})
	var writes sync.WaitGroup
	writes.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			src.write(0, uint64(i*37%256), byte(i))
			if i%16 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	err := runFor(t, s, testConfig(), true, func() bool { return src.freezes.Load() >= 20 })
	close(stop)
	writes.Wait()
	if err != nil {
		t.Fatal(err)
	}
	rep.mu.Lock()
	defer rep.mu.Unlock()
	if len(rep.pits) < 10 {
		t.Fatalf("%d PITs sealed, want at least 10", len(rep.pits))
	}
	for id, pit := range rep.pits {
		if frozen[id] == nil {
			t.Fatalf("PIT %d has no freeze", id)
		}
		if err := sameBlocks(pit, frozen[id]); err != nil {
			t.Errorf("PIT %d differs from the volume at its freeze: %v", id, err)
		}
	}
}

// The bandwidth limit holds: 2 MiB at 16 Mbit/s takes about a second, less the burst.
func TestBandwidthLimit(t *testing.T) {
	src := newFakeSource(true, 512)
	rnd := rand.New(rand.NewPCG(1, 2))
	for b := uint64(0); b < 512; b++ {
		data := make([]byte, testBS)
		for i := range data {
			data[i] = byte(rnd.Uint32())
		}
		src.writeData(0, b, data)
	}
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{})
	s.setBandwidth(16)
	start := time.Now()
	err := serve(t, s, func(ctx context.Context) error {
		for src.Dirty(0) > 0 {
			if _, err := s.drain(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sent := s.st.sentBytes.Load()
	if sent != 512*testBS {
		t.Fatalf("sent %d bytes, want %d", sent, 512*testBS)
	}
	// The limit counts frames (compressed): they take at least their size, less one
	// burst, at 2 MB/s.
	rep.mu.Lock()
	framed := rep.payload
	rep.mu.Unlock()
	least := time.Duration(float64(framed-s.limiter.Burst()) / 2e6 * float64(time.Second))
	if took := time.Since(start); took < least || least < 500*time.Millisecond {
		t.Fatalf("%d frame bytes took %s at 16 Mbit/s, at least %s expected", framed, took, least)
	}
}

// Lost tracker events end the session with TRACKER_EVENTS_LOST and ask for a rescan.
func TestLostEventsAskForARescan(t *testing.T) {
	src := newFakeSource(true, 16)
	link, _ := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{})
	go func() {
		time.Sleep(100 * time.Millisecond)
		src.lost.Add(3)
	}()
	err := runFor(t, s, testConfig(), false, func() bool { return false })
	var se *sessionError
	if !errors.As(err, &se) || se.code != api.ErrTrackerEventsLost || se.state != api.StateRescan {
		t.Fatalf("session ended with %v, want %s in state %s", err, api.ErrTrackerEventsLost, api.StateRescan)
	}
	if !strings.Contains(s.rescanWhy, "lost 3 events") {
		t.Fatalf("the next session is not asked to rescan (%q)", s.rescanWhy)
	}
}

// A pre-freeze hook that hangs is given up within the hook timeout: the point is taken
// without a freeze (crash-consistent: no write completes meanwhile), the state says why,
// and replication goes on.
func TestHookThatHangsGivesACrashPoint(t *testing.T) {
	src := newFakeSource(true, 16)
	src.mounts = []string{t.TempDir()}
	link, rep := pipeLink(t, 1)
	s := testSession(src, link, sessionOptions{PreFreeze: "sleep 30", HookTimeout: 50 * time.Millisecond})
	start := time.Now()
	err := runFor(t, s, testConfig(), false, func() bool {
		src.write(0, 3, 7)
		st, _ := s.st.snapshot(time.Now(), 0)
		return st.Error != nil && rep.block(0, 3) != nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("the session waited %s for a hook bounded at 50 ms", took)
	}
	st, _ := s.st.snapshot(time.Now(), 0)
	if st.Error == nil || st.Error.Code != api.ErrPointsCrashConsistent || !strings.Contains(st.Error.Message, "did not finish within") {
		t.Fatalf("error %+v, want %s about the hook's timeout", st.Error, api.ErrPointsCrashConsistent)
	}
	if n := src.freezes.Load(); n != 0 {
		t.Fatalf("%d freezes after a failed pre-freeze hook", n)
	}
	for _, l := range rep.levels() {
		if l == consistency.Filesystem {
			t.Fatal("a PIT taken without its hook is marked filesystem-consistent")
		}
	}
}

// TestHookTimeoutKillsTheHooksChildren: a hook that times out is killed with every
// process it started, so none of them keeps the volume's files open.
func TestHookTimeoutKillsTheHooksChildren(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	s := testSession(newFakeSource(true, 1), nil, sessionOptions{
		PreFreeze:   "sleep 30 & echo $! > " + pidFile + "; wait",
		HookTimeout: 300 * time.Millisecond,
	})
	err := s.hook(t.Context(), "pre-freeze", s.opt.PreFreeze, nil)
	if err == nil || !strings.Contains(err.Error(), "did not finish within") {
		t.Fatalf("hook error %v, want a timeout", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the hook's child %d outlived the hook's timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive says whether pid runs (a zombie, reparented and not yet reaped, does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
