package api

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// ReplicationSettings say how a source server replicates. An account has a template;
// each source server may override any field; the effective settings are the template
// with the overrides applied.
type ReplicationSettings struct {
	TargetSite                      string    `json:"targetSite"`
	BandwidthMbps                   int       `json:"bandwidthMbps"` // 0: unlimited
	PITPolicy                       PITPolicy `json:"pitPolicy"`
	ConsistencyPointIntervalSeconds int       `json:"consistencyPointIntervalSeconds"`
	FreezeTimeoutMs                 int       `json:"freezeTimeoutMs"`
	Compression                     string    `json:"compression"`         // s2, zstd or none
	StagingStoreURL                 string    `json:"stagingStoreUrl"`     // file:///dir or s3://bucket/prefix?endpoint=…
	DedicatedReplicator             string    `json:"dedicatedReplicator"` // replicator name; "" assigns automatically
	// IgnoreNewDisks: disks that appear on the server later are not replicated (by
	// default the agent picks them up by itself). Only for discovered disks: a server
	// installed with --volume replicates exactly those.
	IgnoreNewDisks bool `json:"ignoreNewDisks"`
}

// PITPolicy decides which consistency points are kept as recovery snapshots: every
// consistency point for ConsistencyPointRetentionMinutes, then one per rule interval for
// the rule's retention (DRS's rule shape: units, interval, retention duration).
type PITPolicy struct {
	ConsistencyPointRetentionMinutes int       `json:"consistencyPointRetentionMinutes"`
	Rules                            []PITRule `json:"rules"`
}

// PITRule keeps one PIT every Interval Units for RetentionDuration Units.
type PITRule struct {
	Units             string `json:"units"` // MINUTE, HOUR or DAY
	Interval          int    `json:"interval"`
	RetentionDuration int    `json:"retentionDuration"`
}

// PIT rule units.
const (
	UnitMinute = "MINUTE"
	UnitHour   = "HOUR"
	UnitDay    = "DAY"
)

// Compression algorithms for replicated blocks.
const (
	CompressionS2   = "s2"
	CompressionZstd = "zstd"
	CompressionNone = "none"
)

// DefaultPITPolicy is DRS's: every 10 minutes kept 1 hour, hourly kept 24 hours, daily
// kept 7 days; plus every consistency point kept 60 minutes.
func DefaultPITPolicy() PITPolicy {
	return PITPolicy{
		ConsistencyPointRetentionMinutes: 60,
		Rules: []PITRule{
			{Units: UnitMinute, Interval: 10, RetentionDuration: 60},
			{Units: UnitHour, Interval: 1, RetentionDuration: 24},
			{Units: UnitDay, Interval: 1, RetentionDuration: 7},
		},
	}
}

// DefaultReplicationSettings returns the template a new account starts with. storeURL is
// the staging store (lifeboat up records its local staging directory here).
func DefaultReplicationSettings(storeURL string) ReplicationSettings {
	return ReplicationSettings{
		TargetSite:    DefaultSite,
		BandwidthMbps: 0,
		PITPolicy:     DefaultPITPolicy(),
		// A point every second: the data lost when a source dies is the age of its
		// newest point (BENCHMARKS.md, "Consistency points every second").
		ConsistencyPointIntervalSeconds: 1,
		FreezeTimeoutMs:                 200,
		// s2 by measurement: zstd compresses ~15% smaller but costs the agent and the
		// replicator about twice the CPU (bench/replication/RESULTS.md).
		Compression:     CompressionS2,
		StagingStoreURL: storeURL,
	}
}

// ReplicationSettingsOverrides are a source server's departures from the template; a nil
// field inherits the template's value.
type ReplicationSettingsOverrides struct {
	TargetSite                      *string    `json:"targetSite,omitempty"`
	BandwidthMbps                   *int       `json:"bandwidthMbps,omitempty"`
	PITPolicy                       *PITPolicy `json:"pitPolicy,omitempty"`
	ConsistencyPointIntervalSeconds *int       `json:"consistencyPointIntervalSeconds,omitempty"`
	FreezeTimeoutMs                 *int       `json:"freezeTimeoutMs,omitempty"`
	Compression                     *string    `json:"compression,omitempty"`
	StagingStoreURL                 *string    `json:"stagingStoreUrl,omitempty"`
	DedicatedReplicator             *string    `json:"dedicatedReplicator,omitempty"`
	IgnoreNewDisks                  *bool      `json:"ignoreNewDisks,omitempty"`
}

