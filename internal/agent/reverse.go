package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
)

// ReverseOptions are where a recovery instance's agent finds what recovery left for
// reversed replication (docs/failback.md).
type ReverseOptions struct {
	Config   string        // the agent configuration: without an identity, rewritten with it
	Info     string        // api.RecoveryInfoFile
	SeedDir  string        // api.ReverseSeedDir
	StateDir string        // the agent's state directory: the seed tables go there
	Interval time.Duration // between two asks while reversed replication is not started (default 15 s)
	Version  string
	Logger   *slog.Logger
}

// maxInfoBytes bounds the recovery record read from the disk.
const maxInfoBytes = 64 << 10

// ReadRecoveryInfo reads what recovery wrote into this server's disk, if it did.
func ReadRecoveryInfo(path string) (*api.RecoveryInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var info api.RecoveryInfo
	dec := json.NewDecoder(&limitedReader{f: f, n: maxInfoBytes})
	if err := dec.Decode(&info); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !api.ValidID(api.PrefixRecoveryInstance, info.RecoveryInstanceID) || info.ControlPlane == "" || info.ControlPlanePin == "" {
		return nil, fmt.Errorf("%s is incomplete: it names no recovery instance or control plane", path)
	}
	return &info, nil
}

type limitedReader struct {
	f *os.File
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("the file is larger than 64 KiB")
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}

