// Package api is Lifeboat's HTTP API as Go sees it: the JSON request and response types
// the control plane serves and every consumer (CLI, agent, replicator, console) sends,
// the error shape, identifier formats, the validation of every request body, and the
// Go client. The server (internal/controlplane) and the client share these types, so
// they cannot disagree about a field.
package api

import (
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// Role is what an API token may do. Roles are ordered: each includes the ones below it.
type Role string

// Roles, from least to most powerful.
const (
	RoleViewer   Role = "viewer"   // read everything in the account
	RoleOperator Role = "operator" // viewer + drills, recovery, failback, snapshots
	RoleAdmin    Role = "admin"    // operator + settings, tokens, deletion, audit log
)

// Level orders roles: viewer 1, operator 2, admin 3, anything else 0.
func (r Role) Level() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Kinds of caller. A user holds an API token; an install token only registers; source
// servers (agents) and replicators present a client certificate issued by the CA.
const (
	CallerUser         = "user"
	CallerInstall      = "install"
	CallerSourceServer = "source-server"
	CallerReplicator   = "replicator"
)

// Token kinds and install-token scopes.
const (
	TokenInstall = "install" // exchanged once per machine for a client certificate
	TokenAPI     = "api"     // a user's bearer token, with a role

	ScopeSourceServer = "source-server" // install token that registers agents (default)
	ScopeReplicator   = "replicator"    // install token that registers replicators
	ScopeFailback     = "failback"      // install token that registers a failback client (rescue media)
)

// Default token lifetimes.
const (
	DefaultInstallTokenTTL = time.Hour
	MaxInstallTokenTTL     = 30 * 24 * time.Hour
)

// Whoami describes the caller of a request.
type Whoami struct {
	Kind      string `json:"kind"` // user, install, source-server or replicator
	AccountID string `json:"accountId"`
	ID        string `json:"id"`             // token id, source server id or replicator id
	Role      Role   `json:"role,omitempty"` // users only
	System    bool   `json:"system"`         // the caller's account is the system account
}

// Health is the answer of the unauthenticated health endpoint.
type Health struct {
	Status   string `json:"status"` // "ok"
	Version  string `json:"version"`
	Database string `json:"database"` // sqlite or postgres
	// Coordinator: this control plane holds the coordinator lease, so it runs replicator
	// assignment, consistency groups, plan runs and scheduled drills for every control
	// plane sharing its database (docs/architecture.md "Two control planes").
	Coordinator bool `json:"coordinator"`
}

// CAResponse carries the control plane's CA certificate, which signs only its serving
// certificate (GET /api/v1/ca, no credentials needed): what CLI users trust the API with.
type CAResponse struct {
	CACertificates string `json:"caCertificates"`
}

// Account is a tenant: its own servers, tokens, keys and quotas. The first account,
// created at first start, is the system account: its admins manage all accounts.
type Account struct {
	ID                       string    `json:"id"`
	Name                     string    `json:"name"`
	System                   bool      `json:"system"`
	QuotaSourceServers       int       `json:"quotaSourceServers"`
	ReplicatingSourceServers int       `json:"replicatingSourceServers"`
	CreatedAt                time.Time `json:"createdAt"`
	// StagingStores are the account's staging stores (the first is its template's).
	StagingStores []StagingStore `json:"stagingStores"`
}

// DefaultQuotaSourceServers is the default number of replicating source servers per account.
const DefaultQuotaSourceServers = 300

// AccountList is a page of accounts.
type AccountList struct {
	Items []Account `json:"items"`
}

// CreateAccountRequest creates an account and its first admin token.
type CreateAccountRequest struct {
	Name               string `json:"name"`
	QuotaSourceServers *int   `json:"quotaSourceServers,omitempty"` // default 300
	// StagingStoreURL is the account's staging store; default: the control plane's
	// default store with the account id appended (a subdirectory, or an S3 prefix).
	StagingStoreURL         string         `json:"stagingStoreUrl,omitempty"`
	StagingStoreCredentials *S3Credentials `json:"stagingStoreCredentials,omitempty"`
}

// CreateAccountResponse returns the new account and an admin API token for it (shown once).
type CreateAccountResponse struct {
	Account    Account `json:"account"`
	AdminToken string  `json:"adminToken"`
}

// UpdateAccountRequest changes an account's settings; absent fields are left as they are.
type UpdateAccountRequest struct {
	QuotaSourceServers *int `json:"quotaSourceServers,omitempty"`
	// StagingStoreURL gives the account this store (if it has it not yet) and makes it
	// its template's; "default" names the account's default store. Its earlier stores
	// stay its own (their PITs remain readable). StagingStoreCredentials, when given,
	// become that store's S3 credentials.
	StagingStoreURL         *string        `json:"stagingStoreUrl,omitempty"`
	StagingStoreCredentials *S3Credentials `json:"stagingStoreCredentials,omitempty"`
}

// DefaultStagingStore, as UpdateAccountRequest.StagingStoreURL, names the account's default store.
const DefaultStagingStore = "default"

// Site is a location with staging storage, replicators and a launch provider.
type Site struct {
	ID          string `json:"id"`
	Description string `json:"description"`
	// Provider launches the site's recovery instances: qemu (QEMU on the control plane's
	// own host), libvirt (the libvirt at URI) or image (disk images only).
	Provider string `json:"provider"`
	// URI is a libvirt site's libvirt URI (qemu:///system, qemu+tls://HOST/system, …).
	URI string `json:"uri,omitempty"`
	// Pool is a libvirt site's storage pool, where recovered disks are uploaded.
	Pool string `json:"pool,omitempty"`
	// HasCredentials says the site has credentials for its URI; they are never shown.
	HasCredentials bool      `json:"hasCredentials"`
	CreatedAt      time.Time `json:"createdAt"`
}

// DefaultSite is the site created with every account.
const DefaultSite = "default"

// SiteList is the list of an account's sites.
type SiteList struct {
	Items []Site `json:"items"`
}

// CreateSiteRequest creates a site; its id is a name the user chooses.
type CreateSiteRequest struct {
	ID          string `json:"id"`
	Description string `json:"description,omitempty"`
	// Provider is qemu (when empty), libvirt or image; URI and Pool are for libvirt only
	// (Pool defaults to DefaultSitePool).
	Provider string `json:"provider,omitempty"`
	URI      string `json:"uri,omitempty"`
	Pool     string `json:"pool,omitempty"`
	// Credentials let the control plane reach a libvirt URI: PEM client certificate,
	// key and CA for qemu+tls, or an SSH private key for qemu+ssh; at most
	// MaxSiteCredentialsBytes. Stored sealed, never shown again.
	Credentials []byte `json:"credentials,omitempty"`
}

// Token describes an API or install token. The secret is never shown again after creation.
type Token struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"`            // install or api
	Role  Role   `json:"role,omitempty"`  // api tokens
	Scope string `json:"scope,omitempty"` // install tokens: source-server or replicator
	// AllowReplace: an install token that may re-register a machine or replicator name
	// that is registered already, taking over its id (only admins create tokens).
	AllowReplace bool       `json:"allowReplace,omitempty"`
	Description  string     `json:"description"`
	CreatedBy    string     `json:"createdBy"`
	CreatedAt    time.Time  `json:"createdAt"`
	ExpiresAt    *time.Time `json:"expiresAt,omitempty"`
	UsesLeft     *int       `json:"usesLeft,omitempty"` // absent: unlimited
	Uses         int        `json:"uses"`
	RevokedAt    *time.Time `json:"revokedAt,omitempty"`
}

