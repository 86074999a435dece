package api

import (
	"context"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"
)

// Job types, as DRS names them.
const (
	JobLaunch    = "LAUNCH"    // drill or recovery: launch recovery instances from PITs
	JobTerminate = "TERMINATE" // terminate recovery instances
	JobFailback  = "FAILBACK"  // write a recovery instance's final point onto the origin's machine
	// JobReverseReplication follows a recovery instance's reversed replication until it
	// is CONTINUOUS, with what it sent.
	JobReverseReplication = "REVERSE_REPLICATION"
)

// What started a job (DRS's initiatedBy).
const (
	InitiatedStartRecovery = "START_RECOVERY"
	InitiatedStartDrill    = "START_DRILL"
	InitiatedTerminate     = "TERMINATE_RECOVERY_INSTANCES"
	InitiatedFailback      = "START_FAILBACK"
	InitiatedReverse       = "START_REVERSED_REPLICATION"
)

// Job statuses. A job is COMPLETED when every server in it has ended, launched or not:
// the servers' launch statuses say how each one ended.
const (
	JobPending   = "PENDING"
	JobStarted   = "STARTED"
	JobCompleted = "COMPLETED"
)

// Launch statuses of a server in a job.
const (
	LaunchPending    = "PENDING"
	LaunchInProgress = "IN_PROGRESS"
	LaunchLaunched   = "LAUNCHED"
	LaunchFailed     = "FAILED"
	LaunchTerminated = "TERMINATED"
)

// Steps of a server's launch, in order; JobServer.Step names the current (or failed) one.
const (
	StepPrepare    = "PREPARE"     // the PIT and the provider's checks
	StepFinalPoint = "FINAL_POINT" // failback: the recovery instance's final consistency point
	StepReverse    = "REVERSE"     // reversed replication: until the reversed source server is CONTINUOUS
	StepSnapshot   = "SNAPSHOT"    // the PIT's volumes materialized for the target
	StepConversion = "CONVERSION"  // hostname, network, seed disk, agent
	StepLaunch     = "LAUNCH"      // the provider starts the instance
	StepPostLaunch = "POST_LAUNCH" // post-launch actions (scripts, health checks)
	StepTerminate  = "TERMINATE"   // terminate jobs: stop the instance, remove its artifacts
)

// Job log event types. SNAPSHOT_START/END bracket the materialization of the PIT's
// volumes; USING_PREVIOUS_SNAPSHOT names the PIT used and its age; CONSOLE events carry
// the instance's serial console while the job watches it.
const (
	EventJobStart              = "JOB_START"
	EventJobResume             = "JOB_RESUME" // a control plane restart caught the server at a step
	EventUsingPreviousSnapshot = "USING_PREVIOUS_SNAPSHOT"
	EventUsingGroupPoint       = "USING_GROUP_POINT" // a consistency group's point: every member at one instant
	EventSnapshotStart         = "SNAPSHOT_START"
	EventSnapshotEnd           = "SNAPSHOT_END"
	EventConversionStart       = "CONVERSION_START"
	EventConversionEnd         = "CONVERSION_END"
	EventLaunchStart           = "LAUNCH_START"
	EventLaunchEnd             = "LAUNCH_END"
	EventLaunchFailed          = "LAUNCH_FAILED"
	EventBoot                  = "BOOT"              // the instance runs (RTO to boot)
	EventHydrated              = "HYDRATED"          // an instant launch's disks are all local now
	EventHydrationStalled      = "HYDRATION_STALLED" // an instant launch's copy waits on the staging store
	EventPostLaunchStart       = "POST_LAUNCH_ACTION_START"
	EventPostLaunchEnd         = "POST_LAUNCH_ACTION_END"
	EventPostLaunchFailed      = "POST_LAUNCH_ACTION_FAILED"
	EventConsole               = "CONSOLE"
	EventTerminateStart        = "TERMINATE_START"
	EventTerminateEnd          = "TERMINATE_END"
	EventTerminateFailed       = "TERMINATE_FAILED"
	EventJobEnd                = "JOB_END"
	EventFinalPointStart       = "FINAL_POINT_START" // failback: the final consistency point was asked for
	EventFinalPointEnd         = "FINAL_POINT_END"   // and was sealed
	EventReverseRegistered     = "REVERSED_AGENT_REGISTERED"
	EventReverseContinuous     = "REVERSED_REPLICATION_CONTINUOUS" // with the bytes sent and the time it took
)

