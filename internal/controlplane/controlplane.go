// Package controlplane is `lifeboat server`: the HTTP API over the state database, with
// its own CA, authentication (API tokens, install tokens, client certificates),
// authorization from one route table, the audit log, the event stream, the assignment
// of source servers to replicators, and the web console (internal/console) mounted
// under /console/.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/metrics"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/secfile"
)

// Config configures a control plane.
type Config struct {
	// DataDir holds the CA and server certificate (DataDir/pki) and, unless DBURL says
	// otherwise, the SQLite database (DataDir/lifeboat.db). Required.
	DataDir string
	// DBURL is a postgres:// URL, or the path of an SQLite file; empty: DataDir/lifeboat.db.
	DBURL string
	// Listen is the TCP address of the API; empty: 127.0.0.1:8443.
	Listen string
	// PublicURL is where agents, recovered servers and failback clients reach the API
	// (https://host:port), when that is not the listen address: a NAT, a proxy, a
	// recovery site that reaches this host by another address. Empty: from Listen.
	PublicURL string
	// Hosts are extra DNS names and IP addresses the server certificate names, beside
	// 127.0.0.1, ::1, localhost and the host of Listen.
	Hosts []string
	// TLSCertFile and TLSKeyFile are the operator's certificate (PEM chain, leaf first),
	// served to browsers and other clients instead of the one from the control plane's
	// CA. Lifeboat's own clients ask for the CA-issued one by name (pki.ControlPlaneSNI)
	// and check it against the pin of the control plane's CA, whatever is set here.
	TLSCertFile, TLSKeyFile string
	// DefaultStoreURL is the staging store recorded in the system account's replication
	// template when the database is created; empty: file://DataDir/staging.
	DefaultStoreURL string
	// HeartbeatInterval is how often replicators beat (default 10s); a replicator that
	// has not beaten for ReplicatorTimeout (default 45s) is lost and its servers move.
	HeartbeatInterval time.Duration
	ReplicatorTimeout time.Duration
	// AgentTimeout: a replicating server whose agent has not called for this long is
	// DISCONNECTED with AGENT_NOT_SEEN (default 2 minutes).
	AgentTimeout time.Duration
	// CoordinatorLease is how long the coordinator lease holds without renewal (default
	// 20s): of the control planes sharing a database, the one holding it runs what must
	// run once (coordinator.go); another takes over at most this long after it died.
	CoordinatorLease time.Duration
	// Version is reported by the health endpoint.
	Version string
	// Logger receives the control plane's logs; nil: discard.
	Logger *slog.Logger
	// Now is the clock; nil: time.Now. Tests move it.
	Now func() time.Time
	// StoreKeyFile is the master key file: it wraps every account's key, and every
	// staging store's secret (README "Keys and staging stores"). Created when the
	// database is new; empty: DataDir/staging.key.
	StoreKeyFile string
	// Recovery configures drills and recoveries (jobs.go).
	Recovery RecoveryConfig
	// Limits sets the API's timeouts and caps (limits.go); zero fields take defaults.
	Limits Limits
	// MetricsListen, when set, is a plain-HTTP address serving every account's
	// Prometheus metrics without authentication (metrics.go); GET /metrics on the API
	// serves the caller's account's with a viewer token either way.
	MetricsListen string
}

// DefaultListen is the API address of `lifeboat server` and `lifeboat up`.
const DefaultListen = "127.0.0.1:8443"

// ControlPlane is a running control plane.
type ControlPlane struct {
	cfg      Config
	log      *slog.Logger
	db       *db.DB
	ca       *pki.Authorities
	tlsCert  tls.Certificate  // from the control plane's CA, with its identity
	public   *tls.Certificate // the operator's (--tls-cert), for everyone else
	pin      string           // pin of the control plane's CA, put in install tokens
	system   string           // id of the system account
	routes   []*route
	handler  http.Handler
	events   *broker
	guard    *guard // what clients hold at once (limits.go)
	listener net.Listener
	server   *http.Server
	stopping chan struct{} // closed when shutdown begins: ends event streams

	coordinating atomic.Bool // it holds the coordinator lease (coordinator.go)
	relay        groupRelay  // group-point reports relayed to the coordinator (grouprelay.go)

	watchMu  sync.Mutex               // guards watchers and repWatch
	watchers map[string]chan struct{} // source server id → closed when its config changes
	repWatch chan struct{}            // closed when any server's config or assignment changes
	stopOnce sync.Once
	rec      *recoveryState // jobs, launch providers, staging stores (jobs.go)
	keys     *keyring       // the master key; account keys and stores (storekeys.go)
	groups   *groupCoordinator
	plans    *planRuns // plan runs and scheduled drills (planrun.go)

	metricsReg *prometheus.Registry // every account's series (metrics.go)
	metricsSrv *metrics.Server      // the metrics listener, when configured
}