// Apply returns the template with the overrides applied.
func (s ReplicationSettings) Apply(o ReplicationSettingsOverrides) ReplicationSettings {
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	seti := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	set(&s.TargetSite, o.TargetSite)
	seti(&s.BandwidthMbps, o.BandwidthMbps)
	if o.PITPolicy != nil {
		s.PITPolicy = *o.PITPolicy
	}
	s.PITPolicy.Rules = slices.Clone(s.PITPolicy.Rules)
	seti(&s.ConsistencyPointIntervalSeconds, o.ConsistencyPointIntervalSeconds)
	seti(&s.FreezeTimeoutMs, o.FreezeTimeoutMs)
	set(&s.Compression, o.Compression)
	set(&s.StagingStoreURL, o.StagingStoreURL)
	set(&s.DedicatedReplicator, o.DedicatedReplicator)
	if o.IgnoreNewDisks != nil {
		s.IgnoreNewDisks = *o.IgnoreNewDisks
	}
	return s
}

// Validate checks every field and returns a 400 error naming the first bad one.
func (s ReplicationSettings) Validate() error {
	if !ValidName(s.TargetSite) {
		return Invalid("targetSite %q is not a site name: use 1-63 lowercase letters, digits or '-'", s.TargetSite)
	}
	if s.BandwidthMbps < 0 || s.BandwidthMbps > 1_000_000 {
		return Invalid("bandwidthMbps must be 0 (unlimited) to 1000000, not %d", s.BandwidthMbps)
	}
	if err := s.PITPolicy.Validate(); err != nil {
		return err
	}
	if s.ConsistencyPointIntervalSeconds < 1 || s.ConsistencyPointIntervalSeconds > 86400 {
		return Invalid("consistencyPointIntervalSeconds must be 1 to 86400, not %d", s.ConsistencyPointIntervalSeconds)
	}
	if s.FreezeTimeoutMs < 1 || s.FreezeTimeoutMs > 60000 {
		return Invalid("freezeTimeoutMs must be 1 to 60000, not %d", s.FreezeTimeoutMs)
	}
	switch s.Compression {
	case CompressionS2, CompressionZstd, CompressionNone:
	default:
		return Invalid("compression must be s2, zstd or none, not %q", s.Compression)
	}
	if err := ValidateStoreURL(s.StagingStoreURL); err != nil {
		return err
	}
	if s.DedicatedReplicator != "" && !ValidName(s.DedicatedReplicator) {
		return Invalid("dedicatedReplicator %q is not a replicator name: leave it empty to assign automatically", s.DedicatedReplicator)
	}
	return nil
}

// ValidateStoreURL accepts file:///absolute/dir and s3://bucket[/prefix][?endpoint=…].
func ValidateStoreURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || s == "" {
		return Invalid("stagingStoreUrl %q is not a URL: use file:///dir or s3://bucket/prefix", s)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" || !strings.HasPrefix(u.Path, "/") {
			return Invalid("stagingStoreUrl %q must name an absolute directory, like file:///var/lib/lifeboat/staging", s)
		}
	case "s3":
		if u.Host == "" {
			return Invalid("stagingStoreUrl %q has no bucket: use s3://bucket/prefix?endpoint=host:port", s)
		}
	default:
		return Invalid("stagingStoreUrl %q must start with file:// or s3://", s)
	}
	return nil
}

// Validate checks the PIT policy: retention limits per unit, at most one rule per unit.
func (p PITPolicy) Validate() error {
	if p.ConsistencyPointRetentionMinutes < 0 || p.ConsistencyPointRetentionMinutes > 10080 {
		return Invalid("pitPolicy.consistencyPointRetentionMinutes must be 0 to 10080 (7 days), not %d", p.ConsistencyPointRetentionMinutes)
	}
	if len(p.Rules) == 0 && p.ConsistencyPointRetentionMinutes == 0 {
		return Invalid("pitPolicy keeps no recovery snapshot: add a rule or set consistencyPointRetentionMinutes")
	}
	// Per unit: the largest interval and retention allowed.
	limits := map[string][2]int{UnitMinute: {59, 1440}, UnitHour: {23, 168}, UnitDay: {1, 365}}
	seen := map[string]bool{}
	for _, r := range p.Rules {
		lim, ok := limits[r.Units]
		if !ok {
			return Invalid("pitPolicy rule units must be MINUTE, HOUR or DAY, not %q", r.Units)
		}
		if seen[r.Units] {
			return Invalid("pitPolicy has two %s rules: keep one rule per unit", r.Units)
		}
		seen[r.Units] = true
		if r.Interval < 1 || r.Interval > lim[0] {
			return Invalid("pitPolicy %s rule interval must be 1 to %d, not %d", r.Units, lim[0], r.Interval)
		}
		if r.RetentionDuration < 1 || r.RetentionDuration > lim[1] {
			return Invalid("pitPolicy %s rule retentionDuration must be 1 to %d, not %d", r.Units, lim[1], r.RetentionDuration)
		}
		if r.RetentionDuration < r.Interval {
			return Invalid("pitPolicy %s rule keeps PITs for %d but takes one every %d: retentionDuration must be at least the interval", r.Units, r.RetentionDuration, r.Interval)
		}
	}
	return nil
}

