package wire

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

const testAccount = "acct-0123456789abcdef0"

// The identities the tests' certificates carry.
const (
	agentServerID = "s-0123456789abcdef0"
	replicatorRID = "rep-0123456789abcdef0"
)

func agentIdentity() pki.Identity {
	return pki.Identity{Kind: pki.KindSourceServer, Account: testAccount, ID: agentServerID}
}

func replicatorIdentity() pki.Identity {
	return pki.Identity{Kind: pki.KindReplicator, Account: testAccount, ID: replicatorRID}
}

// testCA is a real set of CAs made by internal/pki in a temporary directory.
type testCA struct{ ca *pki.Authorities }

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	ca, err := pki.LoadOrCreateAuthorities(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca: ca}
}

// issue signs a certificate for a fresh key the way the control plane does from a CSR,
// by the CA of the identity's kind: serverHosts makes it a server certificate too; now
// sets its validity (a year from now).
func (c *testCA) issue(t testing.TB, id pki.Identity, serverHosts []string, now time.Time) tls.Certificate {
	return testutil.Certificate(t, c.ca, id, serverHosts, now)
}

// agents and replicators are the pools of the agents' and the replicators' CAs.
func (c *testCA) agents() *x509.CertPool      { return c.ca.Agents.Pool() }
func (c *testCA) replicators() *x509.CertPool { return c.ca.Replicators.Pool() }

// assigned is what an agent's replication config says of the replicator with cert.
func assigned(t testing.TB, cert tls.Certificate) Assigned {
	t.Helper()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.IdentityOf(leaf)
	if err != nil {
		t.Fatal(err)
	}
	return Assigned{Account: id.Account, ID: id.ID, Serials: []string{pki.SerialHex(leaf)}}
}

type accepted struct {
	conn *Conn
	err  error
}

// serve listens on 127.0.0.1 and runs Accept on every connection, reporting each result.
func serve(t testing.TB, cfg *tls.Config) (string, <-chan accepted) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan accepted, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			raw, err := l.Accept()
			if err != nil {
				return
			}
			c, err := Accept(context.Background(), raw, cfg)
			if c != nil {
				t.Cleanup(func() { c.Close() })
			}
			out <- accepted{c, err}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String(), out
}