// Open opens (creating on first start) the data directory, database, CA and server
// certificate, and builds the API. It does not listen yet: call Listen, then Serve.
func Open(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("the control plane needs a data directory (--data)")
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cfg.DataDir = abs
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create the data directory: %w", err)
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.PublicURL != "" {
		u, err := url.Parse(cfg.PublicURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" || u.RawQuery != "" {
			return nil, fmt.Errorf("the public URL %q must be https://host:port", cfg.PublicURL)
		}
	}
	if cfg.DBURL == "" {
		cfg.DBURL = filepath.Join(cfg.DataDir, "lifeboat.db")
	}
	if cfg.DefaultStoreURL == "" {
		cfg.DefaultStoreURL = (&url.URL{Scheme: "file", Path: filepath.Join(cfg.DataDir, "staging")}).String()
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.ReplicatorTimeout <= 0 {
		cfg.ReplicatorTimeout = 45 * time.Second
	}
	if cfg.AgentTimeout <= 0 {
		cfg.AgentTimeout = 2 * time.Minute
	}
	if cfg.CoordinatorLease <= 0 {
		cfg.CoordinatorLease = 20 * time.Second
	}
	if cfg.Now == nil {
		// The database keeps milliseconds; so does everything the API says.
		cfg.Now = func() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	cfg.Limits = cfg.Limits.withDefaults()
	cp := &ControlPlane{cfg: cfg, log: cfg.Logger, events: newBroker(cfg.Limits.MaxEventStreamsPerAccount), guard: newGuard(cfg.Limits),
		stopping: make(chan struct{})}
	cp.groups = newGroupCoordinator(cp)
	cp.relay.waiting = map[string]chan relayMsg{}
	cp.plans = newPlanRuns(cp)

	pkiDir := filepath.Join(cfg.DataDir, "pki")
	if cp.ca, err = pki.LoadOrCreateAuthorities(pkiDir); err != nil {
		return nil, err
	}
	if cp.ca.Legacy() {
		cp.log.Warn("this data directory has the single CA of an older Lifeboat: agents and replicators registered before must register again (agent install --replace, replicator --replace)",
			"ca", filepath.Join(pkiDir, pki.CACertFile))
	}
	if err := cp.loadServerCertificate(pkiDir); err != nil {
		return nil, err
	}
	// Older versions, copies and restores may have left these readable by other users.
	keys, _ := filepath.Glob(filepath.Join(pkiDir, "*.key"))
	if err := secfile.Tighten(cp.log, append([]string{cfg.DataDir, pkiDir}, keys...)...); err != nil {
		return nil, err
	}
	if cp.db, err = db.Open(ctx, cfg.DBURL, db.WithLogger(cp.log)); err != nil {
		return nil, err
	}
	fresh, err := cp.bootstrap(ctx)
	if err != nil {
		cp.db.Close()
		return nil, err
	}
	if err := cp.openKeys(ctx, fresh); err != nil {
		cp.db.Close()
		return nil, err
	}
	if err := cp.openRecovery(); err != nil {
		cp.db.Close()
		return nil, err
	}
	if err := secfile.Tighten(cp.log, cp.cfg.StoreKeyFile); err != nil {
		cp.Close()
		return nil, err
	}
	cp.routes = cp.routeTable()
	if cp.handler, err = cp.buildHandler(); err != nil {
		cp.Close()
		return nil, err
	}
	cp.metricsReg = cp.metricsRegistry()
	return cp, nil
}

func (cp *ControlPlane) loadServerCertificate(pkiDir string) error {
	if (cp.cfg.TLSCertFile == "") != (cp.cfg.TLSKeyFile == "") {
		return errors.New("give both --tls-cert and --tls-key, or neither")
	}
	if cp.cfg.TLSCertFile != "" {
		pub, err := tls.LoadX509KeyPair(cp.cfg.TLSCertFile, cp.cfg.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("load the TLS certificate %s and key %s: %w", cp.cfg.TLSCertFile, cp.cfg.TLSKeyFile, err)
		}
		cp.public = &pub
	}
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	if h, _, err := net.SplitHostPort(cp.cfg.Listen); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
		hosts = append(hosts, h)
	}
	if u, err := url.Parse(cp.cfg.PublicURL); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	hosts = append(hosts, cp.cfg.Hosts...)
	var err error
	if cp.tlsCert, err = cp.ca.ControlPlane.LoadOrIssueServerCertificate(pkiDir, hosts, cp.cfg.Now()); err != nil {
		return err
	}
	cp.pin = pki.Pin(cp.ca.ControlPlane.Certificate())
	return nil
}

// bootstrap creates the system account with its default site on first start, and says
// whether it did (the database is new).
func (cp *ControlPlane) bootstrap(ctx context.Context) (fresh bool, err error) {
	err = cp.db.Update(ctx, func(tx *db.Tx) error {
		a, err := tx.SystemAccount()
		if err == nil {
			cp.system = a.ID
			return nil
		}
		if !errors.Is(err, db.ErrNotFound) {
			return fmt.Errorf("read the system account: %w", err)
		}
		now := cp.cfg.Now()
		tmpl := api.DefaultReplicationSettings(cp.cfg.DefaultStoreURL)
		if err := tmpl.Validate(); err != nil {
			return fmt.Errorf("the default staging store: %s", err)
		}
		acct := db.Account{Account: api.Account{ID: api.NewID(api.PrefixAccount), Name: "default", System: true,
			QuotaSourceServers: api.DefaultQuotaSourceServers, CreatedAt: now}, Template: tmpl}
		if err := tx.CreateAccount(acct); err != nil {
			return fmt.Errorf("create the system account: %w", err)
		}
		if err := tx.CreateSite(acct.ID, api.Site{ID: api.DefaultSite, Description: "created at first start", CreatedAt: now}); err != nil {
			return err
		}
		if _, err := tx.AddAudit(acct.ID, api.AuditEntry{Time: now, ActorKind: "system", ActorID: "bootstrap",
			Action: "account.create", TargetKind: "account", TargetID: acct.ID}); err != nil {
			return err
		}
		cp.system = acct.ID
		fresh = true
		return nil
	})
	return fresh, err
}

// TLSConfig is the server's TLS configuration: TLS 1.3 only; client certificates are
// optional (API tokens work without one) but verified against the agents' and
// replicators' CAs when sent. Lifeboat's clients (by pki.ControlPlaneSNI), and everyone
// when the operator gave no certificate of their own, get the certificate of the
// control plane's CA.
func (cp *ControlPlane) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if cp.public == nil || hello.ServerName == pki.ControlPlaneSNI {
				return &cp.tlsCert, nil
			}
			return cp.public, nil
		},
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  cp.ca.ClientPool(),
	}
}

