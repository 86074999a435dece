// Package agent is the replication agent (`lifeboat agent run`; docs/architecture.md
// §2–3): it finds the source server's volumes, tracks their changed blocks (eBPF where
// the kernel allows, full scans otherwise), streams them to its replication server over
// the wire protocol, takes filesystem-consistent consistency points under freeze, and
// reports its replication state to the control plane.
//
// The Agent holds what outlives a connection (config, volumes, tracker, hash tables,
// state); each connection is a session (core.go), which sees the volumes only as a
// Source and the replicator only as a Link, so that it is tested without either.
//
// Nothing is lost on a dropped connection or a crash: blocks stay dirty until the
// replicator acknowledges them as durable, the hash of every acknowledged block is kept
// on disk so a restart resends only what differs, and a restart (whose tracker missed
// writes) always rescans.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/freeze"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
)

// ControlPlane is what the agent needs of the control plane's API (an *api.Client
// authenticated with the agent's certificate).
type ControlPlane interface {
	ReplicationConfig(ctx context.Context, id string) (api.ReplicationConfig, error)
	ReplicationConfigWait(ctx context.Context, id, known string, wait time.Duration) (api.ReplicationConfig, error)
	UpdateReplicationState(ctx context.Context, id string, u api.ReplicationStateUpdate) (api.ReplicationState, error)
	SetVolumes(ctx context.Context, id string, volumes []api.Volume) (api.SourceServer, error)
	ReportGroupPoint(ctx context.Context, serverID, pointID string, r api.GroupPointReport) (api.GroupPointDecision, error)
}

// Config configures an agent.
type Config struct {
	ServerID     string // the source server id this agent replicates
	AccountID    string // its account: the agent accepts only replicators of it
	ControlPlane ControlPlane
	Certificate  tls.Certificate // the agent's client certificate
	CAPool       *x509.CertPool  // the CA that signs replicators (the replication config may name a newer one)
	Volumes      []string        // block devices or image files; empty: discovered
	StateDir     string          // hash tables, tracker generation, status
	ForceScan    bool            // never use the eBPF tracker
	// Poll bounds how long the agent waits for a config change while it cannot
	// replicate (default 5 s; it is told of changes at once); Report how often
	// the state is reported (default 2 s).
	Poll, Report time.Duration
	// ScanPause, when set, pauses this long after every batch a scan sends (tests that
	// need time to kill the agent in the middle of a sync).
	ScanPause time.Duration
	// PreFreeze and PostThaw are commands (run with sh -c) around each consistency
	// point's freeze; a pre-freeze hook that fails or outlasts HookTimeout (default 30 s)
	// skips the point, which is reported; replication goes on.
	PreFreeze, PostThaw string
	HookTimeout         time.Duration
	// VerifyEvery is how often the eBPF tracker's marks are checked by a background
	// pass that compares every block's hash with the replica's (default 1 h; negative:
	// never). Some kernels miss a rare completion without counting it lost.
	VerifyEvery time.Duration
	// NormalRCU keeps freezes from switching the kernel to expedited RCU grace periods
	// during their FIFREEZEs (see package freeze): longer freeze windows (~30 ms instead
	// of ~2 ms on a small machine), no change to a system-wide setting.
	NormalRCU bool
	// RingBytes sizes the eBPF ring buffer (default the tracker's); FreezeHold keeps
	// each freeze this long (tests of the watchdog). Both are for tests.
	RingBytes  int
	FreezeHold time.Duration
	Version    string
	Logger     *slog.Logger
}