// Recovery instance states.
const (
	InstanceLaunching  = "LAUNCHING"
	InstanceRunning    = "RUNNING"
	InstanceStopped    = "STOPPED" // not running: the image provider's disks, or a stopped VM
	InstanceFailed     = "FAILED"
	InstanceTerminated = "TERMINATED"
)

// The tag that allows launching into an existing instance: DRS's key, or Lifeboat's.
const (
	LaunchIntoTagValue    = "AllowLaunchingIntoThisInstance"
	LaunchIntoTagDRS      = "AWSDRS"
	LaunchIntoTagLifeboat = "LIFEBOAT"
)

// Default limits of jobs, as DRS's (configurable on the control plane).
const (
	DefaultMaxActiveJobs    = 20
	DefaultMaxServersPerJob = 100
)

// Job is an asynchronous operation over servers: a drill or recovery (LAUNCH) or a
// TERMINATE.
type Job struct {
	ID          string      `json:"id"`
	Type        string      `json:"type"`        // LAUNCH or TERMINATE
	InitiatedBy string      `json:"initiatedBy"` // START_RECOVERY, START_DRILL or TERMINATE_RECOVERY_INSTANCES
	Status      string      `json:"status"`      // PENDING, STARTED or COMPLETED
	IsDrill     bool        `json:"isDrill"`
	CreatedBy   string      `json:"createdBy"` // the actor, as the audit log names it
	CreatedAt   time.Time   `json:"createdAt"`
	EndedAt     *time.Time  `json:"endedAt,omitempty"`
	Servers     []JobServer `json:"participatingServers"`
}

// JobServer is one server (one recovery instance) in a job.
type JobServer struct {
	SourceServerID     string       `json:"sourceServerId"`
	RecoveryInstanceID string       `json:"recoveryInstanceId"`
	SnapshotID         string       `json:"recoverySnapshotId,omitempty"`
	LaunchStatus       string       `json:"launchStatus"`
	Step               string       `json:"step,omitempty"` // the step running, or the one that failed
	Progress           *JobProgress `json:"progress,omitempty"`
	Error              string       `json:"error,omitempty"`
	// RTOSeconds is measured from the job's log: from JOB_START to the end of the launch
	// (LAUNCH_END, or the last post-launch health check when there are any).
	RTOSeconds *float64 `json:"rtoSeconds,omitempty"`
	// SnapshotTime is when the PIT launched was taken. RPOSeconds is its RPO: how much
	// older it is than the newest data the replica held of the server when the job was
	// created (ReplicationState.DataThrough), i.e. the writes a launch from it loses.
	SnapshotTime *time.Time `json:"recoverySnapshotTime,omitempty"`
	RPOSeconds   *float64   `json:"rpoSeconds,omitempty"`
}

// JobProgress is how far the current step is.
type JobProgress struct {
	DoneBytes  int64 `json:"doneBytes"`
	TotalBytes int64 `json:"totalBytes"`
}

// JobList is a page of jobs, newest first.
type JobList struct {
	Items         []Job  `json:"items"`
	NextPageToken string `json:"nextPageToken,omitempty"`
}

// JobLogEvent is one timed entry of a job's log.
type JobLogEvent struct {
	ID             string         `json:"id"` // sorts in log order
	Time           time.Time      `json:"time"`
	Type           string         `json:"type"`
	SourceServerID string         `json:"sourceServerId,omitempty"`
	Message        string         `json:"message,omitempty"`
	Detail         map[string]any `json:"detail,omitempty"`
}

// JobLog is a page of a job's log, oldest first. NextPageToken continues it (also to
// follow a running job: ask again with it).
type JobLog struct {
	Items         []JobLogEvent `json:"items"`
	NextPageToken string        `json:"nextPageToken,omitempty"`
}

// RecoveryServer names a source server to launch and, optionally, the PIT to use.
type RecoveryServer struct {
	SourceServerID     string `json:"sourceServerId"`
	RecoverySnapshotID string `json:"recoverySnapshotId,omitempty"`
	// Overrides change the server's launch settings for this job only (recovery plans).
	Overrides *LaunchOverrides `json:"overrides,omitempty"`
}

