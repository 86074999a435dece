package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// sessionError ends a session with a state and an error the control plane shows.
type sessionError struct {
	state, code, msg string
	connected        bool // the replicator answered: retry soon
}

func (e *sessionError) Error() string { return e.code + ": " + e.msg }

// fromWireError maps the replicator's Error frame to a state.
func fromWireError(e *wire.Error, current string) *sessionError {
	se := &sessionError{state: current, code: e.Code, msg: e.Message, connected: true}
	switch e.Code {
	case wire.CodeStagingFull:
		se.state, se.code = api.StateStalled, api.ErrStagingStorageFull
	case wire.CodeStopped:
		se.state = api.StateStopped
	case wire.CodeNotAuthorized:
		se.state, se.code = api.StateStalled, wire.CodeNotAuthorized
	case wire.CodeStagingError:
		se.state = api.StateStalled
	}
	return se
}

// unreadable is the error of a volume that cannot be read.
func unreadable(what, volume string, err error) error {
	return &sessionError{state: api.StateStalled, code: api.ErrVolumeNotAccessible,
		msg: fmt.Sprintf("%s volume %s failed: %v", what, volume, err)}
}

// sessionOptions are the agent's settings and state a session uses.
type sessionOptions struct {
	ServerID            string
	PreFreeze, PostThaw string
	HookTimeout         time.Duration // default 30 s
	FreezeHold          time.Duration // tests: hold each freeze this long
	ScanPause           time.Duration // tests: pause after each batch a scan sends
	VerifyEvery         time.Duration // negative: no background verification
	Verify              *verifyPass   // where that verification stands, across sessions
	LostSeen            uint64        // the tracker's lost count already answered
	// Config returns the newest replication config (nil: the session's stays).
	Config func() api.ReplicationConfig
	// VolumesChanged reports disks that appeared, went or changed size (nil: never).
	VolumesChanged func(ignoreNew bool) bool
	// Groups coordinates consistency-group points (nil: the agent takes none).
	Groups groupCoordinator
}

func (o sessionOptions) withDefaults() sessionOptions {
	if o.HookTimeout <= 0 {
		o.HookTimeout = 30 * time.Second
	}
	if o.VerifyEvery == 0 {
		o.VerifyEvery = time.Hour
	}
	if o.Verify == nil {
		o.Verify = &verifyPass{last: time.Now()}
	}
	return o
}

// verifyPass is where the background verification pass stands.
type verifyPass struct {
	running bool
	vol     int       // volume being checked
	next    uint64    // next block
	found   int       // blocks found different in this pass
	last    time.Time // when the last pass ended
}

// volumeLook is how often the agent looks for new disks and size changes.
const volumeLook = 10 * time.Second

// backlogLarge is the backlog reported as BACKLOG; one that grows above it for a
// minute is STALLED.
const backlogLarge = 256 << 20

// loopState is what the session's loop carries from one turn to the next.
type loopState struct {
	cfg             api.ReplicationConfig
	interval, bound time.Duration
	lastPoint       time.Time
	lastLook        time.Time
	handledRequest  string        // the snapshot request answered last
	passTook        time.Duration // how long the last point took (a scan's reads everything)
	handledGroup    string        // the group point taken part in last
	lastGroupPoint  time.Time
	cost            pointCost // what points cost: the interval widens when it is too much
	growing         int       // turns the backlog grew above backlogLarge
	lastBacklog     int64
}

func (l *loopState) apply(cfg api.ReplicationConfig) {
	l.cfg = cfg
	l.interval = time.Duration(cfg.Settings.ConsistencyPointIntervalSeconds) * time.Second
	l.bound = time.Duration(cfg.Settings.FreezeTimeoutMs) * time.Millisecond
}

// loop is the session's producer: a scan when needed, then continuous replication with
// consistency points, until the config changes (nil) or something fails.
func (s *session) loop(ctx context.Context, cfg api.ReplicationConfig, rescan, initial bool) error {
	s.setBandwidth(cfg.Settings.BandwidthMbps)
	if rescan {
		if err := s.scanAll(ctx, initial); err != nil {
			return err
		}
	}
	s.st.set(api.StateContinuous, nil)
	l := &loopState{lastLook: time.Now()}
	l.apply(cfg)
	for {
		if end, err := s.ended(ctx, l); end {
			return err
		}
		sent, err := s.drain(ctx)
		if err != nil {
			return err
		}
		if err := s.verifyStep(ctx); err != nil {
			return err
		}
		if err := s.pointIfDue(ctx, l); err != nil {
			return err
		}
		s.reportBacklog(l)
		s.ping()
		if !sent {
			sleep(ctx, 50*time.Millisecond)
		}
	}
}