func TestMutualTLSSessionAccepted(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	repCert := ca.issue(t, replicatorIdentity(), []string{"127.0.0.1"}, now)
	srvCfg := ServerTLSConfig(repCert, ca.agents(), testAccount)
	addr, acc := serve(t, srvCfg)

	c, err := Dial(t.Context(), addr, ClientTLSConfig(ca.issue(t, agentIdentity(), nil, now), ca.replicators(), "127.0.0.1", assigned(t, repCert)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := &Hello{Version: 1, SourceServerID: agentServerID, AgentVersion: "test", Tracker: "scan", TrackerGeneration: 1,
		Volumes: []Volume{{Name: "vdb", SizeBytes: 1 << 30, BlockSize: 512}}}
	if err := c.WriteMsg(hello); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	a := <-acc
	if a.err != nil {
		t.Fatalf("server refused a proper agent: %v", a.err)
	}
	s := a.conn
	cs := s.ConnectionState()
	if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != ALPN {
		t.Fatalf("TLS version %x, ALPN %q", cs.Version, cs.NegotiatedProtocol)
	}
	peer, err := PeerIdentity(cs)
	if err != nil || peer != agentIdentity() {
		t.Fatalf("server sees the agent as %+v, %v; want %+v", peer, err, agentIdentity())
	}
	m, err := s.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	got, ok := m.(*Hello)
	if !ok || got.SourceServerID != agentServerID {
		t.Fatalf("server read %#v", m)
	}
	if err := got.CheckPeer(peer); err != nil {
		t.Fatal(err)
	}
	other := *got
	other.SourceServerID = "s-someoneelse"
	if err := other.CheckPeer(peer); err == nil {
		t.Fatal("a Hello for another server passed CheckPeer")
	}
	if err := s.WriteMsg(&Welcome{Version: 1, BlockSize: 64 << 10, WindowBytes: 8 << 20, MaxBatchBytes: 1 << 20, Volumes: []Replica{{}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	m, err = c.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	if w, ok := m.(*Welcome); !ok || w.BlockSize != 64<<10 {
		t.Fatalf("agent read %#v", m)
	}
	rep, err := PeerIdentity(c.ConnectionState())
	if err != nil || rep != replicatorIdentity() {
		t.Fatalf("agent sees the replicator as %+v, %v", rep, err)
	}
}

// TestMutualTLSRefusals connects with credentials that must be refused. For refusals of
// the client's certificate the server's handshake fails with the reason and the client
// never gets a message; for a wrong server the client's Dial fails.
func TestMutualTLSRefusals(t *testing.T) {
	ca := newTestCA(t)
	otherCA := newTestCA(t)
	now := time.Now()
	agentCert := ca.issue(t, agentIdentity(), nil, now)
	replicatorCert := ca.issue(t, replicatorIdentity(), []string{"127.0.0.1"}, now)
	want := assigned(t, replicatorCert)
	otherID := pki.Identity{Kind: pki.KindReplicator, Account: testAccount, ID: "rep-0123456789abcdef1"}
	otherAccount := pki.Identity{Kind: pki.KindReplicator, Account: "acct-0123456789abcdef1", ID: replicatorRID}
	noCert := func(cfg *tls.Config) *tls.Config {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
		return cfg
	}
	noALPN := func(cfg *tls.Config) *tls.Config { cfg.NextProtos, cfg.VerifyConnection = nil, nil; return cfg }
	client := func(cert tls.Certificate) *tls.Config {
		return ClientTLSConfig(cert, ca.replicators(), "127.0.0.1", want)
	}
	// A replicator whose certificate is valid but not the one the agent was assigned.
	expecting := func(id pki.Identity) *tls.Config {
		return ClientTLSConfig(agentCert, ca.replicators(), "127.0.0.1", Assigned{Account: id.Account, ID: id.ID, Serials: want.Serials})
	}

	cases := []struct {
		name      string
		server    tls.Certificate
		client    *tls.Config
		serverErr string // the server's handshake fails with this
		clientErr string // the client's Dial fails with this
	}{
		{name: "no client certificate", server: replicatorCert, client: noCert(client(agentCert)), serverErr: "didn't provide a certificate"},
		{name: "certificate from another control plane", server: replicatorCert,
			client: client(otherCA.issue(t, agentIdentity(), nil, now)), serverErr: "unknown authority"},
		{name: "expired certificate", server: replicatorCert,
			client: client(ca.issue(t, agentIdentity(), nil, now.Add(-2*365*24*time.Hour))), serverErr: "expired"},
		{name: "replicator certificate as an agent", server: replicatorCert, client: client(replicatorCert), serverErr: "unknown authority"},
		{name: "agent of another account", server: replicatorCert,
			client:    client(ca.issue(t, pki.Identity{Kind: pki.KindSourceServer, Account: otherAccount.Account, ID: agentServerID}, nil, now)),
			serverErr: "serves account " + testAccount + " only"},
		{name: "client without the lifeboat ALPN", server: replicatorCert, client: noALPN(client(agentCert)), serverErr: "did not negotiate"},
		{name: "source-server certificate as the server", server: ca.issue(t, agentIdentity(), nil, now),
			client: client(agentCert), clientErr: "failed to verify certificate"},
		{name: "source-server certificate with serverAuth as the server", server: ca.issue(t, agentIdentity(), []string{"127.0.0.1"}, now),
			client: client(agentCert), clientErr: "unknown authority"},
		{name: "server from another control plane", server: otherCA.issue(t, replicatorIdentity(), []string{"127.0.0.1"}, now),
			client: client(agentCert), clientErr: "unknown authority"},
		{name: "another replicator than the assigned one", server: replicatorCert, client: expecting(otherID), clientErr: "not the assigned replicator"},
		{name: "a replicator of another account", server: ca.issue(t, otherAccount, []string{"127.0.0.1"}, now),
			client: client(agentCert), clientErr: "not the assigned replicator"},
		{name: "the assigned replicator's replaced certificate", server: ca.issue(t, replicatorIdentity(), []string{"127.0.0.1"}, now),
			client: client(agentCert), clientErr: "no longer lists"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr, acc := serve(t, ServerTLSConfig(tc.server, ca.agents(), testAccount))
			c, dialErr := Dial(t.Context(), addr, tc.client)
			if dialErr == nil {
				defer c.Close()
				// TLS 1.3: the client's handshake is over before the server checks its
				// certificate; the refusal arrives as an alert on the first read.
				_ = c.WriteMsg(&Ping{Nonce: 1})
				_ = c.Flush()
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a server that accepted sends nothing
				if m, err := c.ReadMsg(); err == nil {
					t.Fatalf("refused client read a %v", m.Type())
				}
			}
			a := <-acc
			t.Logf("client: %v; server: %v", dialErr, a.err)
			if tc.clientErr != "" {
				if dialErr == nil || !strings.Contains(dialErr.Error(), tc.clientErr) {
					t.Fatalf("client Dial: %v, want an error with %q", dialErr, tc.clientErr)
				}
				if a.err == nil {
					t.Fatal("server completed a handshake the client refused")
				}
				return
			}
			if a.err == nil {
				t.Fatal("server accepted the client")
			}
			if !strings.Contains(a.err.Error(), tc.serverErr) {
				t.Fatalf("server error %q does not say %q", a.err, tc.serverErr)
			}
		})
	}
}

func TestPeerIdentityNeedsAVerifiedCertificate(t *testing.T) {
	if _, err := PeerIdentity(tls.ConnectionState{}); err == nil {
		t.Fatal("no certificate gave an identity")
	}
	ca := newTestCA(t)
	cert := ca.issue(t, agentIdentity(), nil, time.Now())
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := PeerIdentity(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}); err == nil {
		t.Fatal("an unverified certificate gave an identity")
	}
	id, err := PeerIdentity(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf, ca.ca.Agents.Certificate()}}})
	if err != nil || id != agentIdentity() {
		t.Fatalf("%+v, %v", id, err)
	}
}

// TestDialBoundedByContext cancels the context once the TCP connection is accepted, to a
// server that never answers the handshake: Dial must return.
func TestDialBoundedByContext(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(held)
			return
		}
		held <- c
		cancel()
	}()
	ca := newTestCA(t)
	_, err = Dial(ctx, l.Addr().String(), ClientTLSConfig(ca.issue(t, agentIdentity(), nil, time.Now()), ca.replicators(), "127.0.0.1", Assigned{}))
	if c, ok := <-held; ok {
		c.Close()
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial to a server that never answers, context cancelled: %v", err)
	}
}
