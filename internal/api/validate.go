package api

import (
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/volspec"
)

var (
	machineIDRE  = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)
	majorMinorRE = regexp.MustCompile(`^[0-9]{1,10}:[0-9]{1,10}$`)
	printableRE  = regexp.MustCompile(`^[\x20-\x7e]*$`)
)

// ValidateVolumes checks a volume list as an agent reports it: names, sizes and count
// by the rule every component shares (volspec), then the descriptive fields.
func ValidateVolumes(vs []Volume) error {
	for _, v := range vs {
		if v.SizeBytes < 0 {
			return Invalid("volume %s: sizeBytes must be 0 or more, not %d", v.Name, v.SizeBytes)
		}
	}
	if err := volspec.Check(len(vs), func(i int) (string, uint64) { return vs[i].Name, uint64(vs[i].SizeBytes) }); err != nil {
		return Invalid("%s", err)
	}
	for _, v := range vs {
		if !filepath.IsAbs(v.Path) || len(v.Path) > 4096 || filepath.Clean(v.Path) != v.Path {
			return Invalid("volume %s: path %q must be a clean absolute path", v.Name, v.Path)
		}
		if v.MajorMinor != "" && !majorMinorRE.MatchString(v.MajorMinor) {
			return Invalid("volume %s: majorMinor %q must look like 253:0", v.Name, v.MajorMinor)
		}
		if len(v.MountPoints) > 64 {
			return Invalid("volume %s: at most 64 mount points are allowed", v.Name)
		}
		for _, m := range v.MountPoints {
			if !filepath.IsAbs(m) || len(m) > 4096 {
				return Invalid("volume %s: mount point %q must be an absolute path", v.Name, m)
			}
		}
	}
	return nil
}

// Validate checks a source server registration (the CSR is checked by the server).
func (r RegisterSourceServerRequest) Validate() error {
	if strings.TrimSpace(r.CSR) == "" {
		return Invalid("csr is required: the agent sends a PEM certificate request for its own key")
	}
	if !machineIDRE.MatchString(r.MachineID) {
		return Invalid("machineId %q must be 1-128 letters, digits or ._:- (the content of /etc/machine-id)", r.MachineID)
	}
	if r.Hostname == "" || len(r.Hostname) > 253 || !printableRE.MatchString(r.Hostname) {
		return Invalid("hostname must be 1-253 printable characters")
	}
	for name, v := range map[string]string{"os": r.OS, "arch": r.Arch, "agentVersion": r.AgentVersion} {
		if len(v) > 128 || !printableRE.MatchString(v) {
			return Invalid("%s must be at most 128 printable characters", name)
		}
	}
	if r.CPUs < 0 || r.CPUs > 100000 || r.MemoryBytes < 0 {
		return Invalid("cpus and memoryBytes must be 0 or more")
	}
	return ValidateVolumes(r.Volumes)
}

// Validate checks a replicator registration (the CSR is checked by the server).
func (r RegisterReplicatorRequest) Validate() error {
	if strings.TrimSpace(r.CSR) == "" {
		return Invalid("csr is required: the replicator sends a PEM certificate request for its own key")
	}
	if !ValidName(r.Name) {
		return Invalid("name %q must be 1-63 lowercase letters, digits or '-'", r.Name)
	}
	if !ValidName(r.Site) {
		return Invalid("site %q is not a site name (see lifeboat sites list)", r.Site)
	}
	host, port, err := net.SplitHostPort(r.Address)
	if err != nil || host == "" || port == "" || len(r.Address) > 255 {
		return Invalid("address %q must be host:port, the address agents connect to", r.Address)
	}
	if len(r.Version) > 128 || !printableRE.MatchString(r.Version) {
		return Invalid("version must be at most 128 printable characters")
	}
	return nil
}

// Validate checks heartbeat metrics.
func (r HeartbeatRequest) Validate() error {
	m := r.Metrics
	if !(m.CPUPercent >= 0 && m.CPUPercent < 1e6) || m.RSSBytes < 0 || m.VolumesServed < 0 || m.Sessions < 0 || m.IngestBytesPerSecond < 0 {
		return Invalid("metrics must be 0 or more")
	}
	if len(r.Version) > 128 || !printableRE.MatchString(r.Version) {
		return Invalid("version must be at most 128 printable characters")
	}
	return nil
}

