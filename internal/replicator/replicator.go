// Package replicator is `lifeboat replicator`, the replication server
// (docs/architecture.md): it accepts agents' sessions on TCP 1500 (TLS 1.3, mutual
// authentication, the wire protocol of docs/wire.md), writes their blocks into the
// staging store, acknowledges what is durable, seals a PIT at every marker and records
// it with the control plane, applies the PIT policy, and beats its heart to the control
// plane with its metrics.
//
// A session (session.go) is the connection: the handshake, the checks of who may do
// what, one session per server (claim), Pings, and sending. What the agent's frames do
// to the store is the session's ingest (ingest.go): it decodes Blocks (decode.go) within
// the replicator's batch memory (memory.go), writes them to the volume heads, flushes
// and acknowledges what is durable (commit.go), and seals a PIT at every Marker
// (seal.go). The ingest reads frames from a source and records PITs through a recorder,
// so it runs on a store without a connection or a control plane.
//
// An agent may write only its own server's volumes, only while that server is assigned
// to this replicator, and only with its current certificate; it can read nothing.
package replicator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// ControlPlane is what the replicator needs of the control plane's API (an
// *api.Client authenticated as the replicator).
type ControlPlane interface {
	Heartbeat(ctx context.Context, id string, req api.HeartbeatRequest) (api.HeartbeatResponse, error)
	AssignedSourceServersWait(ctx context.Context, id, known string, wait time.Duration) (api.AssignedSourceServerList, error)
	AssignedSourceServer(ctx context.Context, id, serverID string) (api.AssignedSourceServer, bool, error)
	CreateRecoverySnapshot(ctx context.Context, serverID string, req api.CreateRecoverySnapshotRequest) (api.RecoverySnapshot, error)
	DeleteRecoverySnapshots(ctx context.Context, serverID string, ids []string) (api.DeleteRecoverySnapshotsResponse, error)
	UpdateReplicationState(ctx context.Context, id string, u api.ReplicationStateUpdate) (api.ReplicationState, error)
	StagingStoreKey(ctx context.Context, id string, req api.StagingStoreKeyRequest) (api.StagingStoreKeyResponse, error)
}

// Config configures a replicator.
type Config struct {
	ID           string       // the replicator's id (rep-…)
	ControlPlane ControlPlane // authenticated as this replicator
	TLS          *tls.Config  // for agents: wire.ServerTLSConfig with its certificate and the CA
	Listen       string       // TCP address for agents (default 127.0.0.1:1500)
	// DefaultStoreURL is used for a server whose settings name no staging store. The
	// key of each store (its account's) comes from the control plane, which makes the
	// store when it does not exist; it is kept in memory only.
	DefaultStoreURL string
	// StoreOptions open every store; the replicator sets RefreshInBackground, and a
	// CommitInterval of 200 ms unless one is given.
	StoreOptions store.Options

	WindowBytes   uint64        // agents' flow-control window (default 64 MiB)
	MaxBatchBytes uint32        // largest Blocks frame accepted (default 4 MiB)
	FlushBytes    int64         // flush and acknowledge at least every this many bytes (default 32 MiB)
	FlushInterval time.Duration // and at least this often while data arrives (default 250 ms)
	// Refresh is how long to wait before asking again for the assigned servers after the
	// control plane failed to answer (default 5 s); while it answers, the replicator
	// waits on it for changes (a long poll) and learns of them at once.
	Refresh   time.Duration
	Retention time.Duration // how often the PIT policy is applied (default 1 min)
	// BatchMemory bounds the decoded batches held at once, across all sessions
	// (default 32 MiB): when it is used up, sessions stop reading until the store has
	// taken some, so the replicator's memory does not grow with the number of agents.
	BatchMemory int64
	// Caps on agents' connections (limits.go): TLS handshakes in flight, overall
	// (default 64) and per remote IP (default 16), and connections past their
	// handshake (default 1024; a replicator serves one account, so this is its cap).
	MaxHandshakes, MaxHandshakesPerIP, MaxSessions int

	// OnSessions, when set, is told the number of open agent sessions whenever it
	// changes (lifeboat replicator grows its soft memory limit with it).
	OnSessions func(sessions int)
	Logger     *slog.Logger
	Now        func() time.Time
}

