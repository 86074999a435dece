package api

import (
	"regexp"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/volspec"
)

// Data replication states, as AWS DRS names them (docs/architecture.md §5).
const (
	StateStopped          = "STOPPED"
	StateInitiating       = "INITIATING"
	StateInitialSync      = "INITIAL_SYNC"
	StateBacklog          = "BACKLOG"
	StateCreatingSnapshot = "CREATING_SNAPSHOT"
	StateContinuous       = "CONTINUOUS"
	StatePaused           = "PAUSED"
	StateRescan           = "RESCAN"
	StateStalled          = "STALLED"
	StateDisconnected     = "DISCONNECTED"
)

// DataReplicationStates lists every state, in the order of a server's life.
var DataReplicationStates = []string{
	StateStopped, StateInitiating, StateInitialSync, StateBacklog, StateCreatingSnapshot,
	StateContinuous, StatePaused, StateRescan, StateStalled, StateDisconnected,
}

// ValidState reports whether s is a data replication state.
func ValidState(s string) bool {
	for _, v := range DataReplicationStates {
		if s == v {
			return true
		}
	}
	return false
}

// Replication error codes a person can act on. Reporters may use others of the same form.
const (
	ErrAgentNotSeen          = "AGENT_NOT_SEEN"
	ErrNotConverging         = "NOT_CONVERGING"
	ErrUnstableNetwork       = "UNSTABLE_NETWORK"
	ErrSnapshotsFailure      = "SNAPSHOTS_FAILURE"
	ErrStagingStorageFull    = "STAGING_STORAGE_FULL"
	ErrReplicatorNotAssigned = "REPLICATOR_NOT_ASSIGNED"
	ErrFreezeFailed          = "FREEZE_FAILED"
	ErrTrackerEventsLost     = "TRACKER_EVENTS_LOST"
	ErrVolumeNotAccessible   = "VOLUME_NOT_ACCESSIBLE"
	// Notices: replication works, its points are degraded.
	ErrPointsCrashConsistent = "POINTS_CRASH_CONSISTENT" // points are taken without a freeze
	ErrPointIntervalWidened  = "POINT_INTERVAL_WIDENED"  // points are taken less often than set
)

// Initiation step statuses.
const (
	StepNotStarted = "NOT_STARTED"
	StepInProgress = "IN_PROGRESS"
	StepSucceeded  = "SUCCEEDED"
	StepFailed     = "FAILED"
	StepSkipped    = "SKIPPED"
)

// The initiation steps an agent goes through while INITIATING, in order (DRS's names).
const (
	InitiationRegisterAgent     = "REGISTER_AGENT"
	InitiationConnectAgent      = "CONNECT_AGENT_TO_REPLICATION_SERVER"
	InitiationStartDataTransfer = "START_DATA_TRANSFER"
)

// NewInitiationSteps are the initiation steps of an agent that registered and has yet
// to connect to its replication server.
func NewInitiationSteps() []InitiationStep {
	return []InitiationStep{
		{Name: InitiationRegisterAgent, Status: StepSucceeded},
		{Name: InitiationConnectAgent, Status: StepNotStarted},
		{Name: InitiationStartDataTransfer, Status: StepNotStarted},
	}
}

// InitiationPassed returns steps with each one SUCCEEDED but those SKIPPED: what a
// server whose data flows has been through. steps itself is left unchanged.
func InitiationPassed(steps []InitiationStep) []InitiationStep {
	if len(steps) == 0 {
		steps = NewInitiationSteps()
	}
	out := make([]InitiationStep, len(steps))
	for i, s := range steps {
		if s.Status != StepSkipped {
			s.Status = StepSucceeded
		}
		out[i] = s
	}
	return out
}

// Transferring reports whether data flows from the agent to its replication server in
// state: the server is past its initiation.
func Transferring(state string) bool {
	switch state {
	case StateInitialSync, StateBacklog, StateCreatingSnapshot, StateContinuous, StateRescan:
		return true
	}
	return false
}