func (c *Config) fill() {
	if c.Poll == 0 {
		c.Poll = 5 * time.Second
	}
	if c.Report == 0 {
		c.Report = 2 * time.Second
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.HookTimeout == 0 {
		c.HookTimeout = 30 * time.Second
	}
	if c.VerifyEvery == 0 {
		c.VerifyEvery = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Agent is a running replication agent.
type Agent struct {
	cfg Config
	log *slog.Logger
	st  *status

	vols     *volumeSet // st.mu guards the slice and each volume's table: the report loop saves them
	src      Source     // the tracker in use over vols
	rescan   bool       // the next session rescans every volume (st.mu)
	verify   verifyPass
	lostSeen uint64 // the tracker's lost count already answered with a rescan

	trCancel context.CancelFunc // stops the eBPF tracker's goroutine …
	trDone   chan struct{}      // … closed when it returned

	reg *prometheus.Registry // the agent's metrics (metrics.go)

	cfgMu      sync.Mutex
	latest     *api.ReplicationConfig // the replication config as last read
	cfgChanged chan struct{}          // closed when latest changes (then replaced)
}

// watchConfig keeps the replication config current: it waits on the control plane for
// a change (a snapshot request, a stop, new settings), so the agent acts on one at once.
func (a *Agent) watchConfig(ctx context.Context) {
	known := ""
	backoff := time.Second
	for ctx.Err() == nil {
		cfg, err := a.cfg.ControlPlane.ReplicationConfigWait(ctx, a.cfg.ServerID, known, 20*time.Second)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("cannot read the replication config from the control plane", "err", err)
			}
			sleep(ctx, backoff)
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		if fp := cfg.Fingerprint(); fp != known {
			known = fp
			a.cfgMu.Lock()
			a.latest = &cfg
			close(a.cfgChanged)
			a.cfgChanged = make(chan struct{})
			a.cfgMu.Unlock()
		}
	}
}

// config returns the latest replication config, waiting for the first one.
func (a *Agent) config(ctx context.Context) (api.ReplicationConfig, bool) {
	for {
		a.cfgMu.Lock()
		cfg, ch := a.latest, a.cfgChanged
		a.cfgMu.Unlock()
		if cfg != nil {
			return *cfg, true
		}
		select {
		case <-ctx.Done():
			return api.ReplicationConfig{}, false
		case <-ch:
		}
	}
}

// latestConfig returns the replication config as last read (a session has one).
func (a *Agent) latestConfig() api.ReplicationConfig {
	a.cfgMu.Lock()
	defer a.cfgMu.Unlock()
	if a.latest == nil {
		return api.ReplicationConfig{}
	}
	return *a.latest
}

// waitConfigChange waits until the config changes or d passes.
func (a *Agent) waitConfigChange(ctx context.Context, d time.Duration) {
	a.cfgMu.Lock()
	ch := a.cfgChanged
	a.cfgMu.Unlock()
	select {
	case <-ctx.Done():
	case <-ch:
	case <-time.After(d):
	}
}

// New opens the volumes and returns an agent; Run replicates them.
func New(cfg Config) (*Agent, error) {
	cfg.fill()
	if !api.ValidID(api.PrefixSourceServer, cfg.ServerID) || cfg.ControlPlane == nil || cfg.StateDir == "" {
		return nil, errors.New("an agent needs its source server id, a control plane client and a state directory")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create the agent's state directory: %w", err)
	}
	paths, err := discover(cfg.Volumes)
	if err != nil {
		return nil, err
	}
	vols, err := openVolumes(paths)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("server", cfg.ServerID), rescan: true, cfgChanged: make(chan struct{}),
		st: &status{ServerID: cfg.ServerID, State: api.StateInitiating, metrics: newPointMetrics()}, verify: verifyPass{last: time.Now()}}
	a.reg = a.newRegistry()
	a.vols = &volumeSet{blockSize: a.loadBlockSize()}
	a.useVolumes(vols)
	// Every start is a new tracker generation: writes made while no agent ran are unknown.
	if err := a.bumpGeneration(); err != nil {
		closeVolumes(vols)
		return nil, err
	}
	return a, nil
}

// useVolumes replicates these volumes from now on, with empty dirty sets.
func (a *Agent) useVolumes(vols []*volume) {
	for _, v := range vols {
		v.dirty = tracker.NewDirtySet(v.dev.Blocks(a.vols.blockSize))
	}
	a.st.mu.Lock()
	a.vols.vols = vols
	a.st.volumes = apiVolumes(vols)
	a.st.mu.Unlock()
}

// Close releases the volumes. Call it after Run returned.
func (a *Agent) Close() error {
	closeVolumes(a.vols.vols)
	return nil
}

// Run replicates until ctx ends. Every goroutine it starts has ended when it returns.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if wd, err := freeze.StartWatchdog(ctx, a.log); err != nil {
		a.vols.freezeWhy = "the freeze watchdog could not start: " + err.Error()
		a.log.Warn("consistency points will not be filesystem-consistent", "reason", a.vols.freezeWhy)
	} else {
		wd.NormalRCU = a.cfg.NormalRCU
		a.vols.wd = wd
		defer wd.Close()
	}
	a.st.mu.Lock()
	a.st.freezeWhy = a.vols.freezeWhy
	a.st.mu.Unlock()
	a.startTracker(ctx)
	defer a.stopTracker()
	wg.Go(func() { a.reportLoop(ctx) })
	a.reportVolumes(ctx)
	wg.Go(func() { a.watchConfig(ctx) })
	a.replicate(ctx)
	a.saveTables()
	return nil
}