// TokenList is the list of an account's tokens.
type TokenList struct {
	Items []Token `json:"items"`
}

// CreateTokenRequest creates a token. TTLSeconds 0 means the default: 1 hour for install
// tokens, no expiry for API tokens. Uses 0 means unlimited.
type CreateTokenRequest struct {
	Kind        string `json:"kind"`
	Role        Role   `json:"role,omitempty"`
	Scope       string `json:"scope,omitempty"`
	TTLSeconds  int64  `json:"ttlSeconds,omitempty"`
	Uses        int    `json:"uses,omitempty"`
	Description string `json:"description,omitempty"`
	// AllowReplace lets an install token re-register what is registered already (a
	// machine id, a replicator name), taking over its identity: use it for one
	// reinstall, with --uses 1.
	AllowReplace bool `json:"allowReplace,omitempty"`
}

// CreateTokenResponse carries the token string: the only time it is shown.
type CreateTokenResponse struct {
	Token  Token  `json:"token"`
	Secret string `json:"secret"`
}

// Volume is a block device or image file of a source server.
type Volume struct {
	Name        string   `json:"name"`                  // stable name, e.g. "vda" or "disk0"
	Path        string   `json:"path"`                  // /dev/vda or an image file
	SizeBytes   int64    `json:"sizeBytes"`             // size in bytes
	MountPoints []string `json:"mountPoints,omitempty"` // filesystems mounted from it
	MajorMinor  string   `json:"majorMinor,omitempty"`  // "253:0" for block devices
}