// ReplicationState is a source server's replication as its agent and replicator report
// it (docs/architecture.md §5). ReadyForRecovery is derived by the control plane, never reported.
type ReplicationState struct {
	DataReplicationState string `json:"dataReplicationState"`
	// ReadyForRecovery: a consistent recovery snapshot exists and the initial sync is
	// done, so a recovery launched now has a point to start from.
	ReadyForRecovery         bool                  `json:"readyForRecovery"`
	InitiationSteps          []InitiationStep      `json:"initiationSteps,omitempty"`
	InitialSyncPercent       *float64              `json:"initialSyncPercent,omitempty"`
	Error                    *ReplicationError     `json:"error,omitempty"`
	LagSeconds               *float64              `json:"lagSeconds,omitempty"` // time since the replica last matched the source
	BacklogBytes             int64                 `json:"backlogBytes"`
	ETASeconds               *float64              `json:"etaSeconds,omitempty"`
	LastConsistencyPoint     *ConsistencyPointInfo `json:"lastConsistencyPoint,omitempty"`
	LastFreezeMs             *float64              `json:"lastFreezeMs,omitempty"`
	Tracker                  string                `json:"tracker,omitempty"` // ebpf or scan
	ThroughputBytesPerSecond int64                 `json:"throughputBytesPerSecond"`
	ReplicatedBytes          int64                 `json:"replicatedBytes"`
	TotalBytes               int64                 `json:"totalBytes"`
	UpdatedAt                time.Time             `json:"updatedAt"`

	// LastRecoverablePoint is the newest filesystem- or crash-consistent point (the last
	// one may be a newer point of level none); derived by the control plane.
	LastRecoverablePoint *ConsistencyPointInfo `json:"lastRecoverablePoint,omitempty"`
	// LastDataAt: the replica held everything the source had written up to this time, as
	// the agent last reported it (the agent's clock: the last time its dirty sets were
	// empty and all it had sent was acknowledged). DataThrough adds the points sealed since.
	LastDataAt *time.Time `json:"lastDataAt,omitempty"`
}

// InitiationStep is one step of INITIATING.
type InitiationStep struct {
	Name   string `json:"name"`   // e.g. CONNECT_AGENT_TO_REPLICATION_SERVER
	Status string `json:"status"` // NOT_STARTED, IN_PROGRESS, SUCCEEDED, FAILED or SKIPPED
}

// ReplicationError says why replication is not healthy, in words a person can act on.
type ReplicationError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ConsistencyPointInfo is the last consistency point sealed as a recovery snapshot.
type ConsistencyPointInfo struct {
	Time       time.Time         `json:"time"`
	Level      consistency.Level `json:"level"`
	SnapshotID string            `json:"snapshotId,omitempty"`
}

// ReplicationStateUpdate changes part of a source server's state: fields that are absent
// keep their value. ClearError removes the error.
type ReplicationStateUpdate struct {
	DataReplicationState     *string               `json:"dataReplicationState,omitempty"`
	InitiationSteps          []InitiationStep      `json:"initiationSteps,omitempty"`
	InitialSyncPercent       *float64              `json:"initialSyncPercent,omitempty"`
	Error                    *ReplicationError     `json:"error,omitempty"`
	ClearError               bool                  `json:"clearError,omitempty"`
	LagSeconds               *float64              `json:"lagSeconds,omitempty"`
	BacklogBytes             *int64                `json:"backlogBytes,omitempty"`
	ETASeconds               *float64              `json:"etaSeconds,omitempty"`
	LastConsistencyPoint     *ConsistencyPointInfo `json:"lastConsistencyPoint,omitempty"`
	LastFreezeMs             *float64              `json:"lastFreezeMs,omitempty"`
	Tracker                  *string               `json:"tracker,omitempty"`
	ThroughputBytesPerSecond *int64                `json:"throughputBytesPerSecond,omitempty"`
	ReplicatedBytes          *int64                `json:"replicatedBytes,omitempty"`
	TotalBytes               *int64                `json:"totalBytes,omitempty"`

	// LastDataAt (agents): the replica matched the source as of this time. An update
	// with lagSeconds and no lastDataAt (older agents) sets it to its receipt minus the lag.
	LastDataAt *time.Time `json:"lastDataAt,omitempty"`
}

var (
	errorCodeRE = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)
	stepNameRE  = errorCodeRE
)

