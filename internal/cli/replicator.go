package cli

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/replicator"
	"github.com/lifeboat-dr/lifeboat/internal/secfile"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

type replicatorFlags struct {
	data, store, storeKey, listen, site, name, address string
	metricsListen, indexDir                            string
	memoryLimitMiB                                     int
	replace                                            bool
}

func newReplicatorCmd(g *globals) *cobra.Command {
	var f replicatorFlags
	cmd := &cobra.Command{
		Use:   "replicator --server URL --store URL",
		Short: "Run a replication server: receive agents' blocks on TCP 1500 and store them",
		Long: `Run a replication server until SIGTERM or SIGINT. The first start registers it with the
control plane using a replicator install token (lifeboat tokens create --kind install --scope
replicator, given with --token-file FILE or env LIFEBOAT_TOKEN) and keeps its credentials
in the data directory. It writes to the staging store of each server's replication
settings (--store when they name none). It holds no key file: the control plane gives it
the key of its own account's stores (and their S3 credentials, when a system admin set
some), which it keeps in memory only.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.server == "" {
				return usagef("replicator needs --server URL (the control plane)")
			}
			if f.memoryLimitMiB < 0 {
				return usagef("--memory-limit is in MiB and cannot be negative")
			}
			return runReplicator(cmd.Context(), g, &f)
		},
	}
	fl := cmd.Flags()
	hostname, _ := os.Hostname()
	fl.StringVar(&f.data, "data", filepath.Join(defaultDataDir(), "replicator"), "data directory: credentials")
	fl.StringVar(&f.indexDir, "index-dir", "", `directory of the staging stores' chunk indexes, kept on disk so that memory does not grow with the store (default: DATA/chunk-index; "memory": keep them in RAM, read whole at start)`)
	fl.StringVar(&f.store, "store", "", "staging store URL for servers whose settings name none")
	fl.StringVar(&f.storeKey, "store-key", "", "ignored: the control plane gives the replicator its stores' keys")
	_ = fl.MarkHidden("store-key")
	fl.StringVar(&f.listen, "listen", ":1500", "address agents connect to")
	fl.StringVar(&f.site, "site", api.DefaultSite, "site this replicator serves (at registration)")
	fl.StringVar(&f.name, "name", hostname, "name of this replicator (at registration)")
	fl.IntVar(&f.memoryLimitMiB, "memory-limit", 224, "soft limit of the process's memory in MiB with no agent connected, kept by collecting garbage more often; it grows by 1 MiB for every two agent sessions (0: none; GOMEMLIMIT overrides it)")
	fl.StringVar(&f.address, "address", "", "host:port agents use to reach it (at registration; default: this host and the --listen port)")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", metricsFlagHelp)
	fl.BoolVar(&f.replace, "replace", false, "register again a replicator --name that is registered already, keeping its id and servers (needs an admin API token or an install token made with --allow-replace)")
	return cmd
}

// runReplicator registers (once) and runs a replicator.
func runReplicator(ctx context.Context, g *globals, f *replicatorFlags) error {
	if f.storeKey != "" {
		g.logger.Warn("--store-key is ignored: the control plane gives the replicator the key of each staging store of its account; keep the master key file with the control plane only",
			"file", f.storeKey)
	}
	address := f.address
	if address == "" {
		host, port, err := net.SplitHostPort(f.listen)
		if err != nil {
			return usagef("--listen %q is not host:port", f.listen)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host, _ = os.Hostname()
		}
		address = net.JoinHostPort(host, port)
	}
	credsPath := filepath.Join(f.data, "replicator.yaml")
	if err := secfile.Tighten(g.logger, f.data, credsPath); err != nil {
		return err
	}
	creds, err := replicator.LoadOrRegister(ctx, credsPath, replicator.RegisterOptions{
		Server: g.server, Token: g.token, Name: f.name, Site: f.site, Address: address, Replace: f.replace})
	if err != nil {
		return err
	}
	client, err := creds.Client()
	if err != nil {
		return err
	}
	defer client.Close()
	cert, err := creds.TLSCertificate()
	if err != nil {
		return err
	}
	pool, err := creds.CAPool()
	if err != nil {
		return err
	}
	indexDir := f.indexDir
	switch indexDir {
	case "":
		indexDir = filepath.Join(f.data, "chunk-index")
	case "memory":
		indexDir = ""
	}
	rep, err := replicator.New(replicator.Config{ID: creds.ID, ControlPlane: client, TLS: wire.ServerTLSConfig(cert, pool, creds.AccountID),
		Listen: f.listen, DefaultStoreURL: f.store, StoreOptions: store.Options{IndexDir: indexDir},
		OnSessions: memoryLimit(f.memoryLimitMiB), Logger: g.logger})
	if err != nil {
		return err
	}
	if err := rep.Listen(); err != nil {
		return err
	}
	stopMetrics, err := serveMetrics(ctx, g.logger, f.metricsListen, rep.Registry())
	if err != nil {
		return err
	}
	defer stopMetrics()
	g.logger.Info("replicator started", "id", creds.ID, "name", creds.Name, "agents", rep.Addr(), "control_plane", creds.Server)
	if err := rep.Run(ctx); err != nil {
		return fmt.Errorf("replicator: %w", err)
	}
	return nil
}

// sessionMemory is what the soft memory limit grows by for each open agent session
// (its connection's buffers, its heads' tables). With the limit fixed at 224 MiB, a
// replicator serving 500 agents spent ~40% of its CPU collecting garbage it could not
// free; given 1 GiB, its RSS peaked at 549 MiB (bench/replication/fleet.sh,
// docs/scaling.md).
const sessionMemory = 512 << 10

// memoryLimit sets the replicator's soft memory limit (--memory-limit MiB with no
// session) and returns what keeps it growing with the sessions; nil when there is no
// limit (0, or GOMEMLIMIT set).
func memoryLimit(baseMiB int) func(sessions int) {
	if baseMiB <= 0 || os.Getenv("GOMEMLIMIT") != "" {
		return nil
	}
	set := func(sessions int) { debug.SetMemoryLimit(int64(baseMiB)<<20 + int64(sessions)*sessionMemory) }
	set(0)
	return set
}
