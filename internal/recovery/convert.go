package recovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion"
	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
)

// AgentBinaryPath is where conversion installs the agent's binary for reversed
// replication.
const AgentBinaryPath = "/usr/local/sbin/lifeboat"

// OriginAgentConfig is where conversion keeps the source's own agent configuration
// (its identity) inside the recovered server, where no agent reads it: failback puts it
// back on the origin's machine, which then replicates again as the source server.
const OriginAgentConfig = api.DefaultAgentConfig + ".origin"

// ConvertSpec is one conversion.
type ConvertSpec struct {
	Disks    []launch.Disk // raw images or devices, boot disk first
	Network  *launch.GuestNetwork
	Hostname string // "" leaves the source's
	Info     api.RecoveryInfo
	// GuestVolumes are the recovered disks as the recovered server sees them (the
	// reversed agent's volumes), in Disks' order.
	GuestVolumes []string
	// SeedTables are the hash tables (tracker.HashTable, binary) of the PIT's volumes in
	// Disks' order, written to api.ReverseSeedDir for reversed replication; nil for none.
	SeedTables [][]byte
	// AgentBinary, when set, is copied into the server as the agent.
	AgentBinary string
	// Hook, when set, runs after the built-in conversion (see docs/recovery.md).
	Hook     string
	Settings api.LaunchSettings
	Provider string
	// SeedDir is where a NoCloud seed is written when the server has cloud-init.
	SeedDir string
}

// ConvertResult says what conversion did.
type ConvertResult struct {
	Root  string   // the root filesystem converted ("" when none was found)
	Seed  string   // the NoCloud seed image, when the server has cloud-init
	Notes []string // things left as they were, and why
}

// Convert makes recovered disks fit their target without mounting them: the hostname,
// the first NIC's network settings, the agent's configuration for reversed replication
// (the source's own agent identity is removed: the copy must never replicate as its
// source), and a NoCloud seed when the server has cloud-init. Disks without an ext2/3/4
// root filesystem are left as they are (with a note) unless the hook converts them.
func Convert(ctx context.Context, s ConvertSpec) (ConvertResult, error) {
	var res ConvertResult
	root, image, err := findRoot(ctx, s.Disks)
	if err != nil {
		return res, err
	}
	if root == nil {
		res.Notes = append(res.Notes, "no ext2/3/4 root filesystem on the recovered disks: hostname, network and agent left as they are (a conversion hook can handle other systems)")
	} else {
		res.Root = root.String()
		c := conversion.Conversion{Hostname: s.Hostname}
		if s.Network != nil {
			c.Network = &conversion.Network{DHCP: s.Network.DHCP, Address: s.Network.Address, Gateway: s.Network.Gateway, DNS: s.Network.DNS}
		}
		files, err := reverseFiles(ctx, *root, s)
		if err != nil {
			return res, err
		}
		c.Files = append(c.Files, files...)
		if s.AgentBinary != "" {
			bin, err := os.ReadFile(s.AgentBinary)
			if err != nil {
				return res, fmt.Errorf("read the agent binary to install: %w", err)
			}
			c.Files = append(c.Files, conversion.File{Path: AgentBinaryPath, Content: bin, Mode: 0o755})
		}
		if err := conversion.Apply(ctx, image, c); err != nil {
			return res, err
		}
		if _, err := root.Stat(ctx, "/etc/cloud"); err == nil && s.SeedDir != "" {
			netCfg := ""
			if c.Network != nil {
				if netCfg, err = conversion.NetworkConfig(*c.Network); err != nil {
					return res, err
				}
			}
			hostname := s.Hostname
			seed, err := conversion.NoCloudSeed(ctx, s.SeedDir, conversion.MetaData{InstanceID: s.Info.RecoveryInstanceID,
				LocalHostname: hostname}, "", netCfg)
			if err != nil {
				return res, err
			}
			res.Seed = seed
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("look for cloud-init: %w", err)
		}
	}
	if s.Hook != "" {
		if err := runHook(ctx, s); err != nil {
			return res, err
		}
	}
	return res, nil
}