// LaunchOverrides change launch settings for one job; zero fields change nothing.
type LaunchOverrides struct {
	CPUs      int               `json:"cpus,omitempty"`
	MemoryMiB int               `json:"memoryMiB,omitempty"`
	Hostname  string            `json:"hostname,omitempty"`
	IP        string            `json:"ip,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"` // added to the settings' tags
}

// Validate checks overrides (nil: none).
func (o *LaunchOverrides) Validate() error {
	if o == nil {
		return nil
	}
	if o.CPUs < 0 || o.CPUs > 256 {
		return Invalid("cpus must be 1 to 256, not %d", o.CPUs)
	}
	if o.MemoryMiB != 0 && (o.MemoryMiB < 128 || o.MemoryMiB > 4<<20) {
		return Invalid("memoryMiB must be 128 to %d, not %d", 4<<20, o.MemoryMiB)
	}
	if o.Hostname != "" && !hostnameRE.MatchString(o.Hostname) {
		return Invalid("hostname %q is not a host name", o.Hostname)
	}
	if o.IP != "" {
		if _, _, err := net.ParseCIDR(o.IP); err != nil {
			return Invalid("ip %q is not an address in CIDR form (10.0.0.5/24)", o.IP)
		}
	}
	return validateTags(o.Tags, "tags")
}

// Apply changes settings as the overrides say.
func (o *LaunchOverrides) Apply(s *LaunchSettings) {
	if o == nil {
		return
	}
	if o.CPUs > 0 {
		s.CPUs = o.CPUs
	}
	if o.MemoryMiB > 0 {
		s.MemoryMiB = o.MemoryMiB
	}
	if o.Hostname != "" {
		s.Hostname = o.Hostname
	}
	if o.IP != "" {
		s.IP = o.IP
	}
	if len(o.Tags) > 0 {
		tags := make(map[string]string, len(s.Tags)+len(o.Tags))
		for k, v := range s.Tags {
			tags[k] = v
		}
		for k, v := range o.Tags {
			tags[k] = v
		}
		s.Tags = tags
	}
}

// StartRecoveryRequest starts a drill or a recovery. A server without a PIT gets the
// newest consistent (filesystem or crash) PIT at or before At, or the newest
// consistent PIT when At is absent.
type StartRecoveryRequest struct {
	SourceServers []RecoveryServer `json:"sourceServers"`
	// ConsistencyGroup (id or name), instead of SourceServers, launches every member of
	// one of the group's complete points: GroupPointID, or the newest at or before At, or
	// the newest. The control plane fills SourceServers and GroupPointID from it.
	ConsistencyGroup string     `json:"consistencyGroup,omitempty"`
	GroupPointID     string     `json:"groupPointId,omitempty"`
	At               *time.Time `json:"at,omitempty"`
	IsDrill          bool       `json:"isDrill"`
	// Force launches a recovery of a server that already has a recovery instance that is
	// not a drill.
	Force bool `json:"force,omitempty"`
	// NetworkAccess lets a drill's instances reach the network as their launch settings
	// say; without it a drill runs isolated (no route to anything, the source included).
	NetworkAccess bool `json:"networkAccess,omitempty"`
}

// TerminateRecoveryInstancesRequest terminates recovery instances.
type TerminateRecoveryInstancesRequest struct {
	RecoveryInstanceIDs []string `json:"recoveryInstanceIds"`
}

// ProviderHandle says where a provider keeps a recovery instance.
type ProviderHandle struct {
	Host       string   `json:"host,omitempty"`       // the control plane host that runs it
	Dir        string   `json:"dir,omitempty"`        // its artifacts: disks, seed, VM state
	Disks      []string `json:"disks,omitempty"`      // the disks, in boot order
	VMDir      string   `json:"vmDir,omitempty"`      // qemu: the VM's state directory
	PID        int      `json:"pid,omitempty"`        // qemu: the QEMU process
	ConsoleLog string   `json:"consoleLog,omitempty"` // qemu: the serial console
	InstanceID string   `json:"instanceId,omitempty"` // existing-instance: the instance launched into
	// NBDSocket is where an instant launch's disks are served from the staging store
	// until they are hydrated (qemu with instant).
	NBDSocket string `json:"nbdSocket,omitempty"`
}

