package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/freeze"
)

// codeHookFailed reports a pre-freeze or post-thaw hook that failed.
const codeHookFailed = "HOOK_FAILED"

// pointSkipBacklog is the backlog above which a point waits: what is dirty is read
// while frozen, and the freeze must stay short.
const pointSkipBacklog = 64 << 20

// point takes a consistency point, in these steps (docs/architecture.md §3):
//
//  1. mounts: the filesystems to freeze (none: the point has level none, unfrozen);
//  2. the pre-freeze hook (one that fails or hangs skips the point);
//  3. presync: write back and send what the filesystems hold, outside the window;
//  4. freeze;
//  5. collect every block changed before the freeze, read while frozen;
//  6. thaw;
//  7. send what was collected, then the marker after it: the PIT holds exactly the
//     blocks written before the freeze;
//  8. the post-thaw hook.
//
// When the filesystems cannot be frozen (none is mounted, the freeze fails, or the
// pre-freeze hook does), the point is taken without a freeze instead (crashPoint).
//
// A point that fails puts back what it collected and is retried at the next interval;
// only an error that ends the session is returned.
func (s *session) point(ctx context.Context, bound time.Duration) error {
	if s.dirtyBytes() > pointSkipBacklog {
		return nil
	}
	level := consistency.Filesystem
	mounts, whyNot := s.src.Mounts()
	if whyNot != nil {
		return s.crashPoint(ctx, bound, "", "") // nothing to freeze: the levels say what the points are
	}
	if err := s.hook(ctx, "pre-freeze", s.opt.PreFreeze, mounts); err != nil {
		return s.crashPoint(ctx, bound, codeHookFailed, err.Error())
	}
	defer s.postThaw(ctx, mounts)
	if err := s.presync(ctx, mounts); err != nil {
		return err
	}
	fr, err := s.src.Freeze(ctx, mounts, bound)
	if err != nil {
		return s.crashPoint(ctx, bound, api.ErrFreezeFailed, "the filesystems could not be frozen: "+err.Error())
	}
	at := time.Now()
	tFreeze := fr.Elapsed() // the FIFREEZEs
	if s.opt.FreezeHold > 0 {
		sleep(ctx, s.opt.FreezeHold)
	}
	got, tSync, tRead, readErr := s.collect(ctx, bound, s.windowLimit(bound))
	freezeMs, thawErr := s.thaw(fr)
	if errors.Is(readErr, errWindowTooLarge) {
		s.windowRetries++
		s.log.Debug("consistency point given up: too much to read under the freeze; tried again soon",
			"dirty_blocks", s.dirtyBytes()/int64(s.bs), "freeze_ms", freezeMs, "attempt", s.windowRetries)
		return nil
	}
	s.windowRetries = 0
	if len(got) > 0 && tRead > 0 {
		per := tRead / time.Duration(len(got))
		if s.readPerBlock == 0 {
			s.readPerBlock = per
		}
		s.readPerBlock += (per - s.readPerBlock) / 5
	}
	whyNot = nil
	var nc *freeze.NotConsistentError
	switch {
	case errors.As(thawErr, &nc):
		level, whyNot = consistency.None, thawErr
	case thawErr != nil && readErr == nil:
		readErr = thawErr
	}
	if readErr == nil {
		readErr = ctx.Err()
	}
	if readErr != nil {
		s.putBack(got)
		s.setPointErr(&api.ReplicationError{Code: api.ErrFreezeFailed,
			Message: "a consistency point failed while reading the volumes: " + readErr.Error()})
		return nil
	}
	if err := s.sendCollected(ctx, got); err != nil {
		return err
	}
	if level == consistency.None {
		s.setPointErr(&api.ReplicationError{Code: api.ErrFreezeFailed,
			Message: fmt.Sprintf("the consistency point took longer than the freeze bound (%s): %v; it is kept as level none", bound, whyNot)})
	}
	if err := s.mark(ctx, at, level, freezeMs, ""); err != nil {
		return err
	}
	if len(got) == 0 {
		s.matched(at)
	}
	s.lastFreeze = fr.Elapsed()
	s.log.Debug("consistency point", "level", level.String(), "freeze_ms", freezeMs, "fifreeze_ms", ms(tFreeze),
		"tracker_sync_ms", ms(tSync), "read_ms", ms(tRead), "blocks", len(got), "reason", whyNot)
	return nil
}

// crashPoint takes a point without a freeze: there is no filesystem to freeze (code
// is empty), or the freeze could not be had (code and why say what went wrong). It reads every block dirty at its start; if no write
// completed while it read them (the tracker delivered none), the blocks are the disks
// at that instant, in write order — a crash-consistent point, as if the power had
// failed then. Otherwise it is fuzzy (level none), and recovery does not offer it by
// default. The state says which, and why, until a point under freeze succeeds.
func (s *session) crashPoint(ctx context.Context, bound time.Duration, code, why string) error {
	at := time.Now()
	got, _, _, err := s.collect(ctx, bound, 0)
	level := consistency.None
	if err == nil && s.quiet(ctx, bound) {
		level = consistency.Crash
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		s.putBack(got)
		s.setPointErr(&api.ReplicationError{Code: code, Message: why + "; a point without a freeze failed too while reading the volumes: " + err.Error()})
		return nil
	}
	if err := s.sendCollected(ctx, got); err != nil {
		return err
	}
	if code != "" {
		msg := why + "; points are taken without a freeze: crash-consistent while writes pause during a point, fuzzy (level none) otherwise"
		s.setNotice(true, &api.ReplicationError{Code: api.ErrPointsCrashConsistent, Message: msg + " — this one is " + level.String()})
	}
	s.setPointErr(nil)
	s.lastFreeze = 0
	if err := s.mark(ctx, at, level, 0, ""); err != nil {
		return err
	}
	if len(got) == 0 && level == consistency.Crash {
		s.matched(at)
	}
	return nil
}