// SourceServer is a machine protected by a replication agent.
type SourceServer struct {
	ID                   string           `json:"id"`
	AccountID            string           `json:"accountId"`
	Hostname             string           `json:"hostname"`
	MachineID            string           `json:"machineId"`
	SiteID               string           `json:"siteId"`                 // effective target site
	ReplicatorID         string           `json:"replicatorId,omitempty"` // assigned replication server
	AgentVersion         string           `json:"agentVersion,omitempty"`
	OS                   string           `json:"os,omitempty"`
	Arch                 string           `json:"arch,omitempty"`
	CPUs                 int              `json:"cpus,omitempty"`
	MemoryBytes          int64            `json:"memoryBytes,omitempty"`
	Volumes              []Volume         `json:"volumes,omitempty"`    // absent in list summaries
	Replication          ReplicationState `json:"replication"`          // without initiationSteps in list summaries
	LastSeenAt           *time.Time       `json:"lastSeenAt,omitempty"` // last call from its agent
	CertificateExpiresAt time.Time        `json:"certificateExpiresAt"`
	// Reversed is set on a reversed source server: a recovery instance replicating
	// back to its origin (lifeboat recovery-instances reverse-replication).
	Reversed *ReversedLink `json:"reversed,omitempty"`
	// Tags are the operator's KEY=VALUE labels of the server (lifeboat source-servers
	// tag); recovery plans select servers by them.
	Tags      map[string]string `json:"tags,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`
	UpdatedAt time.Time         `json:"updatedAt"`
}

// SourceServerList is a page of source servers, ready-for-recovery first, then by id.
// Items are summaries (no volumes, no initiation steps) unless the list asked for
// view=full; describe a server for everything.
type SourceServerList struct {
	Items         []SourceServer `json:"items"`
	NextPageToken string         `json:"nextPageToken,omitempty"`
}

// Paging limits of list endpoints.
const (
	DefaultPageSize = 100
	MaxPageSize     = 10000
)

// SourceServerFilter selects source servers in a list (query parameters).
type SourceServerFilter struct {
	States           []string          // data replication states, any of
	Hostname         string            // substring, case-insensitive
	ReplicatorID     string            // assigned replicator
	ReadyForRecovery *bool             // only ready (true) or not ready (false)
	Tags             map[string]string // only servers carrying all of these tags (tag=KEY=VALUE, repeatable)
	Full             bool              // view=full: whole items instead of summaries
	Limit            int               // page size, 1..MaxPageSize
	PageToken        string            // from the previous page's NextPageToken
}

// UpdateSourceServerTagsRequest sets and removes tags of a source server.
type UpdateSourceServerTagsRequest struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// Validate checks a tag change: the rules are an instance's.
func (r UpdateSourceServerTagsRequest) Validate() error {
	return UpdateInstanceTagsRequest(r).Validate()
}

// ParseTagFilter reads KEY=VALUE tags a list asks for (tag query parameters, --tag
// flags): a server is listed when it carries all of them.
func ParseTagFilter(kvs []string) (map[string]string, error) {
	tags := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, Invalid("tag %q must be KEY=VALUE", kv)
		}
		if old, dup := tags[k]; dup && old != v {
			return nil, Invalid("tag %s is asked for with two values (%q and %q): a server has one value per key", k, old, v)
		}
		tags[k] = v
	}
	return tags, validateTags(tags, "tag")
}

// RegisterSourceServerRequest is sent by `lifeboat agent install` with an install token.
// The agent generates its key; the control plane signs the CSR and binds the
// certificate to the new source server's id.
type RegisterSourceServerRequest struct {
	CSR          string   `json:"csr"`       // PEM CERTIFICATE REQUEST
	MachineID    string   `json:"machineId"` // /etc/machine-id
	Hostname     string   `json:"hostname"`
	OS           string   `json:"os,omitempty"`
	Arch         string   `json:"arch,omitempty"`
	AgentVersion string   `json:"agentVersion,omitempty"`
	CPUs         int      `json:"cpus,omitempty"`
	MemoryBytes  int64    `json:"memoryBytes,omitempty"`
	Volumes      []Volume `json:"volumes,omitempty"`
	// Replace re-registers a machine that is already registered in the account: it keeps
	// its source server id, settings and replica, and its old certificate stops working
	// at once. It needs an admin API token or an install token created with allowReplace.
	Replace bool `json:"replace,omitempty"`
}