func (c *Config) fill() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:1500"
	}
	if c.WindowBytes == 0 {
		c.WindowBytes = 64 << 20
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = 4 << 20
	}
	if c.BatchMemory <= 0 {
		c.BatchMemory = 32 << 20
	}
	if c.FlushBytes == 0 {
		c.FlushBytes = 32 << 20
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = 250 * time.Millisecond
	}
	if c.Refresh == 0 {
		c.Refresh = 5 * time.Second
	}
	if c.Retention == 0 {
		c.Retention = time.Minute
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = defaultMaxHandshakes
	}
	if c.MaxHandshakesPerIP <= 0 {
		c.MaxHandshakesPerIP = defaultMaxHandshakesPerIP
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = defaultMaxSessions
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Replicator is a running replication server.
type Replicator struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	assigned map[string]api.AssignedSourceServer // by source server id
	known    string                              // fingerprint of the list assigned holds
	repos    map[string]*store.Repo              // by staging store URL
	sessions map[string]*session                 // by source server id: at most one each
	listener net.Listener

	volumes atomic.Int64 // volumes of live sessions, for the heartbeat
	stats   ingestStats  // what the sessions ingested (metrics.go)
	reg     *prometheus.Registry

	batchMem *batchMemory // BatchMemory, taken by the batches being decoded or written
	caps     *caps        // what agents' connections hold at once
}

// New returns a replicator; call Listen and Run.
func New(cfg Config) (*Replicator, error) {
	cfg.fill()
	if cfg.ControlPlane == nil || cfg.TLS == nil || cfg.ID == "" {
		return nil, errors.New("a replicator needs its id, a control plane client and a TLS configuration")
	}
	log := cfg.Logger.With("replicator", cfg.ID)
	r := &Replicator{cfg: cfg, log: log, assigned: map[string]api.AssignedSourceServer{},
		repos: map[string]*store.Repo{}, sessions: map[string]*session{},
		batchMem: newBatchMemory(cfg.BatchMemory), caps: newCaps(cfg, log)}
	r.reg = r.newRegistry()
	return r, nil
}

// Listen binds the agents' address.
func (r *Replicator) Listen() error {
	l, err := net.Listen("tcp", r.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen for agents on %s: %w (choose another address with --listen)", r.cfg.Listen, err)
	}
	r.listener = l
	return nil
}

// Addr is the address agents connect to.
func (r *Replicator) Addr() string { return r.listener.Addr().String() }

// Run serves agents until ctx ends, then closes every session and store.
func (r *Replicator) Run(ctx context.Context) error {
	if r.listener == nil {
		if err := r.Listen(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Assignments first: sessions need them.
	if err := r.refresh(ctx); err != nil {
		r.log.Warn("reading assignments from the control plane failed; retrying", "err", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { r.watchAssignments(ctx) })
	wg.Go(func() { r.heartbeatLoop(ctx) })
	wg.Go(func() { r.loop(ctx, r.cfg.Retention, r.applyRetention) })
	wg.Go(func() {
		<-ctx.Done()
		r.listener.Close()
	})
	r.log.Info("replicator serving agents", "address", r.Addr())
	var conns sync.WaitGroup
	for {
		raw, err := r.listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.log.Warn("accept failed", "err", err)
			_ = sleep(ctx, 100*time.Millisecond) // a closed listener ends the loop at ctx's end
			continue
		}
		handshakeDone, ok := r.caps.handshake(raw)
		if !ok {
			raw.Close()
			continue
		}
		conns.Go(func() { r.serveConn(ctx, raw, handshakeDone) })
	}
	conns.Wait()
	wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	for url, repo := range r.repos {
		if err := repo.Close(); err != nil {
			r.log.Warn("closing a staging store failed", "store", url, "err", err)
		}
	}
	return nil
}

func (r *Replicator) loop(ctx context.Context, every time.Duration, fn func(context.Context) error) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("background task failed; it will run again", "err", err)
		}
	}
}

// watchAssignments keeps the list of assigned servers current until ctx ends: it waits
// on the control plane for a change of the list, so a replaced agent certificate, a
// stopped replication or a moved server ends its session at once; after a failure it
// asks again every Refresh.
func (r *Replicator) watchAssignments(ctx context.Context) {
	for ctx.Err() == nil {
		err := r.refreshWait(ctx, api.MaxConfigWait)
		if err == nil {
			continue
		}
		if ctx.Err() == nil {
			r.log.Warn("reading assigned source servers from the control plane failed; retrying", "err", err)
		}
		_ = sleep(ctx, r.cfg.Refresh) // the loop ends when ctx does
	}
}

