// Package freeze freezes and thaws the filesystems of a source server's volumes for a
// consistency point (docs/architecture.md §3), with a hard time bound.
//
// A freeze (FIFREEZE) makes every write to a filesystem wait; the filesystem first
// writes everything it holds to its device, so the device then holds a consistent image
// of it. The kernel does not thaw a filesystem when the process that froze it dies, so
// a freeze is guarded twice: a timer in the agent thaws at the bound, and a watchdog
// process that outlives the agent (see StartWatchdog) thaws when the agent dies or stops
// answering.
package freeze

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The ioctls of linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// rcuExpeditedFile is the kernel's switch between normal and expedited RCU grace
// periods. FIFREEZE waits for several normal grace periods (each freeze level of a
// superblock is a per-CPU rw-semaphore, and taking one for writing waits for a grace
// period), and those waits are most of a freeze window: about 30 ms on a quiet 2-CPU
// machine, 1-2 ms with expedited grace periods. So unless told not to, a freeze turns
// the switch on just before the first FIFREEZE and off again right after the last (the
// thaw waits for none); if the agent dies in between, the watchdog turns it off. The
// switch is left alone when it is already on (someone wants it on) or cannot be written
// (no privilege, read-only /sys): the freeze is then only slower.
const rcuExpeditedFile = "/sys/kernel/rcu_expedited"