// RegisterSourceServerResponse carries the agent's identity and credentials.
type RegisterSourceServerResponse struct {
	SourceServer   SourceServer `json:"sourceServer"`
	Certificate    string       `json:"certificate"`    // PEM, client certificate for the agent's key
	CACertificates string       `json:"caCertificates"` // PEM, the CA that signs replicators (the agent checks its replicator with it)
	Replaced       bool         `json:"replaced"`       // an existing registration was replaced
}

// RenewCertificateRequest asks for a new certificate for a new key, authenticated with
// the current certificate.
type RenewCertificateRequest struct {
	CSR string `json:"csr"`
}

// RenewCertificateResponse is the renewed certificate, and the CA that signs the peers
// of its holder (replicators for an agent, agents for a replicator).
type RenewCertificateResponse struct {
	Certificate    string    `json:"certificate"`
	CACertificates string    `json:"caCertificates"`
	ExpiresAt      time.Time `json:"expiresAt"`
}

// UpdateVolumesRequest replaces a source server's volume list (sent by its agent).
type UpdateVolumesRequest struct {
	Volumes []Volume `json:"volumes"`
}

// ReplicatorEndpoint tells an agent where to send its blocks, and which certificate to
// accept there: one of the replicator's current serials, naming its id and the agent's
// account (a replaced or deleted replicator's certificate is refused at once).
type ReplicatorEndpoint struct {
	ID                 string   `json:"id"`
	Name               string   `json:"name"`
	Address            string   `json:"address"` // host:port of its TLS listener
	CertificateSerials []string `json:"certificateSerials"`
}

// ReplicationConfig is what an agent needs to replicate: its effective settings and the
// replicator assigned to it (absent while none is).
type ReplicationConfig struct {
	SourceServerID string              `json:"sourceServerId"`
	Settings       ReplicationSettings `json:"settings"`
	Replicator     *ReplicatorEndpoint `json:"replicator,omitempty"`
	CACertificates string              `json:"caCertificates"` // PEM, the CA that signs replicators
	Control        ReplicationControl  `json:"control"`
}

// ServerReplicationSettings shows a source server's overrides and the effective settings
// (the account template with the overrides applied).
type ServerReplicationSettings struct {
	Overrides ReplicationSettingsOverrides `json:"overrides"`
	Effective ReplicationSettings          `json:"effective"`
}

// Replicator is a replication server.
type Replicator struct {
	ID        string `json:"id"`
	AccountID string `json:"accountId"`
	Name      string `json:"name"`
	SiteID    string `json:"siteId"`
	Address   string `json:"address"`
	Version   string `json:"version,omitempty"`
	State     string `json:"state"` // live or lost (no heartbeat within the timeout)
	// Draining: it takes no servers and its servers move to the site's other live
	// replicators (lifeboat replicators drain), for maintenance.
	Draining              bool              `json:"draining,omitempty"`
	LastHeartbeatAt       *time.Time        `json:"lastHeartbeatAt,omitempty"`
	Metrics               ReplicatorMetrics `json:"metrics"`
	AssignedSourceServers int               `json:"assignedSourceServers"`
	CertificateExpiresAt  time.Time         `json:"certificateExpiresAt"`
	CreatedAt             time.Time         `json:"createdAt"`
}

// DrainReplicatorRequest drains a replicator, or puts it back in service.
type DrainReplicatorRequest struct {
	Drain bool `json:"drain"`
}

// Validate accepts every request.
func (DrainReplicatorRequest) Validate() error { return nil }

// Replicator states.
const (
	ReplicatorLive = "live"
	ReplicatorLost = "lost"
)

// ReplicatorMetrics are reported with each heartbeat.
type ReplicatorMetrics struct {
	CPUPercent    float64 `json:"cpuPercent"`
	RSSBytes      int64   `json:"rssBytes"`
	VolumesServed int     `json:"volumesServed"`
	// Sessions is how many agents' sessions are open; IngestBytesPerSecond how fast
	// their blocks were written into the staging store since the last heartbeat.
	Sessions             int   `json:"sessions"`
	IngestBytesPerSecond int64 `json:"ingestBytesPerSecond"`
}

