// Package plan is recovery plans as code (docs/plans.md): the plan file's format, its
// parsing and validation, and the execution of a plan run — its waves of launches,
// health checks and steps (DNS, load balancer, webhooks, scripts) — with the report
// every run yields. The control plane stores plans and runs, and provides what a run
// acts on through the Env interface.
package plan

import (
	"fmt"
	"time"
)

// Plan is a recovery plan: which servers are launched in which order (waves), what
// must answer before the next wave starts (health checks), and what is switched over
// once they do (steps).
type Plan struct {
	// Name is the plan's name: 1-63 lowercase letters, digits or '-' (api.ValidName).
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	// Schedule runs drills of the plan on a schedule.
	Schedule *Schedule `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	// Drill says how drills of the plan run.
	Drill DrillOptions `yaml:"drill,omitempty" json:"drill,omitempty"`
	// OnFailure is what becomes of the instances a failed run launched: leave (the
	// default: they keep running, for the operator to look at) or terminate.
	OnFailure string `yaml:"onFailure,omitempty" json:"onFailure,omitempty"`
	// Waves are launched in order: a wave starts once the waves it comes after (After,
	// or else the wave before it in the file) have passed their health checks and steps.
	Waves []Wave `yaml:"waves" json:"waves"`
}

// OnFailure values.
const (
	OnFailureLeave     = "leave"
	OnFailureTerminate = "terminate"
)

// Schedule is when drills of a plan run by themselves.
type Schedule struct {
	// Drill is a cron expression of 5 fields (minute hour day-of-month month
	// day-of-week, in UTC), or "@every DURATION" (at least 1m).
	Drill string `yaml:"drill" json:"drill"`
}

// DrillOptions say how the plan's drills run.
type DrillOptions struct {
	// NetworkAccess lets the drill's instances reach the network as their launch
	// settings say; without it a drill runs isolated.
	NetworkAccess bool `yaml:"networkAccess,omitempty" json:"networkAccess,omitempty"`
	// Terminate terminates a drill's instances once its checks are done. Scheduled
	// drills always do.
	Terminate bool `yaml:"terminate,omitempty" json:"terminate,omitempty"`
}

// Wave is a set of servers launched together.
type Wave struct {
	// Name is unique in the plan (same form as the plan's).
	Name string `yaml:"name" json:"name"`
	// After names the waves that must be done before this one; absent: the wave before
	// it in the file, if any.
	After []string `yaml:"after,omitempty" json:"after,omitempty"`
	// Servers selects the wave's source servers; a server is in at most one wave.
	Servers []Selector `yaml:"servers" json:"servers"`
	// Launch overrides the launch settings of the wave's servers for runs of the plan.
	Launch []LaunchOverride `yaml:"launch,omitempty" json:"launch,omitempty"`
	// HealthChecks run against each launched server of the wave; every one must pass
	// before the wave's steps run and the next wave starts.
	HealthChecks []HealthCheck `yaml:"healthChecks,omitempty" json:"healthChecks,omitempty"`
	// Steps run in order once the wave's health checks passed.
	Steps []Step `yaml:"steps,omitempty" json:"steps,omitempty"`
	// Failback says where the wave's servers are written on failback; a server not
	// named goes to a new machine at its origin site.
	Failback []FailbackTarget `yaml:"failback,omitempty" json:"failback,omitempty"`
}

// FailbackTarget is where one server goes home: Into is an instance registered at the
// origin site (lifeboat instances list: its name or id), or "new".
type FailbackTarget struct {
	Server string `yaml:"server" json:"server"` // a source server id of the plan
	Into   string `yaml:"into" json:"into"`
}

// Selector selects source servers: exactly one of its fields is set.
type Selector struct {
	ID    string            `yaml:"id,omitempty" json:"id,omitempty"`       // a source server id (s-…)
	Tags  map[string]string `yaml:"tags,omitempty" json:"tags,omitempty"`   // every server with all of these tags
	Group string            `yaml:"group,omitempty" json:"group,omitempty"` // every member of a consistency group (name or id)
}

// LaunchOverride changes launch settings for the plan's runs (not the stored ones).
type LaunchOverride struct {
	// Server is a source server id of the wave; empty: every server of the wave.
	Server    string            `yaml:"server,omitempty" json:"server,omitempty"`
	CPUs      int               `yaml:"cpus,omitempty" json:"cpus,omitempty"`
	MemoryMiB int               `yaml:"memoryMiB,omitempty" json:"memoryMiB,omitempty"`
	Hostname  string            `yaml:"hostname,omitempty" json:"hostname,omitempty"`
	IP        string            `yaml:"ip,omitempty" json:"ip,omitempty"` // CIDR
	Tags      map[string]string `yaml:"tags,omitempty" json:"tags,omitempty"`
}

// HealthCheck is a check run against each launched server of a wave, until it passes
// or its attempts are spent. Exactly one of HTTP, TCP and Command is set. Addresses,
// URLs and commands may name ${LIFEBOAT_INSTANCE_ADDRESS} (where the instance is
// reached) and ${LIFEBOAT_PORT_TCP_<guest port>} (the host:port a guest port is
// forwarded from), as post-launch actions do.
type HealthCheck struct {
	Name    string        `yaml:"name" json:"name"`
	HTTP    *HTTPCheck    `yaml:"http,omitempty" json:"http,omitempty"`
	TCP     *TCPCheck     `yaml:"tcp,omitempty" json:"tcp,omitempty"`
	Command *CommandCheck `yaml:"command,omitempty" json:"command,omitempty"`
	// Timeout bounds one attempt (default 5s); Interval is the wait between attempts
	// (default 5s); Retries is how many attempts fail before the check does (default 60).
	Timeout  Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	Interval Duration `yaml:"interval,omitempty" json:"interval,omitempty"`
	Retries  int      `yaml:"retries,omitempty" json:"retries,omitempty"`
}

// HTTPCheck passes when a GET of URL answers Status (default 200) with a body that
// contains Body (when set).
type HTTPCheck struct {
	URL    string `yaml:"url" json:"url"`
	Status int    `yaml:"status,omitempty" json:"status,omitempty"`
	Body   string `yaml:"body,omitempty" json:"body,omitempty"`
}

// TCPCheck passes when Address (host:port) accepts a connection.
type TCPCheck struct {
	Address string `yaml:"address" json:"address"`
}

// CommandCheck passes when Run (a shell command on the control plane's host) exits 0.
// Only plans of the system account may run commands.
type CommandCheck struct {
	Run string `yaml:"run" json:"run"`
}

// Step is something switched over once a wave is healthy: exactly one of its actions
// is set.
type Step struct {
	// Name is unique in its wave (same form as the plan's).
	Name    string       `yaml:"name" json:"name"`
	DNS     *DNSStep     `yaml:"dns,omitempty" json:"dns,omitempty"`
	HAProxy *HAProxyStep `yaml:"haproxy,omitempty" json:"haproxy,omitempty"`
	Webhook *WebhookStep `yaml:"webhook,omitempty" json:"webhook,omitempty"`
	Script  *ScriptStep  `yaml:"script,omitempty" json:"script,omitempty"`
}

// DNSStep sets DNS records by RFC 2136 dynamic update, signed with a TSIG key.
type DNSStep struct {
	// Server is the primary server of the zone: host:port (port 53 when absent).
	Server string `yaml:"server" json:"server"`
	// Zone is the zone updated (its records must be in it).
	Zone string `yaml:"zone" json:"zone"`
	// Key is the TSIG key the server accepts for updates.
	Key TSIGKey `yaml:"key" json:"key"`
	// Records are set on failover and put back on failback.
	Records []DNSRecord `yaml:"records" json:"records"`
	// Drill is what a drill sets instead: its own zone and records. Absent: a drill
	// changes no DNS record.
	Drill *DNSDrill `yaml:"drill,omitempty" json:"drill,omitempty"`
}

// DNSDrill is the records a drill sets, in a zone of its own.
type DNSDrill struct {
	Zone    string      `yaml:"zone" json:"zone"`
	Records []DNSRecord `yaml:"records" json:"records"`
}

// TSIGKey names a TSIG key. Its secret is a plan secret of the account (lifeboat plan
// secrets set NAME), never in the plan file.
type TSIGKey struct {
	Name      string `yaml:"name" json:"name"`                               // the key's name, as the DNS server knows it
	Algorithm string `yaml:"algorithm,omitempty" json:"algorithm,omitempty"` // hmac-sha256 (default), hmac-sha512, hmac-sha1
	Secret    string `yaml:"secret" json:"secret"`                           // the plan secret holding the base64 key
}

// DNSRecord is one record set (name and type). On failover (or drill) it becomes
// Values, or the address of the recovered instance of Instance; on failback it
// becomes Failback, or else what it was before the failover.
type DNSRecord struct {
	Name     string   `yaml:"name" json:"name"`                     // fully qualified or relative to the zone
	Type     string   `yaml:"type,omitempty" json:"type,omitempty"` // A (default), AAAA, CNAME or TXT
	TTL      int      `yaml:"ttl,omitempty" json:"ttl,omitempty"`   // seconds (default 60)
	Values   []string `yaml:"values,omitempty" json:"values,omitempty"`
	Instance string   `yaml:"instance,omitempty" json:"instance,omitempty"` // a source server id of the plan
	Failback []string `yaml:"failback,omitempty" json:"failback,omitempty"`
}

// HAProxyStep sets backend servers through HAProxy's runtime API. Drills change
// nothing unless Drill names a backend of their own.
type HAProxyStep struct {
	// Socket is the runtime API's Unix socket on the control plane's host, or Address
	// its TCP address (host:port); one of them.
	Socket  string `yaml:"socket,omitempty" json:"socket,omitempty"`
	Address string `yaml:"address,omitempty" json:"address,omitempty"`
	// Backend is the backend whose servers are set.
	Backend string          `yaml:"backend" json:"backend"`
	Servers []HAProxyServer `yaml:"servers" json:"servers"`
	// DrillBackend, when set, is the backend a drill sets instead (same server names).
	DrillBackend string `yaml:"drillBackend,omitempty" json:"drillBackend,omitempty"`
}

// HAProxyServer is one server of a backend. On failover it is pointed at the
// recovered instance of Instance (the host port its guest port Port is forwarded
// from, or its address and Port) and made ready; on failback it is pointed at
// Failback (host:port), or else where it was before the failover, with its state then.
type HAProxyServer struct {
	Name     string `yaml:"name" json:"name"`
	Instance string `yaml:"instance" json:"instance"`                     // a source server id of the plan
	Port     int    `yaml:"port,omitempty" json:"port,omitempty"`         // guest port (default 80)
	Failback string `yaml:"failback,omitempty" json:"failback,omitempty"` // host:port
}

// WebhookStep posts the run's progress as JSON to an HTTPS URL, signed with
// HMAC-SHA256 of the body under a plan secret (header X-Lifeboat-Signature).
type WebhookStep struct {
	URL    string `yaml:"url" json:"url"`
	Secret string `yaml:"secret" json:"secret"` // plan secret name
	// CA is a plan secret holding the PEM CA certificates the URL's certificate must
	// chain to; absent: the host's roots.
	CA      string   `yaml:"ca,omitempty" json:"ca,omitempty"`
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"` // default 10s
}

// ScriptStep runs a shell command on the control plane's host with the run's
// environment (LIFEBOAT_PLAN, LIFEBOAT_RUN_ID, LIFEBOAT_MODE, LIFEBOAT_WAVE). Only
// plans of the system account may run scripts.
type ScriptStep struct {
	Run     string   `yaml:"run" json:"run"`
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"` // default 60s
}

// Duration is a time.Duration written as Go writes one ("30s", "2m").
type Duration time.Duration

// D is the duration, or def when it is unset.
func (d Duration) D(def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return time.Duration(d)
}

// String writes the duration as Go does.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes the duration as "30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads a duration such as "30s" or "2m".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration such as 30s or 2m", b)
	}
	*d = Duration(v)
	return nil
}