// AwaitReversed registers this recovery instance as its reversed source server once an
// operator has started reversed replication (lifeboat recovery-instances
// reverse-replication), asking the control plane every Interval until then. It writes
// the configuration with the new identity and puts the seed hash tables (the PIT the
// disk was written from) in the state directory under this machine's volume names, so
// the first session sends only the blocks that changed since. It returns the new
// configuration.
func AwaitReversed(ctx context.Context, o ReverseOptions) (*api.AgentConfig, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Interval <= 0 {
		o.Interval = 15 * time.Second
	}
	info, err := ReadRecoveryInfo(o.Info)
	if err != nil {
		return nil, err
	}
	if info.IsDrill || info.ReverseKey == "" {
		return nil, fmt.Errorf("this is drill instance %s, or it was recovered without a reverse key: it cannot replicate back", info.RecoveryInstanceID)
	}
	conf, err := readBareConfig(o.Config)
	if err != nil {
		return nil, err
	}
	if len(conf.Volumes) == 0 {
		return nil, fmt.Errorf("%s names no volumes to replicate back", o.Config)
	}
	req, keyPEM, err := reverseRequest(info, conf.Volumes, o.Version)
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(api.ClientConfig{Server: info.ControlPlane, Pin: info.ControlPlanePin, UserAgent: "lifeboat-agent"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	resp, err := registerReversed(ctx, c, req, o)
	if err != nil {
		return nil, err
	}
	if err := importSeeds(o, conf.Volumes, o.Logger); err != nil {
		o.Logger.Warn("the seed hash tables could not be used: the first session compares every block with an empty table and sends them all", "err", err)
	}
	conf.Server, conf.ServerPin = info.ControlPlane, info.ControlPlanePin
	conf.AccountID, conf.SourceServerID, conf.MachineID = resp.SourceServer.AccountID, resp.SourceServer.ID, req.MachineID
	conf.Certificate, conf.Key, conf.CACertificates = resp.Certificate, string(keyPEM), resp.CACertificates
	if err := conf.Save(o.Config); err != nil {
		return nil, fmt.Errorf("registered as reversed source server %s, but writing %s failed: %w", resp.SourceServer.ID, o.Config, err)
	}
	o.Logger.Info("registered as the reversed source server of this recovery instance", "server", resp.SourceServer.ID,
		"recovery_instance", info.RecoveryInstanceID)
	return conf, nil
}

// registerReversed asks until reversed replication is started (or ctx ends).
func registerReversed(ctx context.Context, c *api.Client, req api.ReverseRegisterRequest, o ReverseOptions) (api.RegisterSourceServerResponse, error) {
	logged := false
	for {
		resp, err := c.RegisterReversed(ctx, req)
		if err == nil {
			return resp, nil
		}
		var ae *api.Error
		switch {
		case errors.As(err, &ae) && ae.Code == api.CodeReverseNotStarted:
			if !logged {
				o.Logger.Info("waiting for reversed replication to be started", "recovery_instance", req.RecoveryInstanceID,
					"command", "lifeboat recovery-instances reverse-replication "+req.RecoveryInstanceID)
				logged = true
			}
		case errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Status != 429:
			return api.RegisterSourceServerResponse{}, fmt.Errorf("the control plane refused reversed replication of %s: %w", req.RecoveryInstanceID, err)
		default:
			o.Logger.Warn("could not reach the control plane; asking again", "err", err)
		}
		sleep(ctx, o.Interval)
		if err := ctx.Err(); err != nil {
			return api.RegisterSourceServerResponse{}, err
		}
	}
}

// reverseRequest makes this machine's key and the registration that carries its CSR.
// The machine id is the recovered copy's (its source's): reported, not an identity.
func reverseRequest(info *api.RecoveryInfo, volumes []string, version string) (api.ReverseRegisterRequest, []byte, error) {
	hostname, _ := os.Hostname()
	if hostname == "" {
		hostname = info.RecoveryInstanceID
	}
	machineID := info.RecoveryInstanceID
	if b, err := os.ReadFile("/etc/machine-id"); err == nil && strings.TrimSpace(string(b)) != "" {
		machineID = strings.TrimSpace(string(b))
	}
	reg, keyPEM, err := NewRegistration(machineID, hostname, version, volumes)
	if err != nil {
		return api.ReverseRegisterRequest{}, nil, err
	}
	req := api.ReverseRegisterRequest{RegisterSourceServerRequest: reg, RecoveryInstanceID: info.RecoveryInstanceID, ReverseKey: info.ReverseKey}
	return req, keyPEM, req.Validate()
}

// NewRegistration makes this machine's key and the registration of it as a source
// server replicating the volumes at paths: the CSR, the machine's description and its
// volumes'. It returns the key as PEM, for the agent's configuration.
func NewRegistration(machineID, hostname, version string, paths []string) (api.RegisterSourceServerRequest, []byte, error) {
	var req api.RegisterSourceServerRequest
	for _, p := range paths {
		v, err := DescribeVolume(p)
		if err != nil {
			return req, nil, err
		}
		req.Volumes = append(req.Volumes, v)
	}
	key, err := pki.NewKey()
	if err != nil {
		return req, nil, err
	}
	csr, err := pki.NewCSR(key, hostname)
	if err != nil {
		return req, nil, err
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return req, nil, err
	}
	var mem int64
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		mem = int64(si.Totalram) * int64(si.Unit)
	}
	req.CSR, req.MachineID, req.Hostname, req.OS, req.Arch = string(csr), machineID, hostname, runtime.GOOS, runtime.GOARCH
	req.AgentVersion, req.CPUs, req.MemoryBytes = version, runtime.NumCPU(), mem
	return req, keyPEM, nil
}

// readBareConfig reads an agent configuration that may have no identity yet.
func readBareConfig(path string) (*api.AgentConfig, error) {
	conf, err := api.LoadAgentConfig(path)
	if err == nil {
		return conf, nil
	}
	return api.ReadAgentConfigFile(path)
}

// importSeeds puts the i-th seed table in the state directory as the hash table of the
// i-th volume, under the name the volume has here.
func importSeeds(o ReverseOptions, volumes []string, log *slog.Logger) error {
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return err
	}
	for i, p := range volumes {
		data, err := os.ReadFile(api.SeedTableFile(o.SeedDir, i))
		if err != nil {
			return err
		}
		t, err := tracker.DecodeHashTable(data)
		if err != nil {
			return fmt.Errorf("seed table %d: %w", i, err)
		}
		name := volumeName(p)
		if err := t.Rename(name); err != nil {
			return err
		}
		if err := t.Save(filepath.Join(o.StateDir, "hashes-"+name)); err != nil {
			return err
		}
		log.Info("seed hash table in place", "volume", name, "blocks", t.Blocks())
	}
	return nil
}