// quiet reports whether no write completed since the last collect: the tracker, once it
// delivered every completed write, holds nothing dirty.
func (s *session) quiet(ctx context.Context, bound time.Duration) bool {
	sctx, cancel := context.WithTimeout(ctx, max(bound, time.Second))
	err := s.src.Sync(sctx)
	cancel()
	if err != nil {
		return false
	}
	for vol := range s.tables {
		if s.src.Dirty(vol) > 0 {
			return false
		}
	}
	return true
}

// presync writes back what the filesystems hold and sends it before the freeze, so the
// freeze has little left to flush and the window little to read: it drains, each round
// after the tracker delivered every completed write, until nothing is dirty (at most 8
// rounds: under steady writes each round drains what came during the one before, fewer
// each time, and the window reads what came during the last).
func (s *session) presync(ctx context.Context, mounts []string) error {
	if freeze.SyncFilesystems(ctx, mounts) != nil {
		return nil
	}
	for range 8 {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.src.Sync(sctx)
		cancel()
		if err != nil || s.dirtyBytes() == 0 {
			return nil
		}
		if _, err := s.drain(ctx); err != nil {
			return err
		}
	}
	return nil
}

// errWindowTooLarge says more blocks were dirty at the freeze than can be read within
// the freeze bound: the point is given up at once and tried again soon.
var errWindowTooLarge = errors.New("too many blocks dirty at the freeze to read within its bound")

// maxWindowRetries is how many points in a row are given up for a large window before
// one reads it whatever it costs (it may then pass its bound: level none).
const maxWindowRetries = 5

// windowLimit is how many dirty blocks a freeze window may read: what half the bound
// reads at the recent points' rate (0: no limit).
func (s *session) windowLimit(bound time.Duration) int {
	if !s.src.Continuous() || s.windowRetries >= maxWindowRetries {
		return 0
	}
	per := s.readPerBlock
	if per <= 0 {
		per = 200 * time.Microsecond
	}
	return max(64, int(bound/2/per))
}

// collect gathers every block changed before the point (under freeze when there is
// one): the tracker delivers the marks of every completed write first. With a limit,
// more dirty blocks than that give errWindowTooLarge, before any is read. It returns
// the time each part took, for the log.
func (s *session) collect(ctx context.Context, bound time.Duration, limit int) (got []block, tSync, tRead time.Duration, err error) {
	t := time.Now()
	sctx, cancel := context.WithTimeout(ctx, max(bound, time.Second))
	err = s.src.Sync(sctx)
	cancel()
	tSync = time.Since(t)
	if err == nil && limit > 0 && s.dirtyBytes() > int64(limit)*int64(s.bs) {
		return nil, tSync, 0, errWindowTooLarge
	}
	t = time.Now()
	for vol := 0; vol < len(s.tables) && err == nil; vol++ {
		held := func(n, hash uint64) bool { return s.held(vol, n, hash) }
		err = s.src.Collect(ctx, vol, held, func(n uint64, data []byte, hash uint64) error {
			got = append(got, block{vol: vol, n: n, hash: hash, data: bytes.Clone(data), bytes: len(data)})
			return nil
		})
	}
	return got, tSync, time.Since(t), err
}

// thaw ends a freeze (nil: there was none) and says how long it held, in milliseconds.
func thaw(fr Frozen) (float64, error) {
	if fr == nil {
		return 0, nil
	}
	err := fr.Thaw()
	return float64(fr.Elapsed().Microseconds()) / 1000, err
}

// sendCollected offers a point's blocks; those not offered are dirty again.
func (s *session) sendCollected(ctx context.Context, got []block) error {
	for k, b := range got {
		if err := s.offer(ctx, b.vol, b.n, b.data, b.hash); err != nil {
			s.putBack(got[k:])
			return err
		}
	}
	return nil
}

// putBack makes blocks dirty again, so that the next drain sends them.
func (s *session) putBack(blocks []block) {
	for _, b := range blocks {
		s.src.Mark(b.vol, b.n)
	}
}

// postThaw runs the post-thaw hook; its failure is reported, the point stands.
func (s *session) postThaw(ctx context.Context, mounts []string) {
	if err := s.hook(context.WithoutCancel(ctx), "post-thaw", s.opt.PostThaw, mounts); err != nil {
		s.setPointErr(&api.ReplicationError{Code: codeHookFailed, Message: "the post-thaw hook failed: " + err.Error()})
	}
}

// hook runs a pre-freeze or post-thaw command with the mount points in its
// environment, bounded by the hook timeout.
func (s *session) hook(ctx context.Context, phase, command string, mounts []string) error {
	if command == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.HookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), "LIFEBOAT_PHASE="+phase, "LIFEBOAT_SERVER_ID="+s.opt.ServerID,
		"LIFEBOAT_MOUNTS="+strings.Join(mounts, " "))
	// The hook runs in its own process group, and a timeout kills the whole group: a
	// hook's children (a copy, a database client) must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("the %s hook did not finish within %s", phase, s.opt.HookTimeout)
	}
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 200 {
			msg = msg[len(msg)-200:]
		}
		return fmt.Errorf("the %s hook failed: %w: %s", phase, err, msg)
	}
	return nil
}

// ms is d in milliseconds, for logs.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