// findRoot finds the disk that holds the root filesystem (nil when none does).
func findRoot(ctx context.Context, disks []launch.Disk) (*ext4image.Filesystem, string, error) {
	for _, d := range disks {
		fsys, err := ext4image.Root(ctx, d.Path)
		if err == nil {
			return &fsys, d.Path, nil
		}
		if !errors.Is(err, ext4image.ErrNoFilesystem) {
			return nil, "", fmt.Errorf("look for the root filesystem on %s: %w", d.Path, err)
		}
	}
	return nil, "", nil
}

// reverseFiles are the files reversed replication starts from: what the server was
// recovered from (with its reverse key), an agent configuration without an identity
// (the copy must never replicate as its source; reversed replication registers it
// anew), the seed hash tables, and the source's own configuration kept aside for
// failback.
func reverseFiles(ctx context.Context, root ext4image.Filesystem, s ConvertSpec) ([]conversion.File, error) {
	info, err := json.MarshalIndent(s.Info, "", "  ")
	if err != nil {
		return nil, err
	}
	agent, err := yaml.Marshal(api.AgentConfig{Server: s.Info.ControlPlane, ServerPin: s.Info.ControlPlanePin, Volumes: s.GuestVolumes})
	if err != nil {
		return nil, err
	}
	files := []conversion.File{
		{Path: api.RecoveryInfoFile, Content: append(info, '\n'), Mode: 0o600},
		{Path: api.DefaultAgentConfig, Content: agent, Mode: 0o600},
	}
	for i, t := range s.SeedTables {
		files = append(files, conversion.File{Path: api.SeedTableFile(api.ReverseSeedDir, i), Content: t, Mode: 0o600})
	}
	if err := root.ReplayJournal(ctx); err != nil {
		return nil, err
	}
	cur, err := root.ReadFile(ctx, api.DefaultAgentConfig)
	if errors.Is(err, fs.ErrNotExist) {
		return files, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the source's agent configuration: %w", err)
	}
	var conf api.AgentConfig
	if yaml.Unmarshal(cur, &conf) == nil && conf.SourceServerID != "" {
		files = append(files, conversion.File{Path: OriginAgentConfig, Content: cur, Mode: 0o600})
	}
	return files, nil
}

// runHook runs the operator's conversion hook with the recovery in its environment.
func runHook(ctx context.Context, s ConvertSpec) error {
	var disks []string
	for _, d := range s.Disks {
		disks = append(disks, d.Path)
	}
	cmd := exec.CommandContext(ctx, s.Hook)
	cmd.Env = append(os.Environ(),
		"LIFEBOAT_RECOVERY_INSTANCE_ID="+s.Info.RecoveryInstanceID,
		"LIFEBOAT_SOURCE_SERVER_ID="+s.Info.SourceServerID,
		"LIFEBOAT_RECOVERY_SNAPSHOT_ID="+s.Info.RecoverySnapshotID,
		"LIFEBOAT_JOB_ID="+s.Info.JobID,
		fmt.Sprintf("LIFEBOAT_DRILL=%t", s.Info.IsDrill),
		"LIFEBOAT_PROVIDER="+s.Provider,
		"LIFEBOAT_DISKS="+strings.Join(disks, ":"),
		"LIFEBOAT_HOSTNAME="+s.Hostname,
		"LIFEBOAT_BOOT_MODE="+s.Settings.BootMode)
	if s.Network != nil {
		cmd.Env = append(cmd.Env, "LIFEBOAT_ADDRESS="+s.Network.Address, "LIFEBOAT_GATEWAY="+s.Network.Gateway,
			"LIFEBOAT_DNS="+strings.Join(s.Network.DNS, " "))
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return fmt.Errorf("conversion hook %s failed: %w: %s", s.Hook, err, msg)
	}
	return nil
}
