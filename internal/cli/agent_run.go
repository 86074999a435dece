package cli

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/secfile"
)

// defaultAgentState is where the agent keeps its hash tables and status.
func defaultAgentState() string { return filepath.Join(defaultDataDir(), "agent") }

// agentRunFlags are the flags of agent run.
type agentRunFlags struct {
	config, state, recoveryInfo, seedDir       string
	metricsListen                              string
	reverseInterval                            time.Duration
	scan, normalRCU                            bool
	scanPause, verify, freezeHold, hookTimeout time.Duration
	ringBytes                                  int
}

func newAgentRunCmd(g *globals) *cobra.Command {
	var f agentRunFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the replication agent in the foreground",
		Long: `Replicate this server's volumes until SIGTERM or SIGINT: track changed blocks (eBPF where
the kernel allows, full scans otherwise), stream them to the replication server, take
filesystem-consistent consistency points, and report progress to the control plane.

On a recovery instance (a server recovered by Lifeboat, whose configuration has no
identity but a recovery record), it first waits for reversed replication to be started
(lifeboat recovery-instances reverse-replication), registers as the reversed source
server, then replicates the instance back to its origin's site.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd.Context(), g, f) },
	}
	cmd.Flags().StringVar(&f.config, "config", api.DefaultAgentConfig, "the agent's configuration (written by lifeboat agent install)")
	cmd.Flags().StringVar(&f.state, "state-dir", defaultAgentState(), "where the agent keeps what the replica holds and its status")
	cmd.Flags().StringVar(&f.recoveryInfo, "recovery-info", api.RecoveryInfoFile, "on a recovery instance: what recovery wrote of it, for reversed replication")
	cmd.Flags().StringVar(&f.seedDir, "reverse-seed-dir", api.ReverseSeedDir, "on a recovery instance: the hash tables of the PIT its disks were written from")
	cmd.Flags().DurationVar(&f.reverseInterval, "reverse-interval", 15*time.Second, "on a recovery instance: how often to ask whether reversed replication was started")
	cmd.Flags().BoolVar(&f.scan, "scan", false, "use the scan tracker even where eBPF could run")
	cmd.Flags().DurationVar(&f.scanPause, "scan-pause", 0, "pause after each batch a scan sends (tests)")
	_ = cmd.Flags().MarkHidden("scan-pause")
	cmd.Flags().BoolVar(&f.normalRCU, "freeze-normal-rcu", false, "do not switch the kernel to expedited RCU grace periods during each FIFREEZE (/sys/kernel/rcu_expedited, a few ms per point): freeze windows then last ~30 ms instead of ~2 ms")
	cmd.Flags().DurationVar(&f.hookTimeout, "hook-timeout", 30*time.Second, "how long a pre-freeze or post-thaw hook may run before the point is skipped")
	cmd.Flags().IntVar(&f.ringBytes, "ebpf-ring-bytes", 0, "size of the eBPF ring buffer (tests)")
	cmd.Flags().DurationVar(&f.freezeHold, "freeze-hold", 0, "hold each freeze this long (tests of the freeze watchdog)")
	_ = cmd.Flags().MarkHidden("ebpf-ring-bytes")
	_ = cmd.Flags().MarkHidden("freeze-hold")
	cmd.Flags().StringVar(&f.metricsListen, "metrics-listen", "", metricsFlagHelp+"; the configuration's metricsListen otherwise")
	cmd.Flags().DurationVar(&f.verify, "verify-every", time.Hour, "how often a background pass checks the eBPF tracker's marks against every block's hash (0 or less: never)")
	return cmd
}

// runAgent runs the agent of the configuration f names until ctx ends.
func runAgent(ctx context.Context, g *globals, f agentRunFlags) error {
	if f.verify <= 0 {
		f.verify = -1
	}
	if err := secfile.Tighten(g.logger, f.config); err != nil {
		return err
	}
	conf, err := api.LoadAgentConfig(f.config)
	if err != nil {
		if _, serr := os.Stat(f.recoveryInfo); serr != nil {
			return err
		}
		// A recovery instance: it replicates back once an operator says so.
		conf, err = agent.AwaitReversed(ctx, agent.ReverseOptions{Config: f.config, Info: f.recoveryInfo, SeedDir: f.seedDir,
			StateDir: f.state, Interval: f.reverseInterval, Version: version, Logger: g.logger})
		if err != nil {
			return err
		}
	}
	client, err := conf.Client()
	if err != nil {
		return err
	}
	defer client.Close()
	cert, err := conf.TLSCertificate()
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(conf.CACertificates)) {
		return fmt.Errorf("the agent configuration %s holds no CA certificate: register again with lifeboat agent install --replace", f.config)
	}
	a, err := agent.New(agent.Config{ServerID: conf.SourceServerID, AccountID: conf.AccountID, ControlPlane: client, Certificate: cert, CAPool: pool,
		Volumes: conf.Volumes, StateDir: f.state, ForceScan: f.scan, ScanPause: f.scanPause, Version: version, Logger: g.logger,
		PreFreeze: conf.PreFreeze, PostThaw: conf.PostThaw, VerifyEvery: f.verify,
		RingBytes: f.ringBytes, FreezeHold: f.freezeHold, HookTimeout: f.hookTimeout, NormalRCU: f.normalRCU})
	if err != nil {
		return err
	}
	defer a.Close()
	if f.metricsListen == "" {
		f.metricsListen = conf.MetricsListen
	}
	stopMetrics, err := serveMetrics(ctx, g.logger, f.metricsListen, a.Registry())
	if err != nil {
		return err
	}
	defer stopMetrics()
	g.logger.Info("agent started", "server", conf.SourceServerID, "control_plane", conf.Server)
	return a.Run(ctx)
}

func newAgentStatusCmd(g *globals) *cobra.Command {
	var state string
	var watch bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the agent on this machine is doing",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if watch {
				return runAgentStatusWatch(cmd.Context(), g, state, time.Second)
			}
			return runAgentStatus(g, state)
		},
	}
	cmd.Flags().StringVar(&state, "state-dir", defaultAgentState(), "the agent's state directory")
	cmd.Flags().BoolVar(&watch, "watch", false, "follow the initial sync or rescan with a progress bar until it ends, then show the status")
	return cmd
}

func runAgentStatus(g *globals, stateDir string) error {
	s, err := readAgentStatus(stateDir)
	if err != nil {
		return err
	}
	return g.show(s, func(w *tabwriter.Writer) { agentStatusTable(w, s) })
}

// agentStatusTable prints what the agent's status file says.
func agentStatusTable(w *tabwriter.Writer, s agent.Status) {
	row(w, "source server", s.ServerID)
	state := s.State
	if s.Percent != nil {
		state += fmt.Sprintf(" %.1f%%", *s.Percent)
	}
	row(w, "state", state)
	scanRow(w, s)
	if s.Error != nil {
		row(w, "error", s.Error.Code+": "+s.Error.Message)
	}
	tr := s.Tracker
	if s.TrackerReason != "" {
		tr += " (" + s.TrackerReason + ")"
	}
	row(w, "tracker", tr)
	if s.FreezeReason != "" {
		row(w, "consistency", s.FreezeReason)
	}
	row(w, "replicator", orDash(s.Replicator))
	for _, v := range s.Volumes {
		row(w, "volume", fmt.Sprintf("%s %s %s", v.Name, v.Path, bytesIEC(v.SizeBytes)))
	}
	row(w, "sent", fmt.Sprintf("%s in %d blocks", bytesIEC(s.SentBytes), s.SentBlocks))
	row(w, "rate", bytesIEC(s.Throughput)+"/s")
	row(w, "backlog", bytesIEC(s.BacklogBytes))
	if s.ETASeconds != nil {
		row(w, "ETA", (time.Duration(*s.ETASeconds) * time.Second).String())
	}
	if s.LagSeconds != nil {
		row(w, "lag", fmt.Sprintf("%.1f s", *s.LagSeconds))
	}
	if p := s.LastPoint; p != nil {
		row(w, "last PIT", fmt.Sprintf("%s %s %s", p.SnapshotID, p.Level, p.Time.Format(time.RFC3339)))
	}
	row(w, "updated", s.UpdatedAt.Format(time.RFC3339))
}