// RecoveryInstance is a machine launched from a PIT, for a drill or a recovery.
type RecoveryInstance struct {
	ID                    string         `json:"id"`
	SourceServerID        string         `json:"sourceServerId"`
	JobID                 string         `json:"jobId"`
	SnapshotID            string         `json:"recoverySnapshotId"`
	SnapshotTime          time.Time      `json:"recoverySnapshotTime"`
	PITAgeSeconds         float64        `json:"pitAgeSeconds"` // at launch: the point's age (the job server's rpoSeconds is what the launch lost)
	IsDrill               bool           `json:"isDrill"`
	SiteID                string         `json:"siteId"`
	Provider              string         `json:"provider"`
	ProviderHandle        ProviderHandle `json:"providerHandle"`
	Address               string         `json:"address,omitempty"`      // where to reach it: an IP, or the host of its port forwards
	PortForwards          []PortForward  `json:"portForwards,omitempty"` // as launched (host port 0 resolved)
	State                 string         `json:"state"`
	TerminationProtection bool           `json:"terminationProtection"`
	// FailbackState is where the instance stands in the way home (FAILBACK_*), and
	// ReversedSourceServerID the source server that replicates it back, once started.
	FailbackState          string `json:"failbackState"`
	ReversedSourceServerID string `json:"reversedSourceServerId,omitempty"`
	// Tags are the launch settings' tags and, when they say copyTags, the source's
	// (lifeboat:source-server).
	Tags           map[string]string `json:"tags,omitempty"`
	LaunchSettings LaunchSettings    `json:"launchSettings"`
	CreatedAt      time.Time         `json:"createdAt"`
	UpdatedAt      time.Time         `json:"updatedAt"`
	TerminatedAt   *time.Time        `json:"terminatedAt,omitempty"`
}

// RecoveryInstanceList is a page of recovery instances, newest first.
type RecoveryInstanceList struct {
	Items         []RecoveryInstance `json:"items"`
	NextPageToken string             `json:"nextPageToken,omitempty"`
}

// RecoveryInstanceFilter selects recovery instances (query parameters).
type RecoveryInstanceFilter struct {
	SourceServerID string
	Drill          *bool // only drills (true) or only recoveries (false)
	All            bool  // include terminated ones
	Limit          int
	PageToken      string
}

// TerminationProtectionRequest turns a recovery instance's termination protection on or off.
type TerminationProtectionRequest struct {
	Enabled bool `json:"enabled"`
}

// Instance is an existing machine Lifeboat may launch into: its disks are on the
// control plane's host (image files or block devices), it runs as a QEMU VM when
// started, and it accepts a launch only while stopped and tagged
// AWSDRS=AllowLaunchingIntoThisInstance (or LIFEBOAT=…).
type Instance struct {
	ID                 string            `json:"id"`
	Name               string            `json:"name"`
	SiteID             string            `json:"siteId"`
	Provider           string            `json:"provider"` // qemu
	Disks              []InstanceDisk    `json:"disks"`
	Tags               map[string]string `json:"tags"`
	BootMode           string            `json:"bootMode"`
	State              string            `json:"state"`                        // RUNNING or STOPPED
	RecoveryInstanceID string            `json:"recoveryInstanceId,omitempty"` // the recovery launched into it, if any
	CreatedAt          time.Time         `json:"createdAt"`
	UpdatedAt          time.Time         `json:"updatedAt"`
}

// InstanceDisk is one disk of an instance.
type InstanceDisk struct {
	Path      string `json:"path"`
	SizeBytes int64  `json:"sizeBytes"`
}

// InstanceList lists an account's instances by name.
type InstanceList struct {
	Items []Instance `json:"items"`
}

// CreateInstanceRequest registers an instance.
type CreateInstanceRequest struct {
	Name     string            `json:"name,omitempty"` // default: the id
	Site     string            `json:"site"`
	Disks    []string          `json:"disks"` // absolute paths on the control plane's host, boot disk first; none on a libvirt site (Name is the domain)
	Tags     map[string]string `json:"tags,omitempty"`
	BootMode string            `json:"bootMode,omitempty"` // bios (default), uefi or kernel
}