// ended reports whether the session must end, and with what: a failure of the link, lost
// tracker events, a config that needs a new session (stop, pause, another replicator,
// generation or compression; nil error), or volumes that changed. Other config changes
// apply at once.
func (s *session) ended(ctx context.Context, l *loopState) (bool, error) {
	select {
	case err := <-s.errc:
		return true, err
	case <-ctx.Done():
		return true, ctx.Err()
	default:
	}
	if n := s.src.Lost(); n > s.opt.LostSeen {
		s.rescanWhy = fmt.Sprintf("the eBPF tracker lost %d events (writes faster than the agent read them)", n-s.opt.LostSeen)
		s.opt.LostSeen = n
		return true, &sessionError{state: api.StateRescan, code: api.ErrTrackerEventsLost, connected: true,
			msg: "the eBPF tracker lost write events (a write storm outran the agent); rescanning, nothing is lost"}
	}
	if s.opt.Config != nil {
		if nc := s.opt.Config(); nc.Fingerprint() != l.cfg.Fingerprint() {
			if nc.Control.Desired != api.DesiredReplicating || nc.Control.Generation != l.cfg.Control.Generation ||
				!sameReplicator(nc.Replicator, l.cfg.Replicator) || nc.Settings.Compression != l.cfg.Settings.Compression {
				return true, nil
			}
			l.apply(nc)
			s.setBandwidth(nc.Settings.BandwidthMbps)
		}
	}
	if s.opt.VolumesChanged != nil && time.Since(l.lastLook) >= volumeLook {
		l.lastLook = time.Now()
		if s.opt.VolumesChanged(l.cfg.Settings.IgnoreNewDisks) {
			return true, errVolumesChanged
		}
	}
	return false, nil
}

// pointIfDue takes a consistency point when one is due or was asked for, or this
// server's part of the group point it is invited to. A member of a consistency group
// takes no points of its own while the group's come.
func (s *session) pointIfDue(ctx context.Context, l *loopState) error {
	ctl := l.cfg.Control
	if gp := ctl.GroupPoint; gp != nil && gp.ID != l.handledGroup {
		l.handledGroup = gp.ID
		if !time.Now().Before(gp.Deadline) {
			return nil
		}
		err := s.groupPoint(ctx, gp, l.bound)
		l.lastPoint, l.lastGroupPoint = time.Now(), time.Now()
		return err
	}
	req := ctl.SnapshotRequest
	requested := req != nil && req.ID != l.handledRequest
	// A point of the scan tracker reads every volume: not more than a third of the time.
	every := max(s.widened(l), 3*l.passTook)
	grouped := ctl.Group != nil && time.Since(l.lastGroupPoint) < groupQuiet(ctl.Group)
	retry := s.windowRetries > 0 && time.Since(l.lastPoint) >= pointRetryAfter
	if !requested && !retry && (grouped || time.Since(l.lastPoint) < every) {
		return nil
	}
	t0 := time.Now()
	if err := s.point(ctx, l.bound); err != nil {
		return err
	}
	// Points keep their cadence: the next is due an interval after this one began (a
	// scan's, after it ended: it reads everything).
	l.lastPoint = t0
	if took := time.Since(t0); !s.src.Continuous() {
		l.passTook, l.lastPoint = took, time.Now()
	} else {
		l.cost.add(s.lastFreeze, took)
	}
	if requested {
		l.handledRequest = req.ID
	}
	return nil
}

// pointRetryAfter is how soon a point given up for a large window is tried again.
const pointRetryAfter = 100 * time.Millisecond

// pointCost is what the recent points cost, smoothed: how long each froze the
// filesystems, and how long it took in all.
type pointCost struct {
	freeze, took time.Duration
	n            int
}

func (c *pointCost) add(freeze, took time.Duration) {
	if c.n == 0 {
		c.freeze, c.took = freeze, took
	}
	c.n++
	c.freeze += (freeze - c.freeze) / 5
	c.took += (took - c.took) / 5
}

// maxStall is the share of the time points may freeze writes; a point may take at most
// half its interval. Past either, the interval widens until the points fit again.
const maxStall = 0.02

// widened returns the interval points are taken at: the one set, or a wider one the
// machine can sustain, which the state then reports with its reason.
func (s *session) widened(l *loopState) time.Duration {
	every := max(l.interval, time.Duration(float64(l.cost.freeze)/maxStall), 2*l.cost.took)
	if every > l.interval {
		every = every.Round(time.Second) + time.Second
	}
	if every <= l.interval || l.cost.n < 3 {
		s.setNotice(false, nil)
		return l.interval
	}
	s.setNotice(false, &api.ReplicationError{Code: api.ErrPointIntervalWidened, Message: fmt.Sprintf(
		"consistency points are taken every %s instead of every %s: each freezes writes for %.1f ms and takes %.0f ms on average, "+
			"and points may freeze writes at most %.0f%% of the time and take at most half their interval; "+
			"set a longer interval, or reduce the write load during points", every, l.interval,
		ms(l.cost.freeze), ms(l.cost.took), 100*maxStall)})
	return every
}