// LaunchSettings say how a recovery instance of a source server is launched.
type LaunchSettings struct {
	Provider         string        `json:"provider"` // qemu, image or existing-instance
	CPUs             int           `json:"cpus"`
	MemoryMiB        int           `json:"memoryMiB"`
	Network          LaunchNetwork `json:"network"`
	IP               string        `json:"ip,omitempty"`          // static address in CIDR form; empty: DHCP
	Hostname         string        `json:"hostname,omitempty"`    // empty: the source's
	BootMode         string        `json:"bootMode"`              // bios or uefi (firmware boots the disk), or kernel (direct kernel boot)
	KernelArgs       string        `json:"kernelArgs,omitempty"`  // bootMode kernel: the kernel command line (default: root=/dev/vda ro console=ttyS0)
	DiskFormat       string        `json:"diskFormat,omitempty"`  // raw (default, sparse) or qcow2
	ImageTarget      *ImageTarget  `json:"imageTarget,omitempty"` // provider image: where the disks go (default: the recovery directory)
	StartAfterLaunch bool          `json:"startAfterLaunch"`
	// Instant boots the instance while its disks are still in the staging store (served
	// over NBD under a local copy-on-write overlay) and copies them to local storage in
	// the background (qemu provider): boot time does not grow with disk size.
	Instant           bool               `json:"instant,omitempty"`
	CopyTags          bool               `json:"copyTags"`
	Tags              map[string]string  `json:"tags,omitempty"`
	TargetInstanceID  string             `json:"targetInstanceId,omitempty"` // for existing-instance
	PostLaunchActions []PostLaunchAction `json:"postLaunchActions,omitempty"`
}

// LaunchNetwork is a recovery instance's network.
type LaunchNetwork struct {
	Mode         string        `json:"mode"`             // isolated, user or bridge
	Bridge       string        `json:"bridge,omitempty"` // bridge mode: host bridge name
	PortForwards []PortForward `json:"portForwards,omitempty"`
}

// ImageTarget is where the image provider writes a recovery's disks: a directory (one
// sparse image per volume) or block devices (one per volume, in the server's volume
// order), on the control plane's host.
type ImageTarget struct {
	Dir     string   `json:"dir,omitempty"`
	Devices []string `json:"devices,omitempty"`
}

// PortForward forwards a host port to the instance (user network mode).
type PortForward struct {
	Protocol  string `json:"protocol"` // tcp or udp
	HostAddr  string `json:"hostAddr,omitempty"`
	HostPort  int    `json:"hostPort"` // 0: a free port, chosen at launch (the recovery instance shows it)
	GuestPort int    `json:"guestPort"`
}

// PostLaunchAction runs after an instance launched: a script on the control plane, or a
// health check the launch waits for.
type PostLaunchAction struct {
	Name           string `json:"name"`
	Type           string `json:"type"`              // script, tcp-check or http-check
	Command        string `json:"command,omitempty"` // script
	Address        string `json:"address,omitempty"` // tcp-check: host:port
	URL            string `json:"url,omitempty"`     // http-check (address and URL may name ${LIFEBOAT_INSTANCE_ADDRESS} and ${LIFEBOAT_PORT_TCP_<guest port>})
	TimeoutSeconds int    `json:"timeoutSeconds"`
}

// Launch setting values.
const (
	ProviderQEMU             = "qemu"
	ProviderImage            = "image"
	ProviderExistingInstance = "existing-instance"

	NetworkIsolated = "isolated"
	NetworkUser     = "user"
	NetworkBridge   = "bridge"

	BootBIOS   = "bios"
	BootUEFI   = "uefi"
	BootKernel = "kernel" // direct kernel boot: the kernel and initrd are read from the recovered disk

	DiskRaw   = "raw"
	DiskQcow2 = "qcow2"
)

