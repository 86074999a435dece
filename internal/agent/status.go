package agent

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// Status is what `lifeboat agent status` shows: the agent writes it to its state
// directory with every report.
type Status struct {
	ServerID       string                    `json:"serverId"`
	State          string                    `json:"state"`
	Error          *api.ReplicationError     `json:"error,omitempty"`
	Tracker        string                    `json:"tracker"`
	TrackerReason  string                    `json:"trackerReason,omitempty"`
	FreezeReason   string                    `json:"freezeReason,omitempty"`
	Generation     uint64                    `json:"generation"`
	Replicator     string                    `json:"replicator,omitempty"`
	Volumes        []api.Volume              `json:"volumes"`
	ScanDoneBytes  int64                     `json:"scanDoneBytes"`
	ScanTotalBytes int64                     `json:"scanTotalBytes"`
	Percent        *float64                  `json:"percent,omitempty"`
	SentBytes      int64                     `json:"sentBytes"` // raw bytes of blocks sent
	SentBlocks     int64                     `json:"sentBlocks"`
	SentZeroBlocks int64                     `json:"sentZeroBlocks"` // of SentBlocks, all-zero ones (no payload)
	BacklogBytes   int64                     `json:"backlogBytes"`
	Throughput     int64                     `json:"throughputBytesPerSecond"`
	ETASeconds     *float64                  `json:"etaSeconds,omitempty"`
	LagSeconds     *float64                  `json:"lagSeconds,omitempty"`
	LastDataAt     *time.Time                `json:"lastDataAt,omitempty"` // the replica matched the source as of then
	LastPoint      *api.ConsistencyPointInfo `json:"lastConsistencyPoint,omitempty"`
	LastFreezeMs   *float64                  `json:"lastFreezeMs,omitempty"`
	UpdatedAt      time.Time                 `json:"updatedAt"`
}

// status is the agent's replication state as it is reported: the agent and its session
// write it, the report loop reads it. Fields are guarded by mu, counters are atomic.
type status struct {
	mu          sync.Mutex
	ServerID    string
	State       string
	Error       *api.ReplicationError
	Steps       []api.InitiationStep
	Generation  uint64 // the tracker generation: grows at every start and lost continuity
	Replicator  string
	tracker     string // the tracker's name …
	trackerWhy  string // … and why it is not eBPF
	freezeWhy   string // why points cannot be filesystem-consistent
	volumes     []api.Volume
	scanning    bool // an initial sync or a rescan is running
	initial     bool // it is the initial sync (no replica existed)
	lastMatched time.Time
	lastPoint   *api.ConsistencyPointInfo
	lastFreeze  *float64
	changed     bool          // the state or error changed: report now
	backlog     func() int64  // set by a live session
	metrics     *pointMetrics // points and freezes, for the agent's metrics (nil: none)

	scanDone, scanTotal atomic.Int64
	sentBytes           atomic.Int64
	sentBlocks          atomic.Int64
	sentZero            atomic.Int64
}

// StatusFile is where the agent writes its Status.
func StatusFile(stateDir string) string { return stateDir + "/status.json" }

// ReadStatus reads the status an agent wrote.
func ReadStatus(stateDir string) (Status, error) {
	var s Status
	b, err := os.ReadFile(StatusFile(stateDir))
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(b, &s)
}

// set sets the state and its error (nil: none).
func (st *status) set(state string, e *api.ReplicationError) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.State != state || errCode(st.Error) != errCode(e) {
		st.changed = true
	}
	st.State, st.Error = state, e
	switch {
	case api.Transferring(state):
		st.Steps = api.InitiationPassed(st.Steps)
	case e != nil:
		st.Steps = failInProgress(st.Steps)
	}
}

// failInProgress returns steps with the one IN_PROGRESS FAILED: it ended with an error.
func failInProgress(steps []api.InitiationStep) []api.InitiationStep {
	out := append([]api.InitiationStep(nil), steps...)
	for i := range out {
		if out[i].Status == api.StepInProgress {
			out[i].Status = api.StepFailed
		}
	}
	return out
}

// setError keeps the state and sets its error.
func (st *status) setError(e *api.ReplicationError) { st.set(st.current(), e) }

func errCode(e *api.ReplicationError) string {
	if e == nil {
		return ""
	}
	return e.Code
}

// current is the state a session goes on from: INITIATING after a pause or stop.
func (st *status) current() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.State == api.StatePaused || st.State == api.StateStopped {
		return api.StateInitiating
	}
	return st.State
}