// ReplicatorList lists replicators.
type ReplicatorList struct {
	Items []Replicator `json:"items"`
}

// RegisterReplicatorRequest is sent by a new replicator with a replicator install token.
type RegisterReplicatorRequest struct {
	CSR     string `json:"csr"`
	Name    string `json:"name"`
	Site    string `json:"site"`
	Address string `json:"address"` // host:port agents connect to (its certificate names this host)
	Version string `json:"version,omitempty"`
	// Replace re-registers a replicator name that is registered already: it keeps its
	// id and servers, and its old certificate stops working at once. It needs an admin
	// API token or an install token created with allowReplace.
	Replace bool `json:"replace,omitempty"`
}

// RegisterReplicatorResponse carries the replicator's identity and credentials. The
// certificate is valid for both serverAuth (its listener) and clientAuth (API calls).
type RegisterReplicatorResponse struct {
	Replicator     Replicator `json:"replicator"`
	Certificate    string     `json:"certificate"`
	CACertificates string     `json:"caCertificates"` // PEM, the CA that signs agents
}

// HeartbeatRequest is sent by a replicator every HeartbeatIntervalSeconds.
type HeartbeatRequest struct {
	Metrics ReplicatorMetrics `json:"metrics"`
	Version string            `json:"version,omitempty"`
}

// HeartbeatResponse tells the replicator how often to beat and how many servers it has.
type HeartbeatResponse struct {
	HeartbeatIntervalSeconds int `json:"heartbeatIntervalSeconds"`
	AssignedSourceServers    int `json:"assignedSourceServers"`
}

// AssignedSourceServer is a source server a replicator serves, with its effective settings.
type AssignedSourceServer struct {
	SourceServer SourceServer        `json:"sourceServer"`
	Settings     ReplicationSettings `json:"settings"`
	// CertificateSerials are the serials (hex) of the agent certificates the replicator
	// may accept from this server: the current one and, after a renewal, the previous.
	CertificateSerials []string           `json:"certificateSerials"`
	Control            ReplicationControl `json:"control"`
	// HeadVersions are, per volume, the head versions the server's newest recorded PIT
	// was sealed from, in the repository HeadVersionsStoreID: the replicator opens no
	// older head there (a rolled-back replica, docs/security.md).
	HeadVersions        map[string]uint64 `json:"headVersions,omitempty"`
	HeadVersionsStoreID string            `json:"headVersionsStoreId,omitempty"`
	// Seed, for a reversed source server, is the PIT its replica starts as: a head that
	// does not exist yet in that store is opened as the PIT's volume of the same index.
	Seed *ReplicaSeed `json:"seed,omitempty"`
}

// ReplicaSeed names a recorded PIT (of another server of the same account) by what
// the control plane recorded when it was sealed, so the replicator takes no other.
type ReplicaSeed struct {
	SourceServerID string `json:"sourceServerId"`
	SnapshotID     string `json:"recoverySnapshotId"`
	ManifestDigest string `json:"manifestDigest"`
	StagingStoreID string `json:"stagingStoreId"`
	// Rebase replaces heads that exist by the PIT, once (after a failback wrote that
	// PIT onto the server's machine); otherwise only heads that do not exist start as it.
	Rebase bool `json:"rebase,omitempty"`
}

// AssignedSourceServerList lists a replicator's source servers (all of them, no paging).
type AssignedSourceServerList struct {
	Items []AssignedSourceServer `json:"items"`
}

// RecoverySnapshot (PIT) records an immutable version of all disks of a source server,
// sealed by a replicator in the staging store.
type RecoverySnapshot struct {
	ID             string            `json:"id"`
	SourceServerID string            `json:"sourceServerId"`
	Time           time.Time         `json:"time"`  // the consistency point
	Level          consistency.Level `json:"level"` // filesystem, crash or none
	Volumes        []SnapshotVolume  `json:"volumes"`
	SizeBytes      int64             `json:"sizeBytes"`           // bytes this PIT added to the store
	LockUntil      *time.Time        `json:"lockUntil,omitempty"` // protected until then
	ReplicatorID   string            `json:"replicatorId,omitempty"`
	CreatedAt      time.Time         `json:"createdAt"`
	// ManifestDigest is the digest of the PIT's manifest in the staging store, recorded
	// when it was sealed: readers refuse a manifest with another (docs/security.md).
	ManifestDigest string `json:"manifestDigest,omitempty"`
	// StagingStoreID is the id of the staging store's repository the PIT is in.
	StagingStoreID string `json:"stagingStoreId,omitempty"`
	// GroupPointID names the consistency-group point this PIT is the server's part of.
	GroupPointID string `json:"groupPointId,omitempty"`
}