// DefaultLaunchSettings sizes a recovery instance like its source (1 CPU and 1 GiB when
// the source did not say), in an isolated network, started after launch.
func DefaultLaunchSettings(cpus int, memoryBytes int64) LaunchSettings {
	if cpus < 1 {
		cpus = 1
	}
	mib := int(memoryBytes >> 20)
	if mib < 256 {
		mib = 1024
	}
	return LaunchSettings{
		Provider:         ProviderQEMU,
		CPUs:             min(cpus, 256),
		MemoryMiB:        min(mib, 1<<20),
		Network:          LaunchNetwork{Mode: NetworkIsolated},
		BootMode:         BootBIOS,
		StartAfterLaunch: true,
		CopyTags:         true,
	}
}

var (
	hostnameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$`)
	tagKeyRE   = regexp.MustCompile(`^[A-Za-z0-9_.:/=+@-]{1,128}$`)
	bridgeRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

// Validate checks every launch setting and returns a 400 error naming the first bad one.
func (l LaunchSettings) Validate() error {
	switch l.Provider {
	case ProviderQEMU, ProviderImage, ProviderExistingInstance, ProviderLibvirt:
	default:
		return Invalid("provider must be qemu (a VM: on a libvirt site, a libvirt domain), libvirt, image or existing-instance, not %q", l.Provider)
	}
	if l.CPUs < 1 || l.CPUs > 256 {
		return Invalid("cpus must be 1 to 256, not %d", l.CPUs)
	}
	if l.MemoryMiB < 64 || l.MemoryMiB > 1<<20 {
		return Invalid("memoryMiB must be 64 to 1048576, not %d", l.MemoryMiB)
	}
	if err := l.Network.validate(); err != nil {
		return err
	}
	if l.IP != "" {
		if _, _, err := net.ParseCIDR(l.IP); err != nil {
			return Invalid("ip %q must be an address with its prefix length, like 10.0.0.5/24 (empty for DHCP)", l.IP)
		}
	}
	if l.Hostname != "" && (len(l.Hostname) > 253 || !hostnameRE.MatchString(l.Hostname)) {
		return Invalid("hostname %q is not a valid host name (letters, digits, '-' and '.')", l.Hostname)
	}
	if l.BootMode != BootBIOS && l.BootMode != BootUEFI && l.BootMode != BootKernel {
		return Invalid("bootMode must be bios, uefi or kernel, not %q", l.BootMode)
	}
	if l.KernelArgs != "" && (l.BootMode != BootKernel || len(l.KernelArgs) > 4096 || !printableRE.MatchString(l.KernelArgs)) {
		return Invalid("kernelArgs is used only with bootMode kernel and is at most 4096 printable characters")
	}
	if l.Instant && l.Provider != ProviderQEMU {
		return Invalid("instant launch boots a VM from the staging store: it needs provider qemu, not %s", l.Provider)
	}
	if l.DiskFormat != "" && l.DiskFormat != DiskRaw && l.DiskFormat != DiskQcow2 {
		return Invalid("diskFormat must be raw or qcow2, not %q", l.DiskFormat)
	}
	if l.ImageTarget != nil {
		if err := l.ImageTarget.validate(l.Provider); err != nil {
			return err
		}
	}
	if len(l.Tags) > 50 {
		return Invalid("at most 50 tags are allowed, not %d", len(l.Tags))
	}
	for k, v := range l.Tags {
		if !tagKeyRE.MatchString(k) || len(v) > 256 {
			return Invalid("tag %q is not valid: keys are 1-128 letters, digits or _.:/=+@- and values at most 256 bytes", k)
		}
	}
	if l.Provider == ProviderExistingInstance && !ValidID(PrefixInstance, l.TargetInstanceID) {
		return Invalid("provider existing-instance needs targetInstanceId, the id of a registered instance (inst-…; see lifeboat instances list)")
	}
	if l.Provider != ProviderExistingInstance && l.TargetInstanceID != "" {
		return Invalid("targetInstanceId is only used with provider existing-instance")
	}
	if len(l.PostLaunchActions) > 20 {
		return Invalid("at most 20 post-launch actions are allowed, not %d", len(l.PostLaunchActions))
	}
	names := map[string]bool{}
	for i, a := range l.PostLaunchActions {
		if err := a.validate(); err != nil {
			return Invalid("postLaunchActions[%d]: %s", i, err.(*Error).Message)
		}
		if names[a.Name] {
			return Invalid("postLaunchActions has two actions named %q: names must be unique", a.Name)
		}
		names[a.Name] = true
	}
	return nil
}

func (n LaunchNetwork) validate() error {
	switch n.Mode {
	case NetworkIsolated, NetworkUser:
		if n.Bridge != "" {
			return Invalid("network.bridge is only used with network mode bridge")
		}
	case NetworkBridge:
		if !bridgeRE.MatchString(n.Bridge) {
			return Invalid("network mode bridge needs network.bridge, the name of a host bridge such as br0")
		}
	default:
		return Invalid("network.mode must be isolated, user or bridge, not %q", n.Mode)
	}
	if len(n.PortForwards) > 0 && n.Mode != NetworkUser {
		return Invalid("port forwards need network mode user, not %s", n.Mode)
	}
	if len(n.PortForwards) > 64 {
		return Invalid("at most 64 port forwards are allowed, not %d", len(n.PortForwards))
	}
	seen := map[string]bool{}
	for _, f := range n.PortForwards {
		if f.Protocol != "tcp" && f.Protocol != "udp" {
			return Invalid("port forward protocol must be tcp or udp, not %q", f.Protocol)
		}
		if f.HostPort < 0 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535 {
			return Invalid("port forward %s %d->%d: ports must be 1 to 65535 (host port 0: a free one)", f.Protocol, f.HostPort, f.GuestPort)
		}
		if f.HostAddr != "" && net.ParseIP(f.HostAddr) == nil {
			return Invalid("port forward hostAddr %q is not an IP address", f.HostAddr)
		}
		key := fmt.Sprintf("%s/%s/%d", f.Protocol, f.HostAddr, f.HostPort)
		if f.HostPort != 0 && seen[key] {
			return Invalid("host port %s %d is forwarded twice", f.Protocol, f.HostPort)
		}
		seen[key] = true
	}
	return nil
}

func (t ImageTarget) validate(provider string) error {
	if provider != ProviderImage {
		return Invalid("imageTarget is used only with provider image")
	}
	if (t.Dir == "") == (len(t.Devices) == 0) {
		return Invalid("imageTarget needs a directory (dir) or block devices (devices), one of the two")
	}
	paths := t.Devices
	if t.Dir != "" {
		paths = []string{t.Dir}
	}
	if len(paths) > 256 {
		return Invalid("imageTarget: at most 256 devices")
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || len(p) > 4096 || !printableRE.MatchString(p) {
			return Invalid("imageTarget path %q must be a clean absolute path on the control plane's host", p)
		}
	}
	return nil
}

// placeholderRE matches the ${NAME} variables a check's address or URL may name (the
// recovery instance's address and forwarded ports, known at launch).
var placeholderRE = regexp.MustCompile(`\$\{[A-Z0-9_]{1,64}\}`)

// withoutPlaceholders stands a valid host in for each ${NAME} (host:port for
// LIFEBOAT_PORT_*), so the rest of an address or URL can be checked.
func withoutPlaceholders(s string) string {
	return placeholderRE.ReplaceAllStringFunc(s, func(m string) string {
		if strings.HasPrefix(m, "${LIFEBOAT_PORT_") {
			return "h0:1"
		}
		return "h0"
	})
}

func (a PostLaunchAction) validate() error {
	if !ValidName(a.Name) {
		return Invalid("name %q must be 1-63 lowercase letters, digits or '-'", a.Name)
	}
	if a.TimeoutSeconds < 1 || a.TimeoutSeconds > 3600 {
		return Invalid("timeoutSeconds must be 1 to 3600, not %d", a.TimeoutSeconds)
	}
	switch a.Type {
	case "script":
		if strings.TrimSpace(a.Command) == "" || len(a.Command) > 4096 {
			return Invalid("a script action needs a command of at most 4096 bytes")
		}
		if a.Address != "" || a.URL != "" {
			return Invalid("a script action takes a command only")
		}
	case "tcp-check":
		if _, _, err := net.SplitHostPort(withoutPlaceholders(a.Address)); err != nil || a.Command != "" || a.URL != "" {
			return Invalid("a tcp-check action needs address as host:port, and nothing else")
		}
	case "http-check":
		u, err := url.Parse(withoutPlaceholders(a.URL))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || a.Command != "" || a.Address != "" {
			return Invalid("an http-check action needs url as http://host/path or https://…, and nothing else")
		}
	default:
		return Invalid("type must be script, tcp-check or http-check, not %q", a.Type)
	}
	return nil
}
