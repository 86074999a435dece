package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// TestImpostorsAreRefused: an agent presenting another server's id, a certificate that
// expired, one from another CA, the certificate of a server that was registered again
// since (at once, and its open session is cut), and a peer sending garbage frames are all
// refused and logged; the replicator goes on serving the real agent.
func TestImpostorsAreRefused(t *testing.T) {
	dev, mnt := dataVolume(t, 128<<20, 10, 256)
	c := newCluster(t)
	c.installAgent(dev)
	c.startAgent()
	c.waitState(2*time.Minute, api.StateContinuous)
	ctx := context.Background()
	caPEM, err := os.ReadFile(filepath.Join(c.dir, "cp", "pki", pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	repCAPEM, err := os.ReadFile(filepath.Join(c.dir, "cp", "pki", pki.ReplicatorCACertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(repCAPEM)

	// A second, genuine server B.
	key, _ := pki.NewKey()
	csr, _ := pki.NewCSR(key, "machine-b")
	keyPEM, _ := pki.EncodeKeyPEM(key)
	tok, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	inst, err := api.NewClient(api.ClientConfig{Server: c.url, Token: tok.Secret, CAPEM: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	b, err := inst.RegisterSourceServer(ctx, api.RegisterSourceServerRequest{CSR: string(csr), MachineID: "machine-b", Hostname: "b"})
	if err != nil {
		t.Fatal(err)
	}
	certB, err := tls.X509KeyPair([]byte(b.Certificate), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// Where B's replication config says to send, and which replicator to accept.
	var assigned wire.Assigned
	for deadline := time.Now().Add(time.Minute); ; {
		bc, err := api.NewClient(api.ClientConfig{Server: c.url, CAPEM: caPEM, Certificate: &certB})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := bc.ReplicationConfig(ctx, b.SourceServer.ID)
		if err == nil && cfg.Replicator != nil {
			assigned = wire.Assigned{Account: b.SourceServer.AccountID, ID: cfg.Replicator.ID, Serials: cfg.Replicator.CertificateSerials}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B has no replicator: %v", err)
		}
		time.Sleep(time.Second)
	}

	// open starts a session; hello starts one and ends it.
	open := func(cert tls.Certificate, server string) (*wire.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := wire.Dial(dctx, c.repAddr, wire.ClientTLSConfig(cert, pool, "", assigned))
		if err != nil {
			return nil, err
		}
		if err := conn.WriteMsg(&wire.Hello{Version: 1, SourceServerID: server, AgentVersion: "x", Tracker: "scan",
			Volumes: []wire.Volume{{Name: "loop9", SizeBytes: 1 << 20, BlockSize: 512}}}); err != nil {
			conn.Close()
			return nil, err
		}
		if err := conn.Flush(); err != nil {
			conn.Close()
			return nil, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := conn.ReadMsg()
		if err != nil {
			conn.Close()
			return nil, err
		}
		if e, ok := m.(*wire.Error); ok {
			conn.Close()
			return nil, e
		}
		return conn, nil
	}
	hello := func(cert tls.Certificate, server string) error {
		conn, err := open(cert, server)
		if err == nil {
			conn.Close()
		}
		return err
	}
	// B claims to be A.
	var we *wire.Error
	if err := hello(certB, c.agentID); !errors.As(err, &we) || we.Code != wire.CodeNotAuthorized {
		t.Fatalf("B's certificate with A's id: %v, want NOT_AUTHORIZED", err)
	}
	// B as itself is welcome (so the refusal above was about the id, not B).
	if err := hello(certB, b.SourceServer.ID); err != nil {
		t.Fatalf("B as itself: %v", err)
	}
	// A certificate for A that has expired, signed by the right CA.
	ca, err := pki.LoadOrCreateCA(filepath.Join(c.dir, "cp", "pki"), pki.RoleAgents)
	if err != nil {
		t.Fatal(err)
	}
	agentConf, err := api.LoadAgentConfig(c.agentCf)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(ca *pki.CA, at time.Time) tls.Certificate {
		k, _ := pki.NewKey()
		p, _ := pki.NewCSR(k, "a")
		req, err := pki.ParseCSR(p)
		if err != nil {
			t.Fatal(err)
		}
		_, certPEM, err := ca.SignCSR(req, pki.Identity{Kind: pki.KindSourceServer, Account: agentConf.AccountID, ID: c.agentID}, nil, at)
		if err != nil {
			t.Fatal(err)
		}
		kp, _ := pki.EncodeKeyPEM(k)
		cert, err := tls.X509KeyPair(certPEM, kp)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	if err := hello(sign(ca, time.Now().Add(-5*365*24*time.Hour)), c.agentID); err == nil {
		t.Fatal("an expired certificate was accepted")
	}
	other, err := pki.LoadOrCreateCA(t.TempDir(), pki.RoleAgents)
	if err != nil {
		t.Fatal(err)
	}
	if err := hello(sign(other, time.Now()), c.agentID); err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
	// B is registered again (an admin replaced it): its old certificate is refused by
	// the replicator at once, and the session it had open is cut.
	held, err := open(certB, b.SourceServer.ID)
	if err != nil {
		t.Fatalf("B's session: %v", err)
	}
	defer held.Close()
	key2, _ := pki.NewKey()
	csr2, _ := pki.NewCSR(key2, "machine-b")
	keyPEM2, _ := pki.EncodeKeyPEM(key2)
	b2, err := c.admin.RegisterSourceServer(ctx, api.RegisterSourceServerRequest{CSR: string(csr2), MachineID: "machine-b", Hostname: "b", Replace: true})
	if err != nil || b2.SourceServer.ID != b.SourceServer.ID {
		t.Fatalf("replace B: %v", err)
	}
	if err := hello(certB, b.SourceServer.ID); !errors.As(err, &we) || we.Code != wire.CodeNotAuthorized {
		t.Fatalf("B's replaced certificate, right after the replacement: %v, want NOT_AUTHORIZED", err)
	}
	_ = held.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		m, err := held.ReadMsg()
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the session of B's replaced certificate was still open 5 s after the replacement")
			}
			break
		}
		if e, ok := m.(*wire.Error); ok {
			if e.Code != wire.CodeNotAuthorized {
				t.Fatalf("B's replaced session ended with %v", e)
			}
			break
		}
	}
	certB2, err := tls.X509KeyPair([]byte(b2.Certificate), keyPEM2)
	if err != nil {
		t.Fatal(err)
	}
	if err := hello(certB2, b.SourceServer.ID); err != nil {
		t.Fatalf("B's new certificate: %v", err)
	}

	// Garbage frames from a genuine certificate.
	raw, err := tls.Dial("tcp", c.repAddr, &tls.Config{Certificates: []tls.Certificate{certB2}, RootCAs: pool,
		NextProtos: []string{wire.ALPN}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 1<<16)
	_, _ = rand.Read(junk)
	_, _ = raw.Write(junk)
	_ = raw.SetReadDeadline(time.Now().Add(15 * time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := raw.Read(buf); err != nil {
			if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
				t.Fatal("the replicator kept a connection that sent garbage open")
			}
			break
		}
	}
	raw.Close()

	// The replicator is unharmed: the real agent's next PIT is exact.
	want := treeHashes(t, mnt)
	c.exportAndCheck(c.snapshot(), volumeNameOf(dev), want)
	logs, _ := os.ReadFile(filepath.Join(c.dir, "replicator.log"))
	for _, s := range []string{"refused an agent session", "refused a connection"} {
		if !strings.Contains(string(logs), s) {
			t.Errorf("the replicator's log does not say %q", s)
		}
	}
}