// replicate runs sessions as the replication config says, until ctx ends: none while
// stopped or paused, a new one after each that ended, backing off while they fail.
func (a *Agent) replicate(ctx context.Context) {
	backoff := time.Second
	var lastGen int64 = -1
	lastReplicator := ""
	for ctx.Err() == nil {
		cfg, ok := a.config(ctx)
		if !ok {
			return
		}
		if cfg.Replicator != nil && cfg.Replicator.ID != lastReplicator {
			// Moved to another replicator (its own was lost, or drained): failures on
			// the old one say nothing of the new, so retries start short again.
			lastReplicator, backoff = cfg.Replicator.ID, time.Second
		}
		if lastGen >= 0 && cfg.Control.Generation != lastGen {
			a.setRescan("an operator asked to restart replication")
		}
		lastGen = cfg.Control.Generation
		switch {
		case cfg.Control.Desired == api.DesiredStopped:
			a.st.set(api.StateStopped, nil)
			a.waitConfigChange(ctx, a.cfg.Poll)
			continue
		case cfg.Control.Desired == api.DesiredPaused:
			a.st.set(api.StatePaused, nil)
			a.waitConfigChange(ctx, a.cfg.Poll)
			continue
		case cfg.Replicator == nil:
			a.st.setInitiating(api.InitiationConnectAgent, api.StepFailed,
				&api.ReplicationError{Code: api.ErrReplicatorNotAssigned, Message: "no replication server serves this server's site: start one (lifeboat replicator) or check the target site"})
			a.waitConfigChange(ctx, a.cfg.Poll)
			continue
		}
		err := a.session(ctx, cfg)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errVolumesChanged) {
			if err := a.reopenVolumes(ctx, cfg.Settings.IgnoreNewDisks); err != nil {
				a.log.Warn("cannot open the changed volumes; keeping the old set", "err", err)
			}
			continue
		}
		var se *sessionError
		switch {
		case err == nil:
			backoff = time.Second
			continue // the config changed: read it again now
		case errors.As(err, &se):
			a.st.set(se.state, &api.ReplicationError{Code: se.code, Message: se.msg})
			if se.connected {
				backoff = time.Second
			}
		default:
			a.st.set(a.st.current(), &api.ReplicationError{Code: api.ErrUnstableNetwork,
				Message: "the connection to the replication server failed: " + err.Error() + "; the agent reconnects and resumes by itself"})
		}
		a.log.Warn("replication session ended", "err", err, "retry_in", backoff)
		// A new config ends the wait: the control plane moving this server to another
		// replicator (its own was lost) is acted on at once, not after up to 30 s.
		a.waitConfigChange(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

// startTracker starts the eBPF tracker on the block devices, or explains why the scan
// tracker is used.
func (a *Agent) startTracker(ctx context.Context) {
	a.src = &scanSource{a.vols}
	why := a.ebpfUnfit()
	if why == "" {
		opts := []tracker.EBPFOption{tracker.WithLogger(a.log)}
		if a.cfg.RingBytes > 0 {
			opts = append(opts, tracker.WithRingSize(a.cfg.RingBytes))
		}
		var evs []tracker.EBPFVolume
		for _, v := range a.vols.vols {
			evs = append(evs, tracker.EBPFVolume{Dev: v.kdev, Blocks: v.dev.Blocks(a.vols.blockSize), BlockSize: a.vols.blockSize})
		}
		if tr, err := tracker.NewEBPF(evs, opts...); err != nil {
			why = "the eBPF tracker cannot run here: " + err.Error()
		} else {
			a.runTracker(ctx, tr)
		}
	}
	a.st.setTracker(a.src.Tracker(), why)
	if why != "" {
		a.log.Info("using the scan tracker", "reason", why)
	} else {
		a.log.Info("using the eBPF tracker")
	}
}

// ebpfUnfit says why the eBPF tracker cannot follow these volumes ("": it can).
func (a *Agent) ebpfUnfit() string {
	if a.cfg.ForceScan {
		return "the scan tracker was chosen (--scan)"
	}
	for _, v := range a.vols.vols {
		if !v.device {
			return fmt.Sprintf("volume %s is an image file, which only the scan tracker can follow", v.Name)
		}
	}
	return ""
}

// runTracker delivers the eBPF tracker's marks to the dirty sets until stopTracker.
func (a *Agent) runTracker(ctx context.Context, tr tracker.Tracker) {
	a.src = &ebpfSource{volumeSet: a.vols, tr: tr}
	a.lostSeen = tr.Lost()
	tctx, cancel := context.WithCancel(ctx)
	a.trCancel, a.trDone = cancel, make(chan struct{})
	vols := a.vols.vols
	go func() {
		defer close(a.trDone)
		if err := tr.Run(tctx, func(vol int, first, last uint64) { vols[vol].dirty.Mark(first, last) }); err != nil && tctx.Err() == nil {
			a.log.Warn("the eBPF tracker stopped; rescanning", "err", err)
			a.setRescan("the eBPF tracker stopped: " + err.Error())
		}
	}()
}

// stopTracker stops the eBPF tracker and waits for its goroutine.
func (a *Agent) stopTracker() {
	es, ok := a.src.(*ebpfSource)
	if !ok {
		return
	}
	a.trCancel()
	<-a.trDone
	es.tr.Close()
	a.src = &scanSource{a.vols}
}

// restartTracker follows a change of the store's block size: marks are per block.
func (a *Agent) restartTracker(ctx context.Context, blockSize int) {
	a.stopTracker()
	a.vols.blockSize = blockSize
	a.saveBlockSize()
	a.st.mu.Lock()
	for _, v := range a.vols.vols {
		v.table = nil // for this block size, loaded again
	}
	a.st.mu.Unlock()
	a.useVolumes(a.vols.vols)
	a.startTracker(ctx)
	a.setRescan("the staging store's block size changed")
}

// setRescan makes the next session rescan every volume under a new generation.
func (a *Agent) setRescan(reason string) {
	a.st.mu.Lock()
	defer a.st.mu.Unlock()
	if !a.rescan {
		a.log.Info("a rescan is needed", "reason", reason)
	}
	a.rescan = true
	a.st.Generation++
	if err := a.saveGeneration(a.st.Generation); err != nil {
		a.log.Warn("cannot save the tracker generation", "err", err)
	}
}

// takeRescan reports whether the next session rescans, and clears it.
func (a *Agent) takeRescan() bool {
	a.st.mu.Lock()
	defer a.st.mu.Unlock()
	r := a.rescan
	a.rescan = false
	return r
}

func (a *Agent) reportVolumes(ctx context.Context) {
	for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
		_, err := a.cfg.ControlPlane.SetVolumes(ctx, a.cfg.ServerID, apiVolumes(a.vols.vols))
		if err == nil {
			return
		}
		a.log.Warn("cannot report the volumes", "err", err)
		sleep(ctx, time.Duration(attempt+1)*time.Second)
	}
}

// State files in the state directory.
func (a *Agent) path(name string) string { return filepath.Join(a.cfg.StateDir, name) }

// bumpGeneration starts a new tracker generation (st.Generation), one past the saved one.
func (a *Agent) bumpGeneration() error {
	var g uint64
	if b, err := os.ReadFile(a.path("generation")); err == nil && len(b) == 8 {
		g = binary.BigEndian.Uint64(b)
	}
	a.st.setGeneration(g + 1)
	return a.saveGeneration(g + 1)
}

func (a *Agent) saveGeneration(g uint64) error {
	return atomicfile.WriteFile(a.path("generation"), binary.BigEndian.AppendUint64(nil, g), 0o600)
}

func (a *Agent) loadBlockSize() int {
	if b, err := os.ReadFile(a.path("blocksize")); err == nil && len(b) == 4 {
		if n := int(binary.BigEndian.Uint32(b)); n >= 4096 && n <= 4<<20 {
			return n
		}
	}
	return 64 << 10
}

func (a *Agent) saveBlockSize() {
	_ = atomicfile.WriteFile(a.path("blocksize"), binary.BigEndian.AppendUint32(nil, uint32(a.vols.blockSize)), 0o600)
}

func (a *Agent) tablePath(v *volume) string { return a.path("hashes-" + v.Name) }

// saveTables writes every volume's hash table (what the replica holds) to disk.
func (a *Agent) saveTables() {
	a.st.mu.Lock()
	vols := a.vols.vols
	tables := make([]*tracker.HashTable, len(vols))
	for i, v := range vols {
		tables[i] = v.table
	}
	a.st.mu.Unlock()
	for i, v := range vols {
		if t := tables[i]; t != nil {
			if err := t.Save(a.tablePath(v)); err != nil {
				a.log.Warn("cannot save a hash table; a restart resends more", "volume", v.Name, "err", err)
			}
		}
	}
}

// errVolumesChanged ends a session when disks appeared, went or changed size.
var errVolumesChanged = errors.New("the server's volumes changed")

// volumesChanged looks for new disks (unless ignoreNew, or the volumes were named at
// install) and for volumes whose size changed.
func (a *Agent) volumesChanged(ignoreNew bool) bool {
	paths, err := a.wantedVolumes(ignoreNew)
	if err != nil || len(paths) != len(a.vols.vols) {
		return err == nil
	}
	for i, p := range paths {
		v := a.vols.vols[i]
		if v.Path != p {
			return true
		}
		tv, err := tracker.OpenVolume(p)
		if err != nil {
			continue
		}
		size := tv.Size()
		tv.Close()
		if size != v.SizeBytes {
			return true
		}
	}
	return false
}

// wantedVolumes lists the volumes to replicate now: the configured ones, or the disks
// found (only those replicated already when new disks are ignored).
func (a *Agent) wantedVolumes(ignoreNew bool) ([]string, error) {
	paths, err := discover(a.cfg.Volumes)
	if err != nil || len(a.cfg.Volumes) > 0 || !ignoreNew {
		return paths, err
	}
	known := map[string]bool{}
	for _, v := range a.vols.vols {
		known[v.Path] = true
	}
	var out []string
	for _, p := range paths {
		if known[p] {
			out = append(out, p)
		}
	}
	return out, nil
}

// reopenVolumes opens the volumes as they are now, reports them, and restarts
// tracking: every volume is rescanned (only what differs is sent; new ones whole).
func (a *Agent) reopenVolumes(ctx context.Context, ignoreNew bool) error {
	paths, err := a.wantedVolumes(ignoreNew)
	if err != nil {
		return err
	}
	vols, err := openVolumes(paths)
	if err != nil {
		return err
	}
	a.stopTracker()
	a.saveTables()
	old := a.vols.vols
	a.useVolumes(vols)
	closeVolumes(old)
	a.startTracker(ctx)
	a.setRescan("the server's volumes changed")
	a.log.Info("volumes changed", "volumes", len(vols))
	a.reportVolumes(ctx)
	return nil
}