// refresh reads the servers assigned to this replicator and their settings now.
func (r *Replicator) refresh(ctx context.Context) error { return r.refreshWait(ctx, 0) }

// refreshWait reads the assigned servers, waiting up to wait for the list to differ from
// the one the replicator has. Sessions of servers no longer assigned, or whose
// certificate was replaced, or whose replication was stopped, are ended (their agent asks
// the control plane again). When the control plane refuses the replicator itself
// (deleted, or registered again elsewhere), every session ends.
func (r *Replicator) refreshWait(ctx context.Context, wait time.Duration) error {
	r.mu.Lock()
	known := r.known
	r.mu.Unlock()
	if wait == 0 {
		known = ""
	}
	list, err := r.cfg.ControlPlane.AssignedSourceServersWait(ctx, r.cfg.ID, known, wait)
	var ae *api.Error
	if errors.As(err, &ae) && (ae.Status == 401 || ae.Status == 403 || ae.Status == 404) {
		list, err = api.AssignedSourceServerList{}, fmt.Errorf("the control plane refuses this replicator (%w): it serves nothing until registered again", err)
		r.setAssigned(list)
		return err
	}
	if err != nil {
		return fmt.Errorf("read assigned source servers: %w", err)
	}
	r.setAssigned(list)
	return nil
}

// setAssigned makes list the assigned servers and ends the sessions it no longer allows.
func (r *Replicator) setAssigned(list api.AssignedSourceServerList) {
	m := make(map[string]api.AssignedSourceServer, len(list.Items))
	for _, a := range list.Items {
		m[a.SourceServer.ID] = a
	}
	r.mu.Lock()
	r.assigned, r.known = m, list.Fingerprint()
	var drop []*session
	for id, s := range r.sessions {
		a, ok := m[id]
		if !ok || !servesSerial(a, s.serial) || a.Control.Desired == api.DesiredStopped {
			drop = append(drop, s)
		}
	}
	r.mu.Unlock()
	for _, s := range drop {
		s.stop(&wire.Error{Code: wire.CodeNotAuthorized, Message: "this server is no longer assigned to this replicator (or its certificate was replaced, or replication was stopped): ask the control plane where to replicate"})
	}
}

// lookup returns a server's assignment as the control plane says it now, so a session
// of a replaced certificate is refused at once; when the control plane cannot be
// reached, as the last list it sent says.
func (r *Replicator) lookup(ctx context.Context, server string) (api.AssignedSourceServer, bool, error) {
	a, ok, err := r.cfg.ControlPlane.AssignedSourceServer(ctx, r.cfg.ID, server)
	if err == nil {
		return a, ok, nil
	}
	var ae *api.Error
	if errors.As(err, &ae) || ctx.Err() != nil {
		return a, false, err // it answered, and refused: no fallback
	}
	r.log.Warn("the control plane cannot be reached to check a new session; using the last assignment list", "server", server, "err", err)
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok = r.assigned[server]
	return a, ok, nil
}

func servesSerial(a api.AssignedSourceServer, serial string) bool {
	for _, s := range a.CertificateSerials {
		if strings.EqualFold(s, serial) {
			return true
		}
	}
	return false
}

func (r *Replicator) heartbeatLoop(ctx context.Context) {
	interval := 10 * time.Second
	lastCPU := processCPU()
	lastAt := time.Now()
	var ingest ingestRate
	for {
		cpu := processCPU()
		now := time.Now()
		pct := 0.0
		if el := now.Sub(lastAt); el > 100*time.Millisecond && cpu >= lastCPU {
			pct = 100 * float64(cpu-lastCPU) / float64(el)
		}
		lastCPU, lastAt = cpu, now
		resp, err := r.cfg.ControlPlane.Heartbeat(ctx, r.cfg.ID, api.HeartbeatRequest{Version: "lifeboat", Metrics: api.ReplicatorMetrics{
			CPUPercent: pct, RSSBytes: rssBytes(), VolumesServed: int(r.volumes.Load()), Sessions: r.openSessions(),
			IngestBytesPerSecond: ingest.next(r.stats.bytes.Load(), now)}})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("heartbeat failed", "err", err)
		} else if resp.HeartbeatIntervalSeconds > 0 {
			interval = time.Duration(resp.HeartbeatIntervalSeconds) * time.Second
		}
		if sleep(ctx, interval) != nil {
			return
		}
	}
}