// UpdateInstanceTagsRequest sets and removes tags of an instance.
type UpdateInstanceTagsRequest struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// AllowsLaunchInto reports whether tags allow launching into the instance.
func AllowsLaunchInto(tags map[string]string) bool {
	return tags[LaunchIntoTagDRS] == LaunchIntoTagValue || tags[LaunchIntoTagLifeboat] == LaunchIntoTagValue
}

// Validate checks a recovery request.
func (r StartRecoveryRequest) Validate() error {
	if r.ConsistencyGroup != "" || r.GroupPointID != "" {
		return r.validateGroup()
	}
	if len(r.SourceServers) == 0 {
		return Invalid("sourceServers must name at least one source server")
	}
	if len(r.SourceServers) > 10000 {
		return Invalid("sourceServers names %d servers; a job takes at most %d by default", len(r.SourceServers), DefaultMaxServersPerJob)
	}
	seen := map[string]bool{}
	for _, s := range r.SourceServers {
		if !ValidID(PrefixSourceServer, s.SourceServerID) {
			return Invalid("%q is not a source server id (s-…; see lifeboat source-servers list)", s.SourceServerID)
		}
		if seen[s.SourceServerID] {
			return Invalid("source server %s is named twice: a job launches each server once", s.SourceServerID)
		}
		seen[s.SourceServerID] = true
		if s.RecoverySnapshotID != "" && !ValidID(PrefixSnapshot, s.RecoverySnapshotID) {
			return Invalid("%q is not a recovery snapshot id (pit-…; see lifeboat snapshots list %s)", s.RecoverySnapshotID, s.SourceServerID)
		}
		if s.RecoverySnapshotID != "" && r.At != nil {
			return Invalid("give a PIT or a time (at), not both")
		}
		if err := s.Overrides.Validate(); err != nil {
			return Invalid("the launch overrides of %s: %v", s.SourceServerID, err)
		}
	}
	return r.validateFlags()
}

// validateGroup checks a request that names a consistency group.
func (r StartRecoveryRequest) validateGroup() error {
	switch {
	case r.ConsistencyGroup == "":
		return Invalid("groupPointId needs the consistencyGroup it belongs to")
	case len(r.SourceServers) > 0:
		return Invalid("name a consistencyGroup or sourceServers, not both: a group launches all its members")
	case r.GroupPointID != "" && !ValidID(PrefixGroupPoint, r.GroupPointID):
		return Invalid("%q is not a group point id (gpit-…; see lifeboat groups points %s)", r.GroupPointID, r.ConsistencyGroup)
	case r.GroupPointID != "" && r.At != nil:
		return Invalid("give a group point or a time (at), not both")
	}
	return r.validateFlags()
}

func (r StartRecoveryRequest) validateFlags() error {
	if r.NetworkAccess && !r.IsDrill {
		return Invalid("networkAccess is for drills: a recovery uses the network its launch settings say")
	}
	if r.Force && r.IsDrill {
		return Invalid("force is for recoveries: drills never need it")
	}
	return nil
}

// Validate checks a terminate request.
func (r TerminateRecoveryInstancesRequest) Validate() error {
	if len(r.RecoveryInstanceIDs) == 0 || len(r.RecoveryInstanceIDs) > 10000 {
		return Invalid("recoveryInstanceIds must list 1 to 10000 recovery instances, not %d", len(r.RecoveryInstanceIDs))
	}
	seen := map[string]bool{}
	for _, id := range r.RecoveryInstanceIDs {
		if !ValidID(PrefixRecoveryInstance, id) {
			return Invalid("%q is not a recovery instance id (i-…; see lifeboat recovery-instances list)", id)
		}
		if seen[id] {
			return Invalid("recovery instance %s is named twice", id)
		}
		seen[id] = true
	}
	return nil
}

// Validate checks a protection change (any boolean is valid).
func (r TerminationProtectionRequest) Validate() error { return nil }