// setInitiating reports the INITIATING step reached: the steps before it SUCCEEDED,
// those after it NOT_STARTED.
func (st *status) setInitiating(step, stepStatus string, e *api.ReplicationError) {
	steps := api.NewInitiationSteps()
	for i := range steps {
		if steps[i].Name == step {
			steps[i].Status = stepStatus
			for j := 1; j < i; j++ {
				steps[j].Status = api.StepSucceeded
			}
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.State, st.Error, st.Steps, st.changed = api.StateInitiating, e, steps, true
}

// startScan reports an initial sync or a rescan of volumes of total bytes.
func (st *status) startScan(initial bool, total int64) {
	st.mu.Lock()
	st.scanning, st.initial = true, initial
	st.mu.Unlock()
	st.scanTotal.Store(total)
	st.scanDone.Store(0)
	state := api.StateRescan
	if initial {
		state = api.StateInitialSync
	}
	st.set(state, nil)
}

// endScan reports the scan complete.
func (st *status) endScan() {
	st.mu.Lock()
	st.scanning = false
	st.mu.Unlock()
}

func (st *status) isScanning() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.scanning
}

// matched records that the replica matched the source as of at.
func (st *status) matched(at time.Time) {
	st.mu.Lock()
	st.lastMatched = at
	st.mu.Unlock()
}

// sealed records a PIT sealed by the replicator.
func (st *status) sealed(p api.ConsistencyPointInfo, freezeMs float64) {
	st.mu.Lock()
	st.lastPoint, st.lastFreeze, st.changed = &p, &freezeMs, true
	st.mu.Unlock()
	st.metrics.sealed(p.Level)
}

// lastSealed is the last PIT sealed (nil: none yet).
func (st *status) lastSealed() *api.ConsistencyPointInfo {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.lastPoint
}

// connected records the replicator a session sends to and how to measure its backlog
// (nil when the session ends).
func (st *status) connected(replicator string, backlog func() int64) {
	st.mu.Lock()
	if backlog != nil {
		st.Replicator = replicator
	}
	st.backlog = backlog
	st.mu.Unlock()
}

// setTracker records the tracker in use and why it is not eBPF.
func (st *status) setTracker(name, why string) {
	st.mu.Lock()
	st.tracker, st.trackerWhy = name, why
	st.mu.Unlock()
}

func (st *status) setGeneration(g uint64) {
	st.mu.Lock()
	st.Generation = g
	st.mu.Unlock()
}

// reportLoop reports the state to the control plane every Report interval (and at once
// when it changes), writes the status file, and saves the hash tables every 5 s so that
// a crash of the agent resends little.
func (a *Agent) reportLoop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var lastSent int64
	lastAt := time.Now()
	var rate float64
	var lastReport time.Time
	lastSave := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(lastSave) >= 5*time.Second {
			a.saveTables()
			lastSave = time.Now()
		}
		if !a.st.due(time.Since(lastReport) >= a.cfg.Report) {
			continue
		}
		now := time.Now()
		sent := a.st.sentBytes.Load()
		if el := now.Sub(lastAt).Seconds(); el > 0 {
			rate = 0.5*rate + 0.5*float64(sent-lastSent)/el
		}
		lastSent, lastAt = sent, now
		s, steps := a.st.snapshot(now, int64(rate))
		u := api.ReplicationStateUpdate{DataReplicationState: &s.State, Error: s.Error, ClearError: s.Error == nil,
			BacklogBytes: &s.BacklogBytes, ThroughputBytesPerSecond: &s.Throughput, ReplicatedBytes: &s.SentBytes,
			TotalBytes: &s.ScanTotalBytes, Tracker: &s.Tracker, LagSeconds: s.LagSeconds, LastDataAt: s.LastDataAt, ETASeconds: s.ETASeconds,
			InitialSyncPercent: s.Percent, LastFreezeMs: s.LastFreezeMs, InitiationSteps: steps}
		if _, err := a.cfg.ControlPlane.UpdateReplicationState(ctx, a.cfg.ServerID, u); err != nil && ctx.Err() == nil {
			a.log.Debug("reporting the state failed", "err", err)
			a.st.mu.Lock()
			a.st.changed = true
			a.st.mu.Unlock()
		}
		lastReport = now
		if b, err := json.MarshalIndent(s, "", "  "); err == nil {
			_ = atomicfile.WriteFile(StatusFile(a.cfg.StateDir), b, 0o600)
		}
	}
}

// due reports whether a report is due: the state changed, or late. It clears changed.
func (st *status) due(late bool) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	d := st.changed || late
	if d {
		st.changed = false
	}
	return d
}

// snapshot computes the status now, and the initiation steps: every report carries
// them, so that the control plane never keeps steps the agent has moved past.
func (st *status) snapshot(now time.Time, rate int64) (Status, []api.InitiationStep) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := Status{ServerID: st.ServerID, State: st.State, Error: st.Error, Tracker: st.tracker, TrackerReason: st.trackerWhy,
		FreezeReason: st.freezeWhy, Generation: st.Generation, Replicator: st.Replicator, Volumes: st.volumes,
		ScanDoneBytes: st.scanDone.Load(), ScanTotalBytes: st.scanTotal.Load(), SentBytes: st.sentBytes.Load(),
		SentBlocks: st.sentBlocks.Load(), SentZeroBlocks: st.sentZero.Load(), Throughput: rate, LastPoint: st.lastPoint,
		LastFreezeMs: st.lastFreeze, UpdatedAt: now}
	if st.backlog != nil {
		s.BacklogBytes = st.backlog()
	}
	if st.scanning && s.ScanTotalBytes > 0 {
		p := 100 * float64(s.ScanDoneBytes) / float64(s.ScanTotalBytes)
		s.Percent = &p
	}
	if rate > 0 && s.BacklogBytes > 0 {
		eta := float64(s.BacklogBytes) / float64(rate)
		s.ETASeconds = &eta
	}
	if !st.lastMatched.IsZero() {
		lag, at := now.Sub(st.lastMatched).Seconds(), st.lastMatched.UTC()
		s.LagSeconds, s.LastDataAt = &lag, &at
	}
	steps := st.Steps
	if steps == nil {
		steps = api.NewInitiationSteps()
	}
	return s, steps
}

// generation is the tracker generation.
func (st *status) generation() uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.Generation
}
