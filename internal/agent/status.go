package agent

import (
	"context"
	"encoding/json"
	"os"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
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
	LastPoint      *api.ConsistencyPointInfo `json:"lastConsistencyPoint,omitempty"`
	LastFreezeMs   *float64                  `json:"lastFreezeMs,omitempty"`
	UpdatedAt      time.Time                 `json:"updatedAt"`
}

// status is the agent's mutable view; fields are guarded by Agent.mu except counters.
type status struct {
	ServerID    string
	State       string
	Error       *api.ReplicationError
	Steps       []api.InitiationStep
	Generation  uint64
	Replicator  string
	scanning    bool // an initial sync or a rescan is running
	initial     bool // it is the initial sync (no replica existed)
	lastMatched time.Time
	lastPoint   *api.ConsistencyPointInfo
	lastFreeze  *float64
	changed     bool // the state or error changed: report now

	scanDone, scanTotal atomic.Int64
	sentBytes           atomic.Int64
	sentBlocks          atomic.Int64
	sentZero            atomic.Int64
	backlog             func() int64 // set by a live session
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

func (a *Agent) setState(state string, e *api.ReplicationError) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.st.State != state || errCode(a.st.Error) != errCode(e) {
		a.st.changed = true
	}
	a.st.State, a.st.Error = state, e
	if state != api.StateInitiating {
		a.st.Steps = nil
	}
}

func errCode(e *api.ReplicationError) string {
	if e == nil {
		return ""
	}
	return e.Code
}

func (a *Agent) currentState() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.st.State == api.StatePaused || a.st.State == api.StateStopped {
		return api.StateInitiating
	}
	return a.st.State
}

// setInitiating reports the INITIATING step reached.
func (a *Agent) setInitiating(step, status string, e *api.ReplicationError) {
	steps := []api.InitiationStep{
		{Name: "REGISTER_AGENT", Status: api.StepSucceeded},
		{Name: "CONNECT_AGENT_TO_REPLICATION_SERVER", Status: api.StepNotStarted},
		{Name: "START_DATA_TRANSFER", Status: api.StepNotStarted},
	}
	for i := range steps {
		if steps[i].Name == step {
			steps[i].Status = status
			for j := 1; j < i; j++ {
				steps[j].Status = api.StepSucceeded
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.st.State, a.st.Error, a.st.Steps, a.st.changed = api.StateInitiating, e, steps, true
}

// reportLoop reports the state to the control plane every Report interval (and at once
// when it changes), and writes the status file.
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
			// What the replica holds, so that a crash of the agent resends little.
			a.saveTables()
			lastSave = time.Now()
		}
		a.mu.Lock()
		due := a.st.changed || time.Since(lastReport) >= a.cfg.Report
		a.mu.Unlock()
		if !due {
			continue
		}
		now := time.Now()
		sent := a.st.sentBytes.Load()
		if el := now.Sub(lastAt).Seconds(); el > 0 {
			cur := float64(sent-lastSent) / el
			rate = 0.5*rate + 0.5*cur
		}
		lastSent, lastAt = sent, now
		s := a.snapshot(now, int64(rate))
		u := api.ReplicationStateUpdate{DataReplicationState: &s.State, Error: s.Error, ClearError: s.Error == nil,
			BacklogBytes: &s.BacklogBytes, ThroughputBytesPerSecond: &s.Throughput, ReplicatedBytes: &s.SentBytes,
			TotalBytes: &s.ScanTotalBytes, Tracker: &s.Tracker, LagSeconds: s.LagSeconds, ETASeconds: s.ETASeconds,
			InitialSyncPercent: s.Percent, LastFreezeMs: s.LastFreezeMs}
		a.mu.Lock()
		u.InitiationSteps = a.st.Steps
		a.st.changed = false
		a.mu.Unlock()
		if _, err := a.cfg.ControlPlane.UpdateReplicationState(ctx, a.cfg.ServerID, u); err != nil && ctx.Err() == nil {
			a.log.Debug("reporting the state failed", "err", err)
			a.mu.Lock()
			a.st.changed = true
			a.mu.Unlock()
		}
		lastReport = now
		if b, err := json.MarshalIndent(s, "", "  "); err == nil {
			_ = pki.WriteFileAtomic(StatusFile(a.cfg.StateDir), b, 0o600)
		}
	}
}

// snapshot computes the status now.
func (a *Agent) snapshot(now time.Time, rate int64) Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{ServerID: a.cfg.ServerID, State: a.st.State, Error: a.st.Error, Tracker: a.trName, TrackerReason: a.trReason,
		FreezeReason: a.freezeReason, Generation: a.generation, Replicator: a.st.Replicator, Volumes: apiVolumes(a.vols),
		ScanDoneBytes: a.st.scanDone.Load(), ScanTotalBytes: a.st.scanTotal.Load(), SentBytes: a.st.sentBytes.Load(),
		SentBlocks: a.st.sentBlocks.Load(), SentZeroBlocks: a.st.sentZero.Load(), Throughput: rate, LastPoint: a.st.lastPoint, LastFreezeMs: a.st.lastFreeze, UpdatedAt: now}
	if a.st.backlog != nil {
		s.BacklogBytes = a.st.backlog()
	}
	if a.st.scanning && s.ScanTotalBytes > 0 {
		p := 100 * float64(s.ScanDoneBytes) / float64(s.ScanTotalBytes)
		s.Percent = &p
	}
	if rate > 0 && s.BacklogBytes > 0 {
		eta := float64(s.BacklogBytes) / float64(rate)
		s.ETASeconds = &eta
	}
	if !a.st.lastMatched.IsZero() {
		lag := now.Sub(a.st.lastMatched).Seconds()
		s.LagSeconds = &lag
	}
	return s
}