// rcuNormal reports whether expedited grace periods are off (and the switch readable).
func rcuNormal() bool {
	b, err := os.ReadFile(rcuExpeditedFile)
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// setRCUExpedited turns expedited grace periods on or off.
func setRCUExpedited(on bool) error {
	v := []byte("0\n")
	if on {
		v = []byte("1\n")
	}
	if err := os.WriteFile(rcuExpeditedFile, v, 0o644); err != nil {
		return fmt.Errorf("switch expedited RCU grace periods to %v: %w", on, err)
	}
	return nil
}

// NotConsistentError is what Thaw returns when the filesystems did not stay frozen
// from the freeze to the thaw: the bound passed and they were thawed by the timer or
// the watchdog, or someone else thawed them. The point must not be sealed as
// filesystem-consistent.
type NotConsistentError struct {
	Reason string
}

func (e *NotConsistentError) Error() string {
	return "the consistency point is not filesystem-consistent: " + e.Reason
}

// Frozen is a set of frozen filesystems. Thaw it as soon as the consistency point is
// taken.
type Frozen struct {
	log     *slog.Logger
	handles []*fsHandle // every mount point opened
	mounts  []*fsHandle // those frozen, in freeze order
	bound   time.Duration
	start   time.Time
	timer   *time.Timer
	wd      *Watchdog // nil without a watchdog process
	seq     uint64

	mu       sync.Mutex
	expired  bool      // the bound passed and the timer thawed everything
	done     bool      // Thaw has run
	end      time.Time // when the last filesystem was thawed
	thawErrs []error   // errors of the timer's thaw
}

type fsHandle struct {
	path string
	fd   int
	dev  uint64
}

// Freeze freezes the filesystems mounted at mountpoints, in a stable order (sorted by
// path; a filesystem reachable through several mount points is frozen once). If one
// cannot be frozen, or freezing them all takes longer than bound, those already frozen
// are thawed and the error names the mount and the reason. If Thaw is not called within
// bound of the first freeze, a timer thaws them anyway and Thaw reports that the point
// is not consistent.
//
// Each filesystem is synced (syncfs) before the freeze window opens, so FIFREEZE has
// little left to write and the window stays short.
//
// This Freeze has no watchdog process: if the agent is killed while frozen, the
// filesystems stay frozen. The agent uses (*Watchdog).Freeze.
func Freeze(ctx context.Context, mountpoints []string, bound time.Duration) (*Frozen, error) {
	return freeze(ctx, slog.New(slog.DiscardHandler), nil, true, mountpoints, bound)
}

func freeze(ctx context.Context, log *slog.Logger, wd *Watchdog, expedite bool, mountpoints []string, bound time.Duration) (*Frozen, error) {
	if bound <= 0 {
		return nil, fmt.Errorf("freeze: the time bound must be positive, not %s", bound)
	}
	if len(mountpoints) == 0 {
		return nil, errors.New("freeze: no filesystems to freeze")
	}
	handles, err := openMounts(mountpoints)
	if err != nil {
		return nil, err
	}
	closeAll := func() {
		for _, h := range handles {
			unix.Close(h.fd)
		}
	}
	// Outside the window: write what the filesystems hold.
	for _, h := range handles {
		if err := ctx.Err(); err != nil {
			closeAll()
			return nil, fmt.Errorf("freeze: %w", err)
		}
		if err := unix.Syncfs(h.fd); err != nil {
			closeAll()
			return nil, fmt.Errorf("freeze: sync the filesystem at %s: %w", h.path, err)
		}
	}
	f := &Frozen{log: log, bound: bound, wd: wd, handles: handles}
	// Whether to switch expedited RCU on is decided before arming, so the watchdog
	// knows to switch it off if the agent dies.
	expedite = expedite && rcuNormal()
	if wd != nil {
		paths := make([]string, len(handles))
		for i, h := range handles {
			paths[i] = h.path
		}
		// Armed before the first FIFREEZE: if the agent dies anywhere from here on,
		// the watchdog thaws.
		seq, err := wd.arm(ctx, paths, time.Now().Add(bound), expedite)
		if err != nil {
			closeAll()
			return nil, err
		}
		f.seq = seq
	}

	expedited := expedite && setRCUExpedited(true) == nil
	f.start = time.Now()
	f.timer = time.AfterFunc(bound, f.expire)
	var failure error
	for _, h := range handles {
		f.mu.Lock()
		expired := f.expired
		f.mu.Unlock()
		if expired {
			break
		}
		err := ioctl(h.fd, ioctlFIFREEZE)
		f.mu.Lock()
		if err != nil {
			f.mu.Unlock()
			failure = freezeError(h.path, err)
			break
		}
		f.mounts = append(f.mounts, h)
		if f.expired {
			// The timer thawed the others while this FIFREEZE ran.
			if err := ioctl(h.fd, ioctlFITHAW); err != nil {
				f.thawErrs = append(f.thawErrs, fmt.Errorf("thaw %s: %w", h.path, err))
			}
		}
		f.mu.Unlock()
	}
	if expedited {
		if err := setRCUExpedited(false); err != nil {
			log.Warn("freeze: "+err.Error(), "file", rcuExpeditedFile)
		}
	}
	f.mu.Lock()
	expired := f.expired
	f.mu.Unlock()
	if failure == nil && expired {
		failure = fmt.Errorf("freeze: freezing %d filesystems took longer than the bound of %s; they were thawed, retry later", len(handles), bound)
	}
	if failure != nil {
		thawErr := f.Thaw() // closes the handles
		var nc *NotConsistentError
		if thawErr != nil && !errors.As(thawErr, &nc) {
			return nil, errors.Join(failure, thawErr)
		}
		return nil, failure
	}
	return f, nil
}

// SyncFilesystems writes back what the filesystems mounted at mountpoints hold
// (syncfs), outside any freeze: done before a freeze, it leaves FIFREEZE little to write
// and the caller can send what was written before the window opens.
func SyncFilesystems(ctx context.Context, mountpoints []string) error {
	handles, err := openMounts(mountpoints)
	if err != nil {
		return err
	}
	defer func() {
		for _, h := range handles {
			unix.Close(h.fd)
		}
	}()
	for _, h := range handles {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := unix.Syncfs(h.fd); err != nil {
			return fmt.Errorf("sync the filesystem at %s: %w", h.path, err)
		}
	}
	return nil
}

// openMounts opens each mount point, drops repeats of one filesystem and sorts them.
func openMounts(mountpoints []string) ([]*fsHandle, error) {
	sorted := slices.Clone(mountpoints)
	slices.Sort(sorted)
	var handles []*fsHandle
	seen := map[uint64]bool{}
	for _, p := range sorted {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			for _, h := range handles {
				unix.Close(h.fd)
			}
			return nil, fmt.Errorf("freeze: open mount point %s: %w", p, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			for _, h := range handles {
				unix.Close(h.fd)
			}
			return nil, fmt.Errorf("freeze: stat mount point %s: %w", p, err)
		}
		if seen[st.Dev] {
			unix.Close(fd)
			continue
		}
		seen[st.Dev] = true
		handles = append(handles, &fsHandle{path: p, fd: fd, dev: st.Dev})
	}
	return handles, nil
}

func freezeError(path string, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("freeze: the filesystem at %s is already frozen by someone else (another tool, or an agent that died without its watchdog); find who froze it, then `fsfreeze -u %s`: %w", path, path, err)
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY):
		return fmt.Errorf("freeze: the filesystem at %s cannot be frozen (its type does not support FIFREEZE); its volume can only get crash-consistent points: %w", path, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("freeze: not permitted to freeze %s: the agent needs root (CAP_SYS_ADMIN): %w", path, err)
	default:
		return fmt.Errorf("freeze: FIFREEZE %s: %w", path, err)
	}
}

