package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

func newAgentCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Short: "The replication agent of a source server"}
	cmd.AddCommand(newAgentInstallCmd(g), newAgentRunCmd(g), newAgentStatusCmd(g))
	return cmd
}

type installFlags struct {
	config, machineID, unitDir string
	preFreeze, postThaw        string
	volumes                    []string
	noService, replace         bool
}

func newAgentInstallCmd(g *globals) *cobra.Command {
	var f installFlags
	cmd := &cobra.Command{
		Use:   "install --server URL --token-file FILE",
		Short: "Register this machine as a source server and write the agent's configuration",
		Long: `Register this machine with the control plane using an install token: generate the agent's
key, send a certificate request, receive a certificate bound to a new source server id,
and write the configuration (with the key, mode 0600) and a systemd unit. The install
token carries a pin of the control plane's CA, which is checked before anything is sent.
Give the token with --token-file (- reads it from stdin) or env LIFEBOAT_TOKEN; on a
terminal, without either, it is asked for.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgentInstall(cmd, g, &f) },
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.volumes, "volume", nil, "block device or image file to replicate (repeatable; default: discovered by the agent)")
	fl.StringVar(&f.config, "config", api.DefaultAgentConfig, "where to write the agent's configuration")
	fl.BoolVar(&f.noService, "no-service", false, "do not write and enable a systemd unit")
	fl.StringVar(&f.preFreeze, "pre-freeze", "", "command run before each consistency point's freeze (e.g. flush a database)")
	fl.StringVar(&f.postThaw, "post-thaw", "", "command run after each consistency point's thaw")
	fl.BoolVar(&f.replace, "replace", false, "re-register a machine that is registered already, keeping its source server id (needs an admin API token or an install token made with --allow-replace)")
	fl.StringVar(&f.machineID, "machine-id", "", "machine id instead of /etc/machine-id (tests that simulate many agents)")
	fl.StringVar(&f.unitDir, "unit-dir", "/etc/systemd/system", "directory for the systemd unit")
	_ = fl.MarkHidden("machine-id")
	_ = fl.MarkHidden("unit-dir")
	return cmd
}

func runAgentInstall(cmd *cobra.Command, g *globals, f *installFlags) error {
	if g.server == "" {
		return usagef("agent install needs --server URL (the control plane)")
	}
	if g.token == "" {
		t, err := g.promptSecret("install token (lbi_…): ", "agent install needs an install token (lifeboat tokens create --kind install): "+
			"give it with --token-file FILE, --token-file - (one line on stdin) or env "+envToken)
		if err != nil {
			return err
		}
		g.token = t
	}
	tok, err := pki.ParseToken(g.token)
	if err != nil || !tok.Install {
		return usagef("the token must be an install token (lbi_…): create one with lifeboat tokens create --kind install")
	}
	// The control plane is trusted through the token's pin only: its certificate must
	// chain to its own CA and carry its identity (pki.VerifyPinned), so nothing else
	// signed by Lifeboat — a replicator, say — ever sees the token.
	if old, err := api.LoadAgentConfig(f.config); err == nil && !f.replace {
		return fmt.Errorf("this machine is already registered as source server %s (%s): pass --replace to register it again", old.SourceServerID, f.config)
	}
	machineID := f.machineID
	if machineID == "" {
		b, err := os.ReadFile("/etc/machine-id")
		if err != nil {
			return fmt.Errorf("read /etc/machine-id (the machine's identity): %w; create it with systemd-machine-id-setup", err)
		}
		machineID = strings.TrimSpace(string(b))
	}
	hostname, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("read the host name: %w", err)
	}
	req, keyPEM, err := agent.NewRegistration(machineID, hostname, version, f.volumes)
	if err != nil {
		return err
	}
	req.Replace = f.replace
	// The client trusts the control plane only through the token's pin.
	c, err := api.NewClient(api.ClientConfig{Server: g.server, Token: g.token, Pin: tok.Pin, UserAgent: "lifeboat-agent-install"})
	if err != nil {
		return &UsageError{Err: err}
	}
	if err := req.Validate(); err != nil {
		return err
	}
	resp, err := c.RegisterSourceServer(cmd.Context(), req)
	if err != nil {
		return err
	}
	cfg := &api.AgentConfig{Server: g.server, ServerPin: tok.Pin, AccountID: resp.SourceServer.AccountID,
		SourceServerID: resp.SourceServer.ID, MachineID: machineID, Volumes: f.volumes, Certificate: resp.Certificate,
		Key: string(keyPEM), CACertificates: resp.CACertificates, PreFreeze: f.preFreeze, PostThaw: f.postThaw}
	if err := cfg.Save(f.config); err != nil {
		return fmt.Errorf("registered as source server %s, but writing %s failed: %w (run install again with --replace)", resp.SourceServer.ID, f.config, err)
	}
	verb := "registered"
	if resp.Replaced {
		verb = "re-registered"
	}
	fmt.Fprintf(g.stderr, "%s this machine as source server %s; configuration written to %s\n", verb, resp.SourceServer.ID, f.config)
	if !f.noService {
		if err := installService(g, f); err != nil {
			return err
		}
	}
	if g.output == "json" {
		return g.show(resp.SourceServer, nil)
	}
	fmt.Fprintln(g.stdout, resp.SourceServer.ID)
	return nil
}

// installService writes the agent's systemd unit and, where systemd runs, enables it.
func installService(g *globals, f *installFlags) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program's path for the systemd unit: %w", err)
	}
	cfgPath, err := filepath.Abs(f.config)
	if err != nil {
		return err
	}
	unit, err := units.Render(units.Agent, units.Params{Binary: exe, AgentConfig: cfgPath})
	if err != nil {
		return err
	}
	path := filepath.Join(f.unitDir, units.Agent)
	if err := os.MkdirAll(f.unitDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", f.unitDir, err)
	}
	if err := atomicfile.WriteFile(path, unit, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "systemd unit written to %s\n", path)
	if _, err := os.Stat("/run/systemd/system"); err != nil || f.unitDir != "/etc/systemd/system" {
		fmt.Fprintf(g.stderr, "systemd is not running here: start the agent with %s agent run --config %s\n", exe, cfgPath)
		return nil
	}
	for _, args := range [][]string{{"daemon-reload"}, {"enable", "--now", units.Agent}} {
		if out, err := exec.Command("systemctl", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl %s failed: %v: %s (the agent is registered; start it by hand)", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	fmt.Fprintf(g.stderr, "the agent service %s is enabled and started\n", units.Agent)
	return nil
}