// Listen binds the API address (so the URL is known, even with port 0).
func (cp *ControlPlane) Listen() error {
	l, err := net.Listen("tcp", cp.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another lifeboat running? choose another address with --listen)", cp.cfg.Listen, err)
	}
	cp.listener = l
	if err := cp.listenMetrics(); err != nil {
		l.Close()
		cp.listener = nil
		return err
	}
	return nil
}

// Serve serves the API until ctx is cancelled, then shuts down gracefully (requests in
// flight get 10 seconds) and returns. Background work (replicator assignment) runs
// while it serves.
func (cp *ControlPlane) Serve(ctx context.Context) error {
	if cp.listener == nil {
		if err := cp.Listen(); err != nil {
			return err
		}
	}
	lim := cp.cfg.Limits
	cp.server = &http.Server{
		Handler:           cp.handler,
		TLSConfig:         cp.TLSConfig(),
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,  // the request, body included (net/http lifts it once the body is read)
		WriteTimeout:      lim.WriteTimeout, // long-polls and streams extend it per write (call.extendWrite)
		IdleTimeout:       lim.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(cp.log.Handler(), slog.LevelDebug),
	}
	bgCtx, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { cp.coordinate(bgCtx) })
	wg.Go(func() { cp.listenWakes(bgCtx) })
	wg.Go(func() { cp.listenRelay(bgCtx) })
	wg.Go(func() { cp.rec.runner.Run(bgCtx) })
	if cp.metricsSrv != nil {
		wg.Go(func() {
			if err := cp.metricsSrv.Serve(bgCtx); err != nil {
				cp.log.Error("the metrics listener stopped", "err", err)
			}
		})
	}

	errc := make(chan error, 1)
	go func() { errc <- cp.server.Serve(tls.NewListener(capListener{cp.listener, cp}, cp.server.TLSConfig)) }()
	cp.log.Info("control plane serving", "url", cp.URL(), "database", cp.db.Kind())
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		cp.stopOnce.Do(func() { close(cp.stopping) })
		shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = cp.server.Shutdown(shutCtx)
		cancel()
		<-errc
	}
	stopBG()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	cp.log.Info("control plane stopped", "err", err)
	return err
}