// SnapshotVolume is one volume in a PIT.
type SnapshotVolume struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"sizeBytes"`
	Ref       string `json:"ref,omitempty"` // the staging store's reference of the volume version
	// HeadVersion is the version of the volume's head in the staging store the PIT was
	// sealed from: a replicator refuses to open an older head (a put-back object).
	HeadVersion uint64 `json:"headVersion,omitempty"`
}

// RecoverySnapshotList is a page of PITs, newest first.
type RecoverySnapshotList struct {
	Items         []RecoverySnapshot `json:"items"`
	NextPageToken string             `json:"nextPageToken,omitempty"`
}

// CreateRecoverySnapshotRequest records a PIT a replicator sealed. ID may be left empty
// for the control plane to choose one.
type CreateRecoverySnapshotRequest struct {
	ID        string            `json:"id,omitempty"`
	Time      time.Time         `json:"time"`
	Level     consistency.Level `json:"level"`
	Volumes   []SnapshotVolume  `json:"volumes"`
	SizeBytes int64             `json:"sizeBytes"`
	LockUntil *time.Time        `json:"lockUntil,omitempty"`
	// ManifestDigest is the digest of the PIT's manifest in the staging store, and
	// StagingStoreID the id of the repository it is in.
	ManifestDigest string `json:"manifestDigest,omitempty"`
	StagingStoreID string `json:"stagingStoreId,omitempty"`
	// GroupPointID: the PIT is this server's part of a consistency-group point.
	GroupPointID string `json:"groupPointId,omitempty"`
}

// DeleteRecoverySnapshotsRequest deletes PITs of one source server (expired by retention).
type DeleteRecoverySnapshotsRequest struct {
	IDs []string `json:"ids"`
}

// DeleteRecoverySnapshotsResponse says which were deleted and which were refused (locked
// or unknown), with the reason.
type DeleteRecoverySnapshotsResponse struct {
	Deleted []string          `json:"deleted"`
	Refused []RefusedSnapshot `json:"refused,omitempty"`
}

// RefusedSnapshot is a PIT that was not deleted and why.
type RefusedSnapshot struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// AuditEntry records one change: who, what, when, on which target.
type AuditEntry struct {
	ID         string         `json:"id"`
	Time       time.Time      `json:"time"`
	ActorKind  string         `json:"actorKind"` // user, install, source-server, replicator, system
	ActorID    string         `json:"actorId"`
	Action     string         `json:"action"` // e.g. source-server.register
	TargetKind string         `json:"targetKind"`
	TargetID   string         `json:"targetId"`
	Detail     map[string]any `json:"detail,omitempty"`
}

// AuditList is a page of audit entries, newest first.
type AuditList struct {
	Items         []AuditEntry `json:"items"`
	NextPageToken string       `json:"nextPageToken,omitempty"`
}

// AuditFilter selects audit entries (query parameters).
type AuditFilter struct {
	TargetID  string
	Action    string
	Limit     int
	PageToken string
}

// Event is one message of the event stream (/api/v1/events, server-sent events): every
// change produces one. Seq orders events of one control-plane process; a client that
// reconnects sends the last Seq it saw as Last-Event-ID.
type Event struct {
	Seq        int64     `json:"seq"`
	Type       string    `json:"type"` // the audit action, or e.g. source-server.replication
	Time       time.Time `json:"time"`
	TargetKind string    `json:"targetKind"`
	TargetID   string    `json:"targetId"`
	Data       any       `json:"data,omitempty"`
}

// LaunchSettingsResponse is a source server's launch settings.
type LaunchSettingsResponse struct {
	SourceServerID string         `json:"sourceServerId"`
	Settings       LaunchSettings `json:"settings"`
	UpdatedAt      time.Time      `json:"updatedAt"`
}