// Validate checks a token request and fills in nothing: defaults are the server's.
func (r CreateTokenRequest) Validate() error {
	switch r.Kind {
	case TokenAPI:
		if r.Role.Level() == 0 {
			return Invalid("an api token needs --role admin, operator or viewer, not %q", r.Role)
		}
		if r.Scope != "" {
			return Invalid("scope is for install tokens only")
		}
		if r.AllowReplace {
			return Invalid("allowReplace is for install tokens only: an admin API token may re-register without it")
		}
	case TokenInstall:
		if r.Role != "" {
			return Invalid("role is for api tokens only: an install token can only register a machine")
		}
		if r.Scope != "" && r.Scope != ScopeSourceServer && r.Scope != ScopeReplicator && r.Scope != ScopeFailback {
			return Invalid("scope must be source-server, replicator or failback, not %q", r.Scope)
		}
		if time.Duration(r.TTLSeconds)*time.Second > MaxInstallTokenTTL {
			return Invalid("an install token lives at most 30 days (720h); use a shorter --ttl")
		}
	default:
		return Invalid("kind must be install or api, not %q", r.Kind)
	}
	if r.TTLSeconds < 0 || r.TTLSeconds > 10*365*86400 {
		return Invalid("ttlSeconds must be 0 (default) to 10 years, not %d", r.TTLSeconds)
	}
	if r.Uses < 0 {
		return Invalid("uses must be 0 (unlimited) or more, not %d", r.Uses)
	}
	if len(r.Description) > 256 || !printableRE.MatchString(r.Description) {
		return Invalid("description must be at most 256 printable characters")
	}
	return nil
}

// ValidateQuota checks a source server quota.
func ValidateQuota(q int) error {
	if q < 0 || q > 10_000_000 {
		return Invalid("quotaSourceServers must be 0 to 10000000, not %d", q)
	}
	return nil
}

// Validate checks an account request.
func (r CreateAccountRequest) Validate() error {
	if !ValidName(r.Name) {
		return Invalid("account name %q must be 1-63 lowercase letters, digits or '-'", r.Name)
	}
	if r.QuotaSourceServers != nil {
		if err := ValidateQuota(*r.QuotaSourceServers); err != nil {
			return err
		}
	}
	if r.StagingStoreURL != "" {
		if err := ValidateStoreURL(r.StagingStoreURL); err != nil {
			return err
		}
	}
	return validateStoreCredentials(r.StagingStoreURL != "", r.StagingStoreCredentials)
}

// Validate checks an account update.
func (r UpdateAccountRequest) Validate() error {
	if r.QuotaSourceServers == nil && r.StagingStoreURL == nil {
		return Invalid("nothing to change: give quotaSourceServers or stagingStoreUrl")
	}
	if r.QuotaSourceServers != nil {
		if err := ValidateQuota(*r.QuotaSourceServers); err != nil {
			return err
		}
	}
	if r.StagingStoreURL != nil && *r.StagingStoreURL != DefaultStagingStore {
		if err := ValidateStoreURL(*r.StagingStoreURL); err != nil {
			return err
		}
	}
	return validateStoreCredentials(r.StagingStoreURL != nil, r.StagingStoreCredentials)
}

// validateStoreCredentials checks credentials, which need the store URL they are for.
func validateStoreCredentials(haveURL bool, c *S3Credentials) error {
	if c == nil {
		return nil
	}
	if !haveURL {
		return Invalid("stagingStoreCredentials need the stagingStoreUrl they are for")
	}
	return c.Validate()
}

// Validate checks the overrides on their own; the effective settings are checked too.
func (o ReplicationSettingsOverrides) Validate() error {
	if o.PITPolicy != nil {
		if err := o.PITPolicy.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks a batch delete.
func (r DeleteRecoverySnapshotsRequest) Validate() error {
	if len(r.IDs) == 0 || len(r.IDs) > 1000 {
		return Invalid("ids must list 1 to 1000 snapshot ids, not %d", len(r.IDs))
	}
	for _, id := range r.IDs {
		if !ValidID(PrefixSnapshot, id) {
			return Invalid("%q is not a snapshot id (pit-…)", id)
		}
	}
	return nil
}

// Validate checks a volume update.
func (r UpdateVolumesRequest) Validate() error { return ValidateVolumes(r.Volumes) }

// Validate checks a renewal.
func (r RenewCertificateRequest) Validate() error {
	if strings.TrimSpace(r.CSR) == "" {
		return Invalid("csr is required: send a PEM certificate request for the new key")
	}
	return nil
}
