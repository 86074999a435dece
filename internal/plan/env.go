package plan

import (
	"context"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Env is what a run acts on: the control plane, within the plan's account. Keys name
// the jobs a run starts (one per step and server), so that a run resumed after a
// restart finds the job it had started instead of starting another.
type Env interface {
	// SelectServers returns the source servers a selector picks, by id; a group
	// selector also returns the group's id.
	SelectServers(ctx context.Context, sel Selector) (servers []Server, groupID string, err error)
	// ChoosePIT is the server's newest consistent PIT at or before at.
	ChoosePIT(ctx context.Context, serverID string, at time.Time) (PIT, error)
	// GroupPoint is the group's newest complete point at or before at whose PITs are
	// all kept: its id and each member's PIT.
	GroupPoint(ctx context.Context, groupID string, at time.Time) (string, map[string]PIT, error)
	// Capacity refuses (with the reason) a job of n servers that the account's limits
	// would refuse now.
	Capacity(ctx context.Context, n int) error

	// FindJob is the job started under key, or "" when none was.
	FindJob(ctx context.Context, key string) (string, error)
	Job(ctx context.Context, id string) (api.Job, error)
	// StartLaunch starts the drill or recovery job of one wave.
	StartLaunch(ctx context.Context, key string, req api.StartRecoveryRequest) (string, error)
	// Terminate starts a job terminating recovery instances.
	Terminate(ctx context.Context, key string, recoveryInstanceIDs []string) (string, error)

	RecoveryInstance(ctx context.Context, id string) (api.RecoveryInstance, error)
	// ActiveRecovery is the server's newest recovery instance that is not a drill and
	// not terminated.
	ActiveRecovery(ctx context.Context, serverID string) (api.RecoveryInstance, error)
	// Instance resolves an instance registered at the origin site (name or id).
	Instance(ctx context.Context, nameOrID string) (api.Instance, error)
	StartReverse(ctx context.Context, recoveryInstanceID string) error
	StartFailback(ctx context.Context, key, recoveryInstanceID, into string) (string, error)
	CompleteFailback(ctx context.Context, key, recoveryInstanceID string) (string, error)
	// Launched says where a server launched by a job is reached (a failback's machine).
	Launched(ctx context.Context, jobID, serverID string) (address string, ports []api.PortForward, err error)

	// Secret is a plan secret's value.
	Secret(ctx context.Context, name string) ([]byte, error)
	// MayRunCommands: only the system account's plans run scripts and command checks.
	MayRunCommands() bool
	// LastRun is the plan's newest run of a mode that succeeded (nil: none).
	LastRun(ctx context.Context, mode string) (*api.PlanRun, error)
	// Save stores the run as it stands.
	Save(ctx context.Context, run *api.PlanRun) error

	DNS(server string, key DNSKey) DNSClient
	HAProxy(network, address string) LoadBalancer
	Now() time.Time
}

// Server is a source server a plan selects.
type Server struct {
	ID       string
	Hostname string
}

// PIT is a recovery snapshot chosen for a server.
type PIT struct {
	ID   string
	Time time.Time
}

// DNSKey is a TSIG key with its secret.
type DNSKey struct {
	Name, Algorithm, Secret string
}

// RecordSet is a DNS record set.
type RecordSet struct {
	Name, Type string
	TTL        uint32
	Values     []string
}

// DNSClient changes a zone by dynamic update (package dnsupdate).
type DNSClient interface {
	Lookup(ctx context.Context, name, typ string) (RecordSet, error)
	Replace(ctx context.Context, zone string, set RecordSet) error
	Check(ctx context.Context, zone string) error
}

// BackendServer is a load balancer's backend server as it stands.
type BackendServer struct {
	Addr  string
	Port  int
	State string // ready, drain or maint
}

// LoadBalancer sets backend servers (package haproxy).
type LoadBalancer interface {
	Ping(ctx context.Context) error
	Server(ctx context.Context, backend, name string) (BackendServer, error)
	SetAddr(ctx context.Context, backend, name, addr string, port int) error
	SetState(ctx context.Context, backend, name, state string) error
}