func validateTags(tags map[string]string, field string) error {
	if len(tags) > 50 {
		return Invalid("%s: at most 50 tags are allowed, not %d", field, len(tags))
	}
	for k, v := range tags {
		if !tagKeyRE.MatchString(k) || len(v) > 256 || !printableRE.MatchString(v) {
			return Invalid("%s: tag %q is not valid: keys are 1-128 letters, digits or _.:/=+@- and values at most 256 printable bytes", field, k)
		}
	}
	return nil
}

// ValidateInstanceBootMode checks an instance's boot mode.
func ValidateInstanceBootMode(m string) error {
	switch m {
	case BootBIOS, BootUEFI, BootKernel:
		return nil
	}
	return Invalid("bootMode must be bios, uefi or kernel, not %q", m)
}

// Validate checks an instance registration (the control plane checks the disks exist).
func (r CreateInstanceRequest) Validate() error {
	if r.Name != "" && !ValidName(r.Name) {
		return Invalid("name %q must be 1-63 lowercase letters, digits or '-'", r.Name)
	}
	if !ValidName(r.Site) {
		return Invalid("site %q is not a site name (see lifeboat sites list)", r.Site)
	}
	if len(r.Disks) > 32 {
		return Invalid("disks must list 1 to 32 disk paths, boot disk first, not %d", len(r.Disks))
	}
	if len(r.Disks) == 0 && r.Name == "" {
		return Invalid("an instance is disks on the control plane's host (--disk), or a libvirt site's domain named by --name")
	}
	seen := map[string]bool{}
	for _, d := range r.Disks {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d || len(d) > 4096 || !printableRE.MatchString(d) {
			return Invalid("disk %q must be a clean absolute path on the control plane's host", d)
		}
		if seen[d] {
			return Invalid("disk %s is listed twice", d)
		}
		seen[d] = true
	}
	if r.BootMode != "" {
		if err := ValidateInstanceBootMode(r.BootMode); err != nil {
			return err
		}
	}
	return validateTags(r.Tags, "tags")
}

// Validate checks a tag change.
func (r UpdateInstanceTagsRequest) Validate() error {
	if len(r.Set) == 0 && len(r.Remove) == 0 {
		return Invalid("nothing to change: give tags to set or to remove")
	}
	if len(r.Remove) > 50 {
		return Invalid("remove: at most 50 tags at once, not %d", len(r.Remove))
	}
	for _, k := range r.Remove {
		if !tagKeyRE.MatchString(k) {
			return Invalid("remove: %q is not a tag key", k)
		}
		if _, ok := r.Set[k]; ok {
			return Invalid("tag %q is both set and removed", k)
		}
	}
	return validateTags(r.Set, "set")
}

// StartRecovery starts a drill or a recovery and returns its job.
func (c *Client) StartRecovery(ctx context.Context, req StartRecoveryRequest) (Job, error) {
	var out Job
	return out, c.do(ctx, "POST", "/api/v1/jobs/recovery", nil, req, &out)
}

// TerminateRecoveryInstances starts a job that terminates recovery instances.
func (c *Client) TerminateRecoveryInstances(ctx context.Context, req TerminateRecoveryInstancesRequest) (Job, error) {
	var out Job
	return out, c.do(ctx, "POST", "/api/v1/jobs/terminate", nil, req, &out)
}

// Jobs returns a page of jobs, newest first.
func (c *Client) Jobs(ctx context.Context, limit int, pageToken string) (JobList, error) {
	var out JobList
	return out, c.do(ctx, "GET", "/api/v1/jobs", pageQuery(limit, pageToken), nil, &out)
}

// Job describes a job.
func (c *Client) Job(ctx context.Context, id string) (Job, error) {
	var out Job
	return out, c.do(ctx, "GET", "/api/v1/jobs/"+esc(id), nil, nil, &out)
}

// JobLog returns a page of a job's log, oldest first, after the page token.
func (c *Client) JobLog(ctx context.Context, id string, limit int, pageToken string) (JobLog, error) {
	var out JobLog
	return out, c.do(ctx, "GET", "/api/v1/jobs/"+esc(id)+"/log", pageQuery(limit, pageToken), nil, &out)
}

// JobLogPages reads a job's log, a page at a time of the control plane's default size:
// its token is a cursor, so EachPage from the token it returned reads what was logged
// since.
func (c *Client) JobLogPages(id string) PageFunc[JobLogEvent] {
	return func(ctx context.Context, token string) ([]JobLogEvent, string, error) {
		page, err := c.JobLog(ctx, id, 0, token)
		return page.Items, page.NextPageToken, err
	}
}