// Validate checks every field that is present.
func (u ReplicationStateUpdate) Validate() error {
	if u.DataReplicationState != nil && !ValidState(*u.DataReplicationState) {
		return Invalid("dataReplicationState %q is not a state: use one of %v", *u.DataReplicationState, DataReplicationStates)
	}
	if len(u.InitiationSteps) > 32 {
		return Invalid("at most 32 initiation steps are allowed, not %d", len(u.InitiationSteps))
	}
	for _, s := range u.InitiationSteps {
		if !stepNameRE.MatchString(s.Name) {
			return Invalid("initiation step name %q must be UPPER_CASE letters, digits and '_'", s.Name)
		}
		switch s.Status {
		case StepNotStarted, StepInProgress, StepSucceeded, StepFailed, StepSkipped:
		default:
			return Invalid("initiation step %s status must be NOT_STARTED, IN_PROGRESS, SUCCEEDED, FAILED or SKIPPED, not %q", s.Name, s.Status)
		}
	}
	if p := u.InitialSyncPercent; p != nil && !(*p >= 0 && *p <= 100) {
		return Invalid("initialSyncPercent must be 0 to 100, not %v", *p)
	}
	if u.Error != nil {
		if u.ClearError {
			return Invalid("error and clearError cannot be given together")
		}
		if !errorCodeRE.MatchString(u.Error.Code) {
			return Invalid("error code %q must be UPPER_CASE letters, digits and '_', such as AGENT_NOT_SEEN", u.Error.Code)
		}
		if u.Error.Message == "" || len(u.Error.Message) > 1024 {
			return Invalid("error %s needs a message of 1 to 1024 bytes saying what to do", u.Error.Code)
		}
	}
	for name, v := range map[string]*float64{"lagSeconds": u.LagSeconds, "etaSeconds": u.ETASeconds, "lastFreezeMs": u.LastFreezeMs} {
		if v != nil && !(*v >= 0 && *v < 1e12) {
			return Invalid("%s must be a number of 0 or more, not %v", name, *v)
		}
	}
	for name, v := range map[string]*int64{"backlogBytes": u.BacklogBytes, "throughputBytesPerSecond": u.ThroughputBytesPerSecond, "replicatedBytes": u.ReplicatedBytes, "totalBytes": u.TotalBytes} {
		if v != nil && *v < 0 {
			return Invalid("%s must be 0 or more, not %d", name, *v)
		}
	}
	if c := u.LastConsistencyPoint; c != nil {
		if !c.Level.Valid() || c.Time.IsZero() {
			return Invalid("lastConsistencyPoint needs a time and a level of filesystem, crash or none")
		}
		if c.SnapshotID != "" && !ValidID(PrefixSnapshot, c.SnapshotID) {
			return Invalid("lastConsistencyPoint.snapshotId %q is not a snapshot id (pit-…)", c.SnapshotID)
		}
	}
	if u.LastDataAt != nil && u.LastDataAt.IsZero() {
		return Invalid("lastDataAt must be a time; leave it out when the replica never matched the source")
	}
	if t := u.Tracker; t != nil && *t != "" && *t != "ebpf" && *t != "scan" {
		return Invalid("tracker must be ebpf or scan, not %q", *t)
	}
	return nil
}

// Apply returns s with the update applied and ReadyForRecovery derived again.
func (s ReplicationState) Apply(u ReplicationStateUpdate, now time.Time) ReplicationState {
	was := s.DataReplicationState
	if u.DataReplicationState != nil {
		s.DataReplicationState = *u.DataReplicationState
	}
	s.InitiationSteps = s.stepsAfter(u, was)
	if u.InitialSyncPercent != nil {
		s.InitialSyncPercent = u.InitialSyncPercent
	}
	if u.ClearError {
		s.Error = nil
	}
	if u.Error != nil {
		s.Error = u.Error
	}
	if u.LagSeconds != nil {
		s.LagSeconds = u.LagSeconds
	}
	switch {
	case u.LastDataAt != nil:
		t := u.LastDataAt.UTC()
		s.LastDataAt = &t
	case u.LagSeconds != nil:
		t := now.Add(-time.Duration(*u.LagSeconds * float64(time.Second))).UTC()
		s.LastDataAt = &t
	}
	if u.BacklogBytes != nil {
		s.BacklogBytes = *u.BacklogBytes
	}
	if u.ETASeconds != nil {
		s.ETASeconds = u.ETASeconds
	}
	if u.LastConsistencyPoint != nil && (s.LastConsistencyPoint == nil || !u.LastConsistencyPoint.Time.Before(s.LastConsistencyPoint.Time)) {
		s.LastConsistencyPoint = u.LastConsistencyPoint
	}
	s.LastRecoverablePoint = s.NewestRecoverablePoint()
	if p := u.LastConsistencyPoint; p != nil && p.Level.Recoverable() &&
		(s.LastRecoverablePoint == nil || !p.Time.Before(s.LastRecoverablePoint.Time)) {
		s.LastRecoverablePoint = p
	}
	if u.LastFreezeMs != nil {
		s.LastFreezeMs = u.LastFreezeMs
	}
	if u.Tracker != nil {
		s.Tracker = *u.Tracker
	}
	if u.ThroughputBytesPerSecond != nil {
		s.ThroughputBytesPerSecond = *u.ThroughputBytesPerSecond
	}
	if u.ReplicatedBytes != nil {
		s.ReplicatedBytes = *u.ReplicatedBytes
	}
	if u.TotalBytes != nil {
		s.TotalBytes = *u.TotalBytes
	}
	s.UpdatedAt = now
	s.ReadyForRecovery = s.Ready()
	return s
}