// reportBacklog sets the state from the backlog, and whether it keeps growing.
func (s *session) reportBacklog(l *loopState) {
	b := s.backlog()
	switch {
	case b > backlogLarge && b > l.lastBacklog:
		l.growing++
	case b <= backlogLarge:
		l.growing = 0
	}
	l.lastBacklog = b
	switch {
	case l.growing > int(time.Minute/(50*time.Millisecond)):
		s.st.set(api.StateStalled, &api.ReplicationError{Code: api.ErrNotConverging,
			Message: "writes on the server outrun replication: raise the bandwidth limit, use a faster link, or reduce the write load"})
	case b > backlogLarge:
		s.st.set(api.StateBacklog, s.pointError())
	default:
		s.st.set(api.StateContinuous, s.pointError())
	}
}

// scanAll reads every volume whole and sends each block the replica does not hold
// (initial sync, RESCAN).
func (s *session) scanAll(ctx context.Context, initial bool) error {
	var total int64
	for _, v := range s.src.Volumes() {
		total += int64(v.SizeBytes)
	}
	s.st.startScan(initial, total)
	for vol := range s.tables {
		if err := s.scan(ctx, vol); err != nil {
			return err
		}
	}
	s.flushAll(ctx)
	s.st.endScan()
	return nil
}

// scan sends every block of a volume the replica does not hold.
func (s *session) scan(ctx context.Context, vol int) error {
	n := 0
	var sendErr error
	err := s.src.Scan(ctx, vol, func(b uint64, data []byte, hash uint64) error {
		s.st.scanDone.Add(int64(len(data)))
		if sendErr = s.offer(ctx, vol, b, data, hash); sendErr != nil {
			return sendErr
		}
		if n++; n%s.perItem == 0 {
			select {
			case sendErr = <-s.errc:
				s.fail(sendErr)
				return sendErr
			default:
			}
			if s.opt.ScanPause > 0 {
				sleep(ctx, s.opt.ScanPause)
			}
		}
		return nil
	})
	if err == nil || sendErr != nil || ctx.Err() != nil {
		return err
	}
	return unreadable("scanning", s.src.Volumes()[vol].Name, err)
}

// drain sends the dirty blocks of every volume, a bounded amount per call. It reports
// whether it sent anything.
func (s *session) drain(ctx context.Context) (bool, error) {
	sent, empty := false, true
	at := time.Now()
	var buf []uint64
	for vol := range s.tables {
		if s.src.Dirty(vol) == 0 {
			continue
		}
		buf = s.src.Take(vol, buf[:0], 1024)
		if len(buf) == 0 {
			continue
		}
		sent = true
		if s.src.Dirty(vol) > 0 {
			empty = false
		}
		var sendErr error
		offered := make(map[uint64]bool, len(buf))
		err := s.src.Read(ctx, vol, buf, func(b uint64, data []byte) error {
			if sendErr = s.offer(ctx, vol, b, data, wire.Hash(data)); sendErr == nil {
				offered[b] = true
			}
			return sendErr
		})
		if err != nil {
			// Taken but not offered: dirty again. What was offered is on the replica, or
			// in flight and put back by requeue when the session ends if it is not
			// acknowledged by then (marking it here would send acknowledged blocks again).
			for _, b := range buf {
				if !offered[b] {
					s.src.Mark(vol, b)
				}
			}
			if sendErr != nil || ctx.Err() != nil {
				return sent, err
			}
			return sent, unreadable("reading", s.src.Volumes()[vol].Name, err)
		}
	}
	s.flushAll(ctx)
	if empty {
		s.matched(at)
	}
	return sent, nil
}

// verifyStep advances the background verification pass of a continuous tracker by a
// slice: blocks whose content differs from what the replica holds (and is not on its
// way) were missed by the tracker; they are sent and counted.
func (s *session) verifyStep(ctx context.Context) error {
	p := s.opt.Verify
	if !s.src.Continuous() || s.opt.VerifyEvery < 0 {
		return nil
	}
	if !p.running {
		if time.Since(p.last) < s.opt.VerifyEvery {
			return nil
		}
		p.running, p.vol, p.next, p.found = true, 0, 0, 0
	}
	if p.vol >= len(s.tables) {
		s.endVerify()
		return nil
	}
	const slice = 256
	n := s.tables[p.vol].Blocks()
	blocks := make([]uint64, 0, slice)
	for b := p.next; b < n && len(blocks) < slice; b++ {
		blocks = append(blocks, b)
	}
	vol := p.vol
	err := s.src.Read(ctx, vol, blocks, func(b uint64, data []byte) error {
		h := wire.Hash(data)
		if _, fly := s.flying(vol, b); fly || s.src.IsDirty(vol, b) || s.tables[vol].Matches(b, h) {
			return nil
		}
		p.found++
		return s.offer(ctx, vol, b, data, h)
	})
	if err != nil {
		return err
	}
	if p.next += uint64(len(blocks)); p.next >= n {
		p.vol, p.next = p.vol+1, 0
		if p.vol >= len(s.tables) {
			s.endVerify()
		}
	}
	return nil
}

func (s *session) endVerify() {
	p := s.opt.Verify
	p.running, p.last = false, time.Now()
	if p.found > 0 {
		s.log.Warn("the verification pass found blocks the tracker had missed; they were sent", "blocks", p.found)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