func ioctl(fd int, req uintptr) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// expire is the in-process watchdog: the bound passed without Thaw.
func (f *Frozen) expire() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done || f.expired {
		return
	}
	f.expired = true
	// Thaw first; log after (logging may write to a frozen filesystem).
	f.thawErrs = append(f.thawErrs, f.thawLocked()...)
	f.end = time.Now()
	f.log.Warn("freeze: the time bound passed before thaw; filesystems thawed", "bound", f.bound, "mounts", f.paths())
}

// thawLocked thaws in reverse order and returns the errors, "not frozen" included.
func (f *Frozen) thawLocked() []error {
	var errs []error
	for i := len(f.mounts) - 1; i >= 0; i-- {
		h := f.mounts[i]
		if err := ioctl(h.fd, ioctlFITHAW); err != nil {
			errs = append(errs, fmt.Errorf("thaw %s: %w", h.path, err))
		}
	}
	return errs
}

func (f *Frozen) paths() []string {
	p := make([]string, len(f.mounts))
	for i, h := range f.mounts {
		p[i] = h.path
	}
	return p
}

// Mounts returns the mount points that were frozen, in freeze order.
func (f *Frozen) Mounts() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paths()
}

// Elapsed returns how long the filesystems have been frozen: from the first FIFREEZE to
// the thaw, or to now while they are frozen.
func (f *Frozen) Elapsed() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done || f.expired {
		return f.end.Sub(f.start)
	}
	return time.Since(f.start)
}

// Thaw thaws the filesystems. It returns a *NotConsistentError when they did not stay
// frozen until now (the bound passed, or something else thawed them), and other errors
// when a filesystem could not be thawed. Calling it again returns nil.
func (f *Frozen) Thaw() error {
	f.mu.Lock()
	if f.done {
		f.mu.Unlock()
		return nil
	}
	f.done = true
	f.timer.Stop()
	expired := f.expired
	var errs []error
	notFrozen := 0
	if !expired {
		for _, err := range f.thawLocked() {
			if errors.Is(err, unix.EINVAL) {
				notFrozen++ // thawed by someone else: the watchdog or an operator
				continue
			}
			errs = append(errs, err)
		}
		f.end = time.Now()
	}
	timerErrs := f.thawErrs
	elapsed := f.end.Sub(f.start)
	mounts := f.paths()
	for _, h := range f.handles {
		unix.Close(h.fd)
	}
	f.mu.Unlock()

	var watchdogThawed []string
	if f.wd != nil {
		var err error
		watchdogThawed, err = f.wd.disarm(f.seq)
		if err != nil {
			f.log.Warn("freeze: thaw watchdog did not answer; it will be restarted before the next freeze", "err", err)
		}
	}
	for _, err := range timerErrs {
		if !errors.Is(err, unix.EINVAL) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("freeze: thaw after %s: %w", elapsed, errors.Join(errs...))
	}
	switch {
	case expired:
		return &NotConsistentError{Reason: fmt.Sprintf("the filesystems (%v) stayed frozen past the bound of %s and were thawed by the watchdog", mounts, f.bound)}
	case len(watchdogThawed) > 0:
		return &NotConsistentError{Reason: fmt.Sprintf("the watchdog process thawed %v at the bound of %s before the agent did", watchdogThawed, f.bound)}
	case notFrozen > 0:
		return &NotConsistentError{Reason: fmt.Sprintf("%d of the filesystems %v were no longer frozen at thaw (thawed by someone else)", notFrozen, mounts)}
	}
	return nil
}
