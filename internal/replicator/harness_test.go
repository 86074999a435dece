package replicator_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/replicator"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// fakeControlPlane assigns servers to the replicator under test and records nothing.
type fakeControlPlane struct {
	mu       sync.Mutex
	assigned []api.AssignedSourceServer
	changed  chan struct{}   // closed (and replaced) when assigned changes
	key      store.MasterKey // the account's key, which opens the test's store
}

func (f *fakeControlPlane) StagingStoreKey(_ context.Context, _ string, req api.StagingStoreKeyRequest) (api.StagingStoreKeyResponse, error) {
	return api.StagingStoreKeyResponse{StagingStoreURL: req.StagingStoreURL, Key: f.key[:]}, nil
}

func (f *fakeControlPlane) Heartbeat(context.Context, string, api.HeartbeatRequest) (api.HeartbeatResponse, error) {
	return api.HeartbeatResponse{}, nil
}

func (f *fakeControlPlane) list() (api.AssignedSourceServerList, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.changed == nil {
		f.changed = make(chan struct{})
	}
	return api.AssignedSourceServerList{Items: append([]api.AssignedSourceServer(nil), f.assigned...)}, f.changed
}

// assign adds a server to the list and wakes the replicator's wait, as the control
// plane does.
func (f *fakeControlPlane) assign(a api.AssignedSourceServer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.assigned = append(f.assigned, a)
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
}

func (f *fakeControlPlane) AssignedSourceServersWait(ctx context.Context, _, known string, wait time.Duration) (api.AssignedSourceServerList, error) {
	l, changed := f.list()
	if known == "" || l.Fingerprint() != known {
		return l, nil
	}
	select {
	case <-changed:
	case <-time.After(wait):
	case <-ctx.Done():
		return l, ctx.Err()
	}
	l, _ = f.list()
	return l, nil
}

func (f *fakeControlPlane) AssignedSourceServer(_ context.Context, _, serverID string) (api.AssignedSourceServer, bool, error) {
	l, _ := f.list()
	for _, a := range l.Items {
		if a.SourceServer.ID == serverID {
			return a, true, nil
		}
	}
	return api.AssignedSourceServer{}, false, nil
}

func (f *fakeControlPlane) CreateRecoverySnapshot(_ context.Context, _ string, req api.CreateRecoverySnapshotRequest) (api.RecoverySnapshot, error) {
	return api.RecoverySnapshot{ID: req.ID}, nil
}

func (f *fakeControlPlane) DeleteRecoverySnapshots(context.Context, string, []string) (api.DeleteRecoverySnapshotsResponse, error) {
	return api.DeleteRecoverySnapshotsResponse{}, nil
}

func (f *fakeControlPlane) UpdateReplicationState(context.Context, string, api.ReplicationStateUpdate) (api.ReplicationState, error) {
	return api.ReplicationState{}, nil
}

// env is a replicator serving on 127.0.0.1 with a file staging store in a temporary
// directory, certificates from a throwaway CA, and one account.
type env struct {
	t       *testing.T
	ca      *pki.Authorities
	cp      *fakeControlPlane
	rep     *replicator.Replicator
	account string
	store   string // the staging store's directory
	// the replicator's id and certificate serial, which agents check
	repID, repSerial string
}

func serialOf(t testing.TB, cert tls.Certificate) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return pki.SerialHex(leaf)
}

// startReplicator starts a replicator whose configuration configure may change.
func startReplicator(t *testing.T, configure func(*replicator.Config)) *env {
	t.Helper()
	ca, err := pki.LoadOrCreateAuthorities(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ca: ca, cp: &fakeControlPlane{}, account: api.NewID(api.PrefixAccount), store: t.TempDir()}
	repID := api.NewID(api.PrefixReplicator)
	cert := e.issue(pki.Identity{Kind: pki.KindReplicator, Account: e.account, ID: repID}, []string{"127.0.0.1"})
	e.repID, e.repSerial = repID, serialOf(t, cert)
	if e.cp.key, err = store.NewMasterKey(); err != nil {
		t.Fatal(err)
	}
	// The control plane creates an account's store before it hands out its key.
	be, err := file.Open(e.store)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := store.Init(context.Background(), be, e.cp.key, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	repo.Close()
	be.Close()
	cfg := replicator.Config{ID: repID, ControlPlane: e.cp, TLS: wire.ServerTLSConfig(cert, ca.Agents.Pool(), e.account), Listen: "127.0.0.1:0",
		DefaultStoreURL: "file://" + e.store}
	if configure != nil {
		configure(&cfg)
	}
	if e.rep, err = replicator.New(cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.rep.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.rep.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("replicator: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the replicator did not stop within 30s")
		}
	})
	return e
}

// issue signs a certificate for a fresh key, as the control plane does from a CSR.
func (e *env) issue(id pki.Identity, serverHosts []string) tls.Certificate {
	e.t.Helper()
	return testutil.Certificate(e.t, e.ca, id, serverHosts, time.Now())
}

// agent is a source server assigned to the replicator, with its certificate.
type agent struct {
	id   string
	cert tls.Certificate
}

// newAgent registers a source server with the fake control plane, assigned to the
// replicator.
func (e *env) newAgent() agent {
	e.t.Helper()
	a := agent{id: api.NewID(api.PrefixSourceServer)}
	a.cert = e.issue(pki.Identity{Kind: pki.KindSourceServer, Account: e.account, ID: a.id}, nil)
	e.cp.assign(api.AssignedSourceServer{SourceServer: api.SourceServer{ID: a.id, AccountID: e.account},
		CertificateSerials: []string{serialOf(e.t, a.cert)}, Control: api.ReplicationControl{Desired: api.DesiredReplicating}})
	return a
}

// dial opens a TLS connection to the replicator as agent a, with the handshake done.
func (e *env) dial(a agent) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: wire.ClientTLSConfig(a.cert, e.ca.Replicators.Pool(), "127.0.0.1",
		wire.Assigned{Account: e.account, ID: e.repID, Serials: []string{e.repSerial}})}
	c, err := d.DialContext(ctx, "tcp", e.rep.Addr())
	if err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { c.Close() })
	return c.(*tls.Conn), nil
}

// answer reads the replicator's first frame on c.
func answer(c net.Conn) (wire.Msg, error) {
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	return wire.NewConn(c).ReadMsg()
}
