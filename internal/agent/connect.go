package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// sameReplicator reports whether two configs name the same replicator with the same
// certificates: a replicator replaced, moved or re-keyed ends the session at once.
func sameReplicator(a, b *api.ReplicatorEndpoint) bool {
	return a != nil && b != nil && a.ID == b.ID && a.Address == b.Address && slices.Equal(a.CertificateSerials, b.CertificateSerials)
}

// replicatorCAs is the CA that signs replicators: the replication config's, else the
// one saved at install.
func (a *Agent) replicatorCAs(cfg api.ReplicationConfig) *x509.CertPool {
	if cfg.CACertificates != "" {
		pool := x509.NewCertPool()
		if pool.AppendCertsFromPEM([]byte(cfg.CACertificates)) {
			return pool
		}
	}
	return a.cfg.CAPool
}

// connect dials the replicator the config names (only that one: its id, account and
// certificate are checked) and says Hello.
func (a *Agent) connect(ctx context.Context, cfg api.ReplicationConfig) (*wire.Conn, *wire.Welcome, error) {
	rep := cfg.Replicator
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conn, err := wire.Dial(dctx, rep.Address, wire.ClientTLSConfig(a.cfg.Certificate, a.replicatorCAs(cfg), "",
		wire.Assigned{Account: a.cfg.AccountID, ID: rep.ID, Serials: rep.CertificateSerials}))
	cancel()
	if errors.Is(err, wire.ErrNotAssigned) {
		return nil, nil, &sessionError{state: a.st.current(), code: api.ErrUnstableNetwork,
			msg: fmt.Sprintf("refused to send to %s: %v; the agent asks the control plane again and retries", rep.Address, err)}
	}
	if err != nil {
		return nil, nil, &sessionError{state: a.st.current(), code: api.ErrUnstableNetwork,
			msg: fmt.Sprintf("cannot connect to replication server %s at %s: %v; the agent retries by itself", rep.Name, rep.Address, err)}
	}
	hello := &wire.Hello{Version: wire.Version, SourceServerID: a.cfg.ServerID, AgentVersion: a.cfg.Version,
		Tracker: a.src.Tracker(), TrackerGeneration: a.st.generation(), Volumes: a.src.Volumes()}
	welcome, _, err := wire.Open(conn, hello, 30*time.Second)
	var refused *wire.Error
	if errors.As(err, &refused) {
		err = fromWireError(refused, a.st.current())
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, welcome, nil
}

// session runs one replication session with the replicator the config names.
func (a *Agent) session(ctx context.Context, cfg api.ReplicationConfig) error {
	initiating := a.st.current() == api.StateInitiating
	if initiating {
		a.st.setInitiating(api.InitiationConnectAgent, api.StepInProgress, nil)
	}
	conn, welcome, err := a.connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if initiating {
		a.st.setInitiating(api.InitiationStartDataTransfer, api.StepInProgress, nil)
	}
	if int(welcome.BlockSize) != a.vols.blockSize {
		a.restartTracker(ctx, int(welcome.BlockSize))
	}
	if n := a.src.Lost(); n > a.lostSeen {
		a.lostSeen = n
		a.setRescan(fmt.Sprintf("the eBPF tracker lost %d events between sessions", n))
	}
	rescan := a.takeRescan() || !a.src.Continuous()
	tables, initial, err := a.loadTables(welcome)
	if err != nil {
		return err
	}
	rescan = rescan || initial
	for _, v := range welcome.Volumes {
		rescan = rescan || v.Rescan // the replicator asks for one
	}
	enc, err := wire.NewEncoder(cfg.Settings.Compression)
	if err != nil {
		return err
	}
	defer enc.Close()
	opt := sessionOptions{ServerID: a.cfg.ServerID, PreFreeze: a.cfg.PreFreeze, PostThaw: a.cfg.PostThaw,
		HookTimeout: a.cfg.HookTimeout, FreezeHold: a.cfg.FreezeHold, ScanPause: a.cfg.ScanPause,
		VerifyEvery: a.cfg.VerifyEvery, Verify: &a.verify, LostSeen: a.lostSeen,
		Config: a.latestConfig, VolumesChanged: a.volumesChanged, Groups: a.cfg.ControlPlane}
	s := newSession(a.src, conn, tables, welcome, enc, a.st, a.log, opt)
	a.st.connected(cfg.Replicator.Address, s.backlog)
	a.log.Info("connected to the replication server", "replicator", cfg.Replicator.Name, "address", cfg.Replicator.Address,
		"rescan", rescan, "initial", initial)
	err = s.run(ctx, cfg, rescan, initial)
	a.st.connected("", nil)
	a.lostSeen = s.opt.LostSeen
	if s.rescanWhy != "" {
		a.setRescan(s.rescanWhy)
	}
	a.saveTables()
	return err
}

// loadTables loads each volume's hash table (what the replica holds) once, and empties
// those of volumes the replica does not have: then the session is an initial sync.
func (a *Agent) loadTables(welcome *wire.Welcome) ([]*tracker.HashTable, bool, error) {
	bs := a.vols.blockSize
	initial := false
	tables := make([]*tracker.HashTable, len(a.vols.vols))
	for i, v := range a.vols.vols {
		if v.table == nil {
			t, err := tracker.LoadHashTable(a.tablePath(v), v.Name, v.SizeBytes, bs)
			if err != nil {
				a.log.Info("starting from an empty hash table", "volume", v.Name, "reason", err)
				if t, err = tracker.NewHashTable(v.Name, v.SizeBytes, bs); err != nil {
					return nil, false, err
				}
			}
			a.st.mu.Lock()
			v.table = t
			a.st.mu.Unlock()
		}
		if !welcome.Volumes[i].Exists {
			// The replica is gone (or never was): what the saved table says it holds
			// must not outlive this session, or a later one, after a crash, would
			// trust it against a replica that holds only part of the initial sync.
			v.table.Reset()
			if err := os.Remove(a.tablePath(v)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, false, fmt.Errorf("forget the hash table of %s, whose replica does not exist: %w", v.Name, err)
			}
			initial = true
		}
		tables[i] = v.table
	}
	return tables, initial, nil
}