// stepsAfter is the initiation steps once u is applied to a state that was was: those
// u reports, else what u's state says of them.
func (s ReplicationState) stepsAfter(u ReplicationStateUpdate, was string) []InitiationStep {
	switch {
	case u.InitiationSteps != nil:
		return u.InitiationSteps
	case u.DataReplicationState == nil:
	case Transferring(*u.DataReplicationState):
		// Agents that report the steps only while INITIATING would leave them as they
		// were (NOT_STARTED, or IN_PROGRESS) once data flows.
		return InitiationPassed(s.InitiationSteps)
	case *u.DataReplicationState == StateInitiating && was != StateInitiating:
		// Started or resumed by an operator: the steps are to come again.
		return NewInitiationSteps()
	}
	return s.InitiationSteps
}

// Ready derives ReadyForRecovery: a filesystem- or crash-consistent point exists (a
// newer point of level none does not take it away) and the server is past its initial sync.
func (s ReplicationState) Ready() bool {
	if s.NewestRecoverablePoint() == nil {
		return false
	}
	return s.DataReplicationState != StateInitiating && s.DataReplicationState != StateInitialSync
}

// NewestRecoverablePoint is the newest filesystem- or crash-consistent point the state
// knows of (states stored before LastRecoverablePoint existed: the last point, when it
// is one); nil when there is none.
func (s ReplicationState) NewestRecoverablePoint() *ConsistencyPointInfo {
	if s.LastRecoverablePoint != nil {
		return s.LastRecoverablePoint
	}
	if c := s.LastConsistencyPoint; c != nil && c.Level.Recoverable() {
		return c
	}
	return nil
}

// DataThrough is the newest time the control plane knows the replica held everything
// the source had written: the agent's LastDataAt, or the last consistency point when it
// is newer (a sealed PIT holds every write before it). Zero when neither is known.
func (s ReplicationState) DataThrough() time.Time {
	var t time.Time
	if s.LastDataAt != nil {
		t = *s.LastDataAt
	}
	for _, p := range []*ConsistencyPointInfo{s.LastConsistencyPoint, s.LastRecoverablePoint} {
		if p != nil && p.Time.After(t) {
			t = p.Time
		}
	}
	return t
}

// NewReplicationState is the state of a source server just registered: INITIATING, with
// its agent's registration done and the rest to come (the agent reports the steps from
// there, replacing the list).
func NewReplicationState(now time.Time) ReplicationState {
	return ReplicationState{
		DataReplicationState: StateInitiating,
		InitiationSteps:      NewInitiationSteps(),
		UpdatedAt:            now,
	}
}

// Validate checks a snapshot record sent by a replicator.
func (r CreateRecoverySnapshotRequest) Validate() error {
	if r.ID != "" && !ValidID(PrefixSnapshot, r.ID) {
		return Invalid("id %q is not a snapshot id: use pit- and 17 lowercase hex digits, or leave it empty", r.ID)
	}
	if r.Time.IsZero() {
		return Invalid("time, the consistency point of the snapshot, is required")
	}
	if !r.Level.Valid() {
		return Invalid("level must be filesystem, crash or none, not %v", r.Level)
	}
	if len(r.Volumes) == 0 {
		return Invalid("a snapshot needs at least one volume")
	}
	for _, v := range r.Volumes {
		if v.SizeBytes < 0 || len(v.Ref) > 1024 {
			return Invalid("snapshot volume %q needs a size of 0 or more and a ref of at most 1024 bytes", v.Name)
		}
	}
	if err := volspec.Check(len(r.Volumes), func(i int) (string, uint64) { return r.Volumes[i].Name, uint64(r.Volumes[i].SizeBytes) }); err != nil {
		return Invalid("snapshot: %s", err)
	}
	if r.SizeBytes < 0 {
		return Invalid("sizeBytes must be 0 or more, not %d", r.SizeBytes)
	}
	if !isLowerHex(r.ManifestDigest, 64) && r.ManifestDigest != "" {
		return Invalid("manifestDigest must be 64 lowercase hex digits")
	}
	if len(r.StagingStoreID) > 64 || !printableRE.MatchString(r.StagingStoreID) {
		return Invalid("stagingStoreId must be at most 64 printable characters")
	}
	return nil
}

// isLowerHex reports whether s is n lowercase hex digits.
func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