// RecoveryInstances returns a page of recovery instances, newest first.
func (c *Client) RecoveryInstances(ctx context.Context, f RecoveryInstanceFilter) (RecoveryInstanceList, error) {
	q := pageQuery(f.Limit, f.PageToken)
	if f.SourceServerID != "" {
		q.Set("source_server", f.SourceServerID)
	}
	if f.Drill != nil {
		q.Set("drill", strconv.FormatBool(*f.Drill))
	}
	if f.All {
		q.Set("all", "true")
	}
	var out RecoveryInstanceList
	return out, c.do(ctx, "GET", "/api/v1/recovery-instances", q, nil, &out)
}

// AllRecoveryInstances pages through every recovery instance f selects.
func (c *Client) AllRecoveryInstances(ctx context.Context, f RecoveryInstanceFilter) ([]RecoveryInstance, error) {
	return AllPages(ctx, func(ctx context.Context, token string) ([]RecoveryInstance, string, error) {
		f.PageToken = token
		page, err := c.RecoveryInstances(ctx, f)
		return page.Items, page.NextPageToken, err
	})
}

// RecoveryInstance describes a recovery instance.
func (c *Client) RecoveryInstance(ctx context.Context, id string) (RecoveryInstance, error) {
	var out RecoveryInstance
	return out, c.do(ctx, "GET", "/api/v1/recovery-instances/"+esc(id), nil, nil, &out)
}

// SetTerminationProtection turns a recovery instance's termination protection on or off.
func (c *Client) SetTerminationProtection(ctx context.Context, id string, enabled bool) (RecoveryInstance, error) {
	var out RecoveryInstance
	return out, c.do(ctx, "PUT", "/api/v1/recovery-instances/"+esc(id)+"/termination-protection", nil,
		TerminationProtectionRequest{Enabled: enabled}, &out)
}

// StartRecoveryInstance starts a recovery instance that was launched stopped.
func (c *Client) StartRecoveryInstance(ctx context.Context, id string) (RecoveryInstance, error) {
	var out RecoveryInstance
	return out, c.do(ctx, "POST", "/api/v1/recovery-instances/"+esc(id)+"/start", nil, nil, &out)
}

// Instances lists the account's instances.
func (c *Client) Instances(ctx context.Context) (InstanceList, error) {
	var out InstanceList
	return out, c.do(ctx, "GET", "/api/v1/instances", nil, nil, &out)
}

// Instance describes an instance.
func (c *Client) Instance(ctx context.Context, id string) (Instance, error) {
	var out Instance
	return out, c.do(ctx, "GET", "/api/v1/instances/"+esc(id), nil, nil, &out)
}

// CreateInstance registers an instance.
func (c *Client) CreateInstance(ctx context.Context, req CreateInstanceRequest) (Instance, error) {
	var out Instance
	return out, c.do(ctx, "POST", "/api/v1/instances", nil, req, &out)
}

// UpdateInstanceTags sets and removes an instance's tags.
func (c *Client) UpdateInstanceTags(ctx context.Context, id string, req UpdateInstanceTagsRequest) (Instance, error) {
	var out Instance
	return out, c.do(ctx, "PATCH", "/api/v1/instances/"+esc(id)+"/tags", nil, req, &out)
}

// StartInstance starts an instance's VM.
func (c *Client) StartInstance(ctx context.Context, id string) (Instance, error) {
	var out Instance
	return out, c.do(ctx, "POST", "/api/v1/instances/"+esc(id)+"/start", nil, nil, &out)
}

// StopInstance stops an instance's VM.
func (c *Client) StopInstance(ctx context.Context, id string) (Instance, error) {
	var out Instance
	return out, c.do(ctx, "POST", "/api/v1/instances/"+esc(id)+"/stop", nil, nil, &out)
}

// DeleteInstance removes an instance's registration (its disks are left alone).
func (c *Client) DeleteInstance(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/instances/"+esc(id), nil, nil, nil)
}

func pageQuery(limit int, pageToken string) url.Values {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if pageToken != "" {
		q.Set("page_token", pageToken)
	}
	return q
}
