package api

import (
	"strconv"
	"strings"
	"time"
)

// Failback states of a recovery instance, as DRS names them (docs/failback.md).
const (
	FailbackNotStarted     = "FAILBACK_NOT_STARTED"      // no reversed replication yet
	FailbackInProgress     = "FAILBACK_IN_PROGRESS"      // reversed replication runs, no consistent PIT of it yet, or a failback launch runs
	FailbackReadyForLaunch = "FAILBACK_READY_FOR_LAUNCH" // the reversed source server is CONTINUOUS with a consistent PIT
	FailbackCompleted      = "FAILBACK_COMPLETED"        // a failback launch wrote the origin's machine
	FailbackError          = "FAILBACK_ERROR"            // the last failback step failed: see its job
)

// CodeReverseNotStarted answers a recovery instance's agent that asks for its reversed
// identity before anyone started reversed replication: it asks again later.
const CodeReverseNotStarted = "reverse_replication_not_started" // 409

// Files that recovery writes into a recovered Linux server for reversed replication
// (docs/recovery.md, Conversion; docs/failback.md).
const (
	// RecoveryInfoFile says what the server was recovered from (RecoveryInfo), with the
	// key its agent proves itself with; mode 0600.
	RecoveryInfoFile = "/etc/lifeboat/recovery-instance.json"
	// ReverseSeedDir holds, per recovered volume in launch order, the hash table of the
	// PIT it was written from (seed-0.hashes, …): what the reversed source server's
	// replica starts as, so that only blocks changed since travel.
	ReverseSeedDir = "/var/lib/lifeboat/reverse"
)

// RecoveryInfo is RecoveryInfoFile's content.
type RecoveryInfo struct {
	RecoveryInstanceID string `json:"recoveryInstanceId"`
	SourceServerID     string `json:"sourceServerId"`
	RecoverySnapshotID string `json:"recoverySnapshotId"`
	JobID              string `json:"jobId"`
	IsDrill            bool   `json:"isDrill"`
	ControlPlane       string `json:"controlPlane"`    // URL
	ControlPlanePin    string `json:"controlPlanePin"` // pin of its CA
	// ReverseKey proves to the control plane that the caller runs on this recovery
	// instance's disk: derived by the control plane from its master key and the
	// recovery instance's id, never stored elsewhere.
	ReverseKey string `json:"reverseKey,omitempty"`
}

// SeedTableFile is the seed hash table of the i-th recovered volume.
func SeedTableFile(dir string, i int) string {
	return strings.TrimSuffix(dir, "/") + "/seed-" + strconv.Itoa(i) + ".hashes"
}

// ReversedLink says that a source server is the reversed replication of a recovery
// instance, back to the origin of its source server.
type ReversedLink struct {
	RecoveryInstanceID   string `json:"recoveryInstanceId"`
	OriginSourceServerID string `json:"originSourceServerId"`
	SeedSnapshotID       string `json:"seedSnapshotId"` // the PIT its replica started as
}

// ReverseReplication is a recovery instance's reversed replication.
type ReverseReplication struct {
	RecoveryInstanceID   string    `json:"recoveryInstanceId"`
	SourceServerID       string    `json:"sourceServerId"` // the reversed source server
	OriginSourceServerID string    `json:"originSourceServerId"`
	SeedSnapshotID       string    `json:"seedSnapshotId"`
	FailbackState        string    `json:"failbackState"`
	CreatedAt            time.Time `json:"createdAt"`
}

// ReverseRegisterRequest is what a recovery instance's agent sends to get the identity
// of its reversed source server: a registration, proven by the instance's reverse key
// instead of an install token.
type ReverseRegisterRequest struct {
	RegisterSourceServerRequest
	RecoveryInstanceID string `json:"recoveryInstanceId"`
	ReverseKey         string `json:"reverseKey"`
}

// Validate checks a reverse registration. The machine id is the recovered copy's,
// which its source has too: it is reported, not used as identity.
func (r ReverseRegisterRequest) Validate() error {
	if !ValidID(PrefixRecoveryInstance, r.RecoveryInstanceID) {
		return Invalid("recoveryInstanceId %q is not a recovery instance id", r.RecoveryInstanceID)
	}
	if len(r.ReverseKey) < 32 || len(r.ReverseKey) > 128 {
		return Invalid("reverseKey must be the key recovery wrote into %s", RecoveryInfoFile)
	}
	return r.RegisterSourceServerRequest.Validate()
}

// FailbackRequest asks for a recovery instance's failback launch: its final consistency
// point written onto Into, a registered instance (the origin's machine: stopped, and
// tagged as launch into existing requires), only the blocks that differ.
type FailbackRequest struct {
	Into string `json:"into"`
	// NoStart leaves the instance stopped once written (a machine you boot yourself).
	NoStart bool `json:"noStart,omitempty"`
}

// Validate checks a failback request.
func (r FailbackRequest) Validate() error {
	if !ValidID(PrefixInstance, r.Into) {
		return Invalid("into %q must name a registered instance (lifeboat instances list): the origin's machine", r.Into)
	}
	return nil
}
