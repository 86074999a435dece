package api

import (
	"regexp"
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
	JobID                string    `json:"jobId"` // the REVERSE_REPLICATION job that follows it
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
// point written onto Into, only the blocks that differ. Into is a registered instance
// (the origin's machine: stopped, and tagged as launch into existing requires), a
// failback client (a machine booted from the rescue media), whose Disk it writes
// (default: the smallest disk large enough), or FailbackIntoNew.
type FailbackRequest struct {
	Into string `json:"into"`
	Disk string `json:"disk,omitempty"`
	// NoStart leaves the instance stopped once written (a machine you boot yourself).
	NoStart bool `json:"noStart,omitempty"`
}

// Validate checks a failback request.
func (r FailbackRequest) Validate() error {
	if r.Into != FailbackIntoNew && !ValidID(PrefixInstance, r.Into) && !ValidID(PrefixFailbackClient, r.Into) {
		return Invalid("into %q must name a registered instance (lifeboat instances list), a failback client (lifeboat failback-client list), or be %q (a new machine at the origin site)", r.Into, FailbackIntoNew)
	}
	if r.Disk != "" && !diskNameRE.MatchString(r.Disk) {
		return Invalid("disk %q is not a disk name such as sda or vda", r.Disk)
	}
	return nil
}

var diskNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,31}$`)

// FailbackIntoNew, as FailbackRequest.Into, fails back into a new machine at the origin
// site: an instance the control plane makes (its disks under its data directory).
const FailbackIntoNew = "new"

// FailbackClientHeader carries a failback client's credentials ("ID SECRET") on its
// calls after registration.
const FailbackClientHeader = "X-Lifeboat-Failback-Client"

// DiffContentType is the answer to a failback client's block hashes: the extent stream
// of the export (docs/recovery.md) whose extents are the blocks to write — and only
// they: what no extent covers is left as it is.
const DiffContentType = "application/vnd.lifeboat.diff"

// MaxFailbackDisks bounds the disks a failback client reports.
const MaxFailbackDisks = 64

// FailbackDisk is a disk of a failback client's machine.
type FailbackDisk struct {
	Name      string `json:"name"` // kernel name: sda, vda, nvme0n1
	SizeBytes int64  `json:"sizeBytes"`
	Model     string `json:"model,omitempty"`
}

// FailbackClient is a machine booted from Lifeboat's rescue media, registered with a
// failback install token, waiting to have a recovery point written onto one of its disks.
type FailbackClient struct {
	ID         string              `json:"id"`
	Hostname   string              `json:"hostname"`
	Disks      []FailbackDisk      `json:"disks"`
	Assignment *FailbackAssignment `json:"assignment,omitempty"`
	Progress   *FailbackProgress   `json:"progress,omitempty"`
	CreatedAt  time.Time           `json:"createdAt"`
	LastSeenAt time.Time           `json:"lastSeenAt"`
}

// FailbackClientList lists an account's failback clients, newest first.
type FailbackClientList struct {
	Items []FailbackClient `json:"items"`
}

// FailbackAssignment is what a failback client is asked to write: Disk, made equal to
// an image of SizeBytes in blocks of BlockSize (the job's converted PIT).
type FailbackAssignment struct {
	JobID              string `json:"jobId"`
	RecoveryInstanceID string `json:"recoveryInstanceId"`
	Disk               string `json:"disk"`
	SizeBytes          int64  `json:"sizeBytes"`
	BlockSize          int    `json:"blockSize"`
}

// FailbackProgress is a failback client's report of its write.
type FailbackProgress struct {
	JobID        string `json:"jobId"`
	DoneBytes    int64  `json:"doneBytes"` // of the disk, compared or written
	TotalBytes   int64  `json:"totalBytes"`
	WrittenBytes int64  `json:"writtenBytes"` // blocks that differed, written
	Done         bool   `json:"done"`         // every block written and synced; the disk is bootable again
	Error        string `json:"error,omitempty"`
}

// RegisterFailbackClientRequest registers a failback client (install token of scope
// failback).
type RegisterFailbackClientRequest struct {
	Hostname string         `json:"hostname"`
	Disks    []FailbackDisk `json:"disks"`
}

// Validate bounds a failback client's registration.
func (r RegisterFailbackClientRequest) Validate() error {
	if r.Hostname == "" || len(r.Hostname) > 253 || !printableRE.MatchString(r.Hostname) {
		return Invalid("hostname must be 1-253 printable characters")
	}
	if len(r.Disks) == 0 || len(r.Disks) > MaxFailbackDisks {
		return Invalid("a failback client reports 1 to %d disks, not %d", MaxFailbackDisks, len(r.Disks))
	}
	for _, d := range r.Disks {
		if !diskNameRE.MatchString(d.Name) || d.SizeBytes <= 0 || d.SizeBytes > 1<<50 || len(d.Model) > 128 || !printableRE.MatchString(d.Model) {
			return Invalid("disk %q: a kernel disk name, a size of 1 byte to 1 PiB and a printable model of at most 128 characters", d.Name)
		}
	}
	return nil
}

// RegisterFailbackClientResponse gives the client its id and the secret of its later calls.
type RegisterFailbackClientResponse struct {
	Client FailbackClient `json:"client"`
	Secret string         `json:"secret"`
}

// MaxDiffHashes bounds the block hashes of one diff request (within the API's 1 MiB bodies as JSON numbers).
const MaxDiffHashes = 1 << 15

// FailbackDiffRequest gives the XXH3-64 hashes of blocks Start, Start+1, … of the
// failback client's disk; the answer (DiffContentType) holds the blocks that differ.
type FailbackDiffRequest struct {
	JobID  string   `json:"jobId"`
	Start  uint64   `json:"start"`
	Hashes []uint64 `json:"hashes"`
}

// Validate bounds a diff request.
func (r FailbackDiffRequest) Validate() error {
	if !ValidID(PrefixJob, r.JobID) {
		return Invalid("jobId %q is not a job id", r.JobID)
	}
	if len(r.Hashes) == 0 || len(r.Hashes) > MaxDiffHashes {
		return Invalid("a diff request carries 1 to %d block hashes, not %d", MaxDiffHashes, len(r.Hashes))
	}
	return nil
}

// Validate bounds a progress report.
func (p FailbackProgress) Validate() error {
	if !ValidID(PrefixJob, p.JobID) || p.DoneBytes < 0 || p.TotalBytes < 0 || p.WrittenBytes < 0 || len(p.Error) > 1024 {
		return Invalid("a progress report names its job, counts bytes from 0, and says an error in at most 1024 characters")
	}
	return nil
}