// repo returns the open staging store at url, opening it on first use with the key
// (and credentials) the control plane gives for it: that of the store's account, which
// must be this replicator's.
func (r *Replicator) repo(ctx context.Context, url string) (*store.Repo, error) {
	if url == "" {
		url = r.cfg.DefaultStoreURL
	}
	if url == "" {
		return nil, errors.New("no staging store is configured for this server: set stagingStoreUrl in its replication settings")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if repo := r.repos[url]; repo != nil {
		return repo, nil
	}
	sk, err := r.cfg.ControlPlane.StagingStoreKey(ctx, r.cfg.ID, api.StagingStoreKeyRequest{StagingStoreURL: url})
	if err != nil {
		return nil, fmt.Errorf("the control plane gave no key for staging store %s: %w", url, err)
	}
	key, err := sk.Key32()
	if err != nil {
		return nil, err
	}
	var access, secret string
	if c := sk.Credentials; c != nil {
		access, secret = c.AccessKey, c.SecretKey
	}
	be, err := backendurl.Open(ctx, sk.StagingStoreURL, backendurl.WithCredentials(access, secret), backendurl.WithLogger(r.log))
	if err != nil {
		return nil, err
	}
	opts := r.cfg.StoreOptions
	opts.Logger = r.log
	// Many servers' heads write into one repository: its view is kept fresh in the
	// background, and their flushes share packs (docs/scaling.md).
	opts.RefreshInBackground = true
	if opts.CommitInterval == 0 {
		opts.CommitInterval = 200 * time.Millisecond
	}
	repo, err := store.Open(ctx, be, key, opts)
	if err != nil {
		be.Close()
		return nil, err
	}
	r.log.Info("staging store opened", "store", sk.StagingStoreURL, "account", sk.AccountID, "key", sk.KeyFingerprint)
	r.repos[url] = repo
	return repo, nil
}

// applyRetention deletes, for every assigned server, the PITs its policy no longer
// keeps: from the store, then from the control plane's records.
func (r *Replicator) applyRetention(ctx context.Context) error {
	r.mu.Lock()
	servers := make([]api.AssignedSourceServer, 0, len(r.assigned))
	for _, a := range r.assigned {
		servers = append(servers, a)
	}
	r.mu.Unlock()
	var firstErr error
	for _, a := range servers {
		if err := r.retain(ctx, a); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func (r *Replicator) retain(ctx context.Context, a api.AssignedSourceServer) error {
	repo, err := r.repo(ctx, a.Settings.StagingStoreURL)
	if err != nil {
		return err
	}
	deleted, err := repo.ApplyRetention(ctx, a.SourceServer.ID, Policy(a.Settings.PITPolicy))
	if len(deleted) > 0 {
		ids := make([]string, len(deleted))
		for i, p := range deleted {
			ids[i] = p.ID
		}
		if _, cerr := r.cfg.ControlPlane.DeleteRecoverySnapshots(ctx, a.SourceServer.ID, ids); cerr != nil && err == nil {
			err = cerr
		}
		r.log.Info("retention removed PITs", "server", a.SourceServer.ID, "count", len(ids))
	}
	return err
}

// Policy converts a PIT policy of the replication settings to the store's.
func Policy(p api.PITPolicy) store.Policy {
	out := store.Policy{ConsistencyPoints: time.Duration(p.ConsistencyPointRetentionMinutes) * time.Minute}
	unit := map[string]time.Duration{api.UnitMinute: time.Minute, api.UnitHour: time.Hour, api.UnitDay: 24 * time.Hour}
	for _, rule := range p.Rules {
		u := unit[rule.Units]
		out.Rules = append(out.Rules, store.Rule{Interval: time.Duration(rule.Interval) * u, Keep: time.Duration(rule.RetentionDuration) * u})
	}
	return out
}

// sleep waits for d, or until ctx ends (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// processCPU is the CPU time the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssBytes is the process's resident set size.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.Sys)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
