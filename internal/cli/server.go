package cli

import (
	"context"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// serverFlags are the flags `lifeboat server` and `lifeboat up` share.
type serverFlags struct {
	data, db, listen, tlsCert, tlsKey string
	publicURL                         string
	hosts                             []string
	replicatorListen                  string // up only
	storeKey                          string // server only: the master key file (default DATA/staging.key)
	metricsListen                     string // the metrics listener (docs/metrics.md)
	coordinatorLease                  time.Duration
	replicatorTimeout                 time.Duration
	heartbeatInterval                 time.Duration
}

func (f *serverFlags) register(cmd *cobra.Command, withDB bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.data, "data", defaultDataDir(), "data directory: CA, certificates, database (and staging for up)")
	if withDB {
		fl.StringVar(&f.db, "db", "", "database: postgres://… for PostgreSQL, its password in PGPASSWORD or a passfile (~/.pgpass, PGPASSFILE); default an SQLite file in the data directory (env "+envDB+")")
		fl.DurationVar(&f.coordinatorLease, "coordinator-lease", 20*time.Second, "of the control planes sharing a PostgreSQL database, the one holding the coordinator lease runs replicator assignment, consistency groups, plan runs and scheduled drills; another takes over at most this long after it died (docs/architecture.md \"Two control planes\")")
		fl.StringVar(&f.storeKey, "store-key", "", "master key file: wraps every account's key and opens every staging store (default DATA/staging.key, created with a new database)")
	}
	fl.StringVar(&f.listen, "listen", controlplane.DefaultListen, "API address")
	fl.StringVar(&f.publicURL, "url", "", "the URL agents, recovered servers and failback clients reach the API at, when not the --listen address (https://host:port; add its host with --hostname)")
	fl.StringSliceVar(&f.hosts, "hostname", nil, "extra DNS name or IP address for the server certificate (repeatable)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate chain to serve instead of one from Lifeboat's CA")
	fl.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fl.DurationVar(&f.heartbeatInterval, "heartbeat-interval", 10*time.Second, "how often replicators report to the control plane (1s to 1m)")
	fl.DurationVar(&f.replicatorTimeout, "replicator-timeout", 45*time.Second, "a replicator silent this long is lost and its source servers move to another live replicator of its site (at least two heartbeat intervals)")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", "also serve every account's Prometheus metrics on this address, over plain HTTP without authentication (e.g. 127.0.0.1:9450; default off: GET /metrics on the API needs a viewer token)")
}

func (f *serverFlags) config(g *globals, storeURL string) controlplane.Config {
	// Recovered servers get this very binary as their agent, for reversed replication.
	self, _ := os.Executable()
	return controlplane.Config{DataDir: f.data, DBURL: f.db, Listen: f.listen, PublicURL: f.publicURL, Hosts: f.hosts,
		TLSCertFile: f.tlsCert, TLSKeyFile: f.tlsKey, DefaultStoreURL: storeURL, Version: version, Logger: g.logger,
		StoreKeyFile: f.storeKey, Recovery: controlplane.RecoveryConfig{AgentBinary: self}, MetricsListen: f.metricsListen,
		CoordinatorLease: f.coordinatorLease, ReplicatorTimeout: f.replicatorTimeout, HeartbeatInterval: f.heartbeatInterval}
}

func newServerCmd(g *globals) *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: API, console, state database",
		Long: `Run the control plane until SIGTERM or SIGINT, then shut down gracefully.
State lives in the data directory (SQLite by default) or in PostgreSQL (--db postgres://…
or env LIFEBOAT_DB; the password from PGPASSWORD or a passfile, as libpq takes it, not
in the URL); the CA is created there at first start, and an admin API token is written
to DATA/admin-token (mode 0600). Restarting on the same data directory resumes.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), g, &f, cmd.Flags().Changed("db"))
		},
	}
	f.register(cmd, true)
	return cmd
}

// runServer runs the control plane; dbGiven says whether --db was given (else env
// LIFEBOAT_DB names the database).
func runServer(ctx context.Context, g *globals, f *serverFlags, dbGiven bool) error {
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return usagef("give both --tls-cert and --tls-key, or neither")
	}
	if f.heartbeatInterval < time.Second || f.heartbeatInterval > time.Minute {
		return usagef("--heartbeat-interval %v is not between 1s and 1m", f.heartbeatInterval)
	}
	if f.replicatorTimeout < 2*f.heartbeatInterval {
		return usagef("--replicator-timeout %v is shorter than two heartbeat intervals (%v): a replicator would be lost for one late beat", f.replicatorTimeout, 2*f.heartbeatInterval)
	}
	switch {
	case !dbGiven:
		f.db = os.Getenv(envDB)
	case db.URLHasPassword(f.db):
		g.warnSecretInArgv("--db with a password", "env "+envDB+", PGPASSWORD or a passfile (~/.pgpass, PGPASSFILE)")
	}
	return serveControlPlane(ctx, g, f.config(g, ""), func(_ context.Context, u *upEnv) error {
		g.logger.Info("lifeboat server started", "url", u.CP.URL(), "data", u.DataDir, "database", u.CP.DB().Kind(),
			"admin_token", adminTokenFile(u.DataDir))
		return nil
	})
}