// Close closes the database. Call it after Serve returned.
func (cp *ControlPlane) Close() error {
	cp.stopOnce.Do(func() { close(cp.stopping) })
	if cp.listener != nil {
		cp.listener.Close()
	}
	if cp.metricsSrv != nil {
		cp.metricsSrv.Close()
	}
	cp.rec.stores.Close()
	return cp.db.Close()
}

// URL is the API's base URL, https://host:port, as agents, recovered servers and
// failback clients reach it (Config.PublicURL, else LocalURL).
func (cp *ControlPlane) URL() string {
	if cp.cfg.PublicURL != "" {
		return cp.cfg.PublicURL
	}
	return cp.LocalURL()
}

// LocalURL is the API's URL on this host (from the listen address), for this process's
// own calls.
func (cp *ControlPlane) LocalURL() string {
	addr := cp.cfg.Listen
	if cp.listener != nil {
		addr = cp.listener.Addr().String()
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "https://" + addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "https://" + net.JoinHostPort(host, port)
}

// Handler is the API and console as an http.Handler (TLS is the server's business).
func (cp *ControlPlane) Handler() http.Handler { return cp.handler }

// CACertPEM returns the control plane's CA certificate: what clients trust the API with.
func (cp *ControlPlane) CACertPEM() []byte { return cp.ca.ControlPlane.CertPEM() }

// CAPool returns a pool with the control plane's CA certificate.
func (cp *ControlPlane) CAPool() *x509.CertPool { return cp.ca.ControlPlane.Pool() }

// Pin is the pin install tokens carry: of the control plane's CA.
func (cp *ControlPlane) Pin() string { return cp.pin }

// SystemAccountID is the id of the system account, created at first start.
func (cp *ControlPlane) SystemAccountID() string { return cp.system }

// DataDir is the absolute data directory.
func (cp *ControlPlane) DataDir() string { return cp.cfg.DataDir }

// DefaultStoreURL is the staging store URL of the system account's template at creation.
func (cp *ControlPlane) DefaultStoreURL() string { return cp.cfg.DefaultStoreURL }

// DB gives in-process callers (lifeboat up, benchmarks) the database.
func (cp *ControlPlane) DB() *db.DB { return cp.db }

// CreateToken creates a token in an account on behalf of the process itself (actor
// "system"), as lifeboat up does for the admin token and the first install token.
func (cp *ControlPlane) CreateToken(ctx context.Context, accountID string, req api.CreateTokenRequest) (api.CreateTokenResponse, error) {
	c := &call{cp: cp, ctx: ctx, p: principal{Kind: "system", ID: "lifeboat", AccountID: accountID, Role: api.RoleAdmin}}
	return c.createToken(req)
}

func (cp *ControlPlane) liveSince() time.Time { return cp.cfg.Now().Add(-cp.cfg.ReplicatorTimeout) }
