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

// Files conversion writes into a recovered Linux server.
const (
	// RecoveryInfoFile says, inside the recovered server, what it was recovered from.
	RecoveryInfoFile = "/etc/lifeboat/recovery-instance.json"
	// AgentBinaryPath is where the agent's binary is installed for reversed replication.
	AgentBinaryPath = "/usr/local/sbin/lifeboat"
)

// RecoveryInfo is RecoveryInfoFile's content: reversed replication (lifeboat
// recovery-instances reverse-replication) reads it to register this machine as the
// origin's new source server.
type RecoveryInfo struct {
	RecoveryInstanceID string `json:"recoveryInstanceId"`
	SourceServerID     string `json:"sourceServerId"`
	RecoverySnapshotID string `json:"recoverySnapshotId"`
	JobID              string `json:"jobId"`
	IsDrill            bool   `json:"isDrill"`
	ControlPlane       string `json:"controlPlane"`    // URL
	ControlPlanePin    string `json:"controlPlanePin"` // pin of its CA
}

// ConvertSpec is one conversion.
type ConvertSpec struct {
	Disks    []launch.Disk // raw images or devices, boot disk first
	Network  *launch.GuestNetwork
	Hostname string // "" leaves the source's
	Info     RecoveryInfo
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
	var root *ext4image.Filesystem
	var image string
	for _, d := range s.Disks {
		fsys, err := ext4image.Root(ctx, d.Path)
		if err == nil {
			root, image = &fsys, d.Path
			break
		}
		if !errors.Is(err, ext4image.ErrNoFilesystem) {
			return res, fmt.Errorf("look for the root filesystem on %s: %w", d.Path, err)
		}
	}
	if root == nil {
		res.Notes = append(res.Notes, "no ext2/3/4 root filesystem on the recovered disks: hostname, network and agent left as they are (a conversion hook can handle other systems)")
	} else {
		res.Root = root.String()
		c := conversion.Conversion{Hostname: s.Hostname}
		if s.Network != nil {
			c.Network = &conversion.Network{DHCP: s.Network.DHCP, Address: s.Network.Address, Gateway: s.Network.Gateway, DNS: s.Network.DNS}
		}
		info, err := json.MarshalIndent(s.Info, "", "  ")
		if err != nil {
			return res, err
		}
		// An agent configuration without an identity: the agent will not run as the
		// source server; reversed replication registers this machine anew.
		agent, err := yaml.Marshal(api.AgentConfig{Server: s.Info.ControlPlane, ServerPin: s.Info.ControlPlanePin})
		if err != nil {
			return res, err
		}
		c.Files = append(c.Files,
			conversion.File{Path: RecoveryInfoFile, Content: append(info, '\n'), Mode: 0o644},
			conversion.File{Path: api.DefaultAgentConfig, Content: agent, Mode: 0o600})
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
