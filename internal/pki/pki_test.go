package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

func TestCAPersistsAndKeyIsPrivate(t *testing.T) {
	dir := t.TempDir()
	ca1, err := pki.LoadOrCreateCA(dir, pki.RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := pki.LoadOrCreateCA(dir, pki.RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	if pki.Fingerprint(ca1.Certificate()) != pki.Fingerprint(ca2.Certificate()) {
		t.Fatal("reloading the CA gave another certificate")
	}
	if !ca1.Certificate().IsCA {
		t.Fatal("CA certificate is not a CA")
	}
	fi, err := os.Stat(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v, want 0600", fi.Mode().Perm())
	}
	// A key that does not match the certificate is refused.
	other := t.TempDir()
	if _, err := pki.LoadOrCreateCA(other, pki.RoleControlPlane); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(other, "ca.key"))
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadOrCreateCA(dir, pki.RoleControlPlane); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("mismatched key: got %v", err)
	}
}

func TestServerCertificateReissuedWhenHostsChange(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(dir, pki.RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c1, err := ca.LoadOrIssueServerCertificate(dir, []string{"127.0.0.1", "localhost"}, now)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ca.LoadOrIssueServerCertificate(dir, []string{"localhost"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Leaf.SerialNumber.Cmp(c2.Leaf.SerialNumber) != 0 {
		t.Fatal("a certificate that names every host was reissued")
	}
	c3, err := ca.LoadOrIssueServerCertificate(dir, []string{"localhost", "dr.example.com", "10.1.2.3"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if c3.Leaf.SerialNumber.Cmp(c1.Leaf.SerialNumber) == 0 {
		t.Fatal("new hosts did not reissue the certificate")
	}
	if err := c3.Leaf.VerifyHostname("dr.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c3.Leaf.VerifyHostname("10.1.2.3"); err != nil {
		t.Fatal(err)
	}
	// Near expiry (less than 60 days left) it is reissued too.
	c4, err := ca.LoadOrIssueServerCertificate(dir, []string{"localhost"}, now.Add(pki.ServerCertValidity-30*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if c4.Leaf.SerialNumber.Cmp(c3.Leaf.SerialNumber) == 0 {
		t.Fatal("a certificate near expiry was not reissued")
	}
	if len(c4.Certificate) != 2 {
		t.Fatalf("served chain has %d certificates, want leaf and CA", len(c4.Certificate))
	}
	if id, err := pki.IdentityOf(c4.Leaf); err != nil || id != pki.ControlPlaneIdentity {
		t.Fatalf("the control plane's certificate carries %+v, %v", id, err)
	}
	if err := c4.Leaf.VerifyHostname(pki.ControlPlaneSNI); err != nil {
		t.Fatal(err)
	}
}

// TestEachCASignsOnlyItsRole: the agents' CA signs only source servers, the replicators'
// CA only replicators, and only the control plane's CA its serving certificate; the
// three CAs are distinct, so a certificate of one role never chains to another's CA.
func TestEachCASignsOnlyItsRole(t *testing.T) {
	dir := t.TempDir()
	a, err := pki.LoadOrCreateAuthorities(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := pki.LoadOrCreateAuthorities(dir)
	if err != nil || !again.Agents.Certificate().Equal(a.Agents.Certificate()) {
		t.Fatalf("reloading the authorities gave other CAs: %v", err)
	}
	key, _ := pki.NewKey()
	csrPEM, _ := pki.NewCSR(key, "x")
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	agent := pki.Identity{Kind: pki.KindSourceServer, Account: "acct-1", ID: "s-1"}
	rep := pki.Identity{Kind: pki.KindReplicator, Account: "acct-1", ID: "rep-1"}
	for _, bad := range []struct {
		ca *pki.CA
		id pki.Identity
	}{{a.Agents, rep}, {a.Replicators, agent}, {a.ControlPlane, agent}, {a.ControlPlane, rep}, {a.Agents, pki.ControlPlaneIdentity}} {
		if _, _, err := bad.ca.SignCSR(csr, bad.id, nil, now); err == nil {
			t.Errorf("the %s CA signed %s", bad.ca.Role(), bad.id)
		}
	}
	for _, ca := range []*pki.CA{a.Agents, a.Replicators} {
		if _, _, err := ca.IssueServer([]string{"127.0.0.1"}, now); err == nil {
			t.Errorf("the %s CA issued a control-plane certificate", ca.Role())
		}
	}
	cert, _, err := a.Replicators.SignCSR(csr, rep, []string{"127.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*pki.CA{a.ControlPlane, a.Agents} {
		if ca.Verify(cert, x509.ExtKeyUsageServerAuth, now) == nil {
			t.Errorf("a replicator certificate chains to the %s CA", ca.Role())
		}
	}
	if a.For(pki.KindReplicator) != a.Replicators || a.For(pki.KindSourceServer) != a.Agents || a.For(pki.KindControlPlane) != a.ControlPlane {
		t.Fatal("For picks the wrong CA")
	}
}

func TestSignCSRCarriesIdentity(t *testing.T) {
	a, err := pki.LoadOrCreateAuthorities(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := pki.NewCSR(key, "whatever the client says")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	id := pki.Identity{Kind: pki.KindReplicator, Account: "acct-0123456789abcdef0", ID: "rep-0123456789abcdef0"}
	ca := a.Replicators
	cert, certPEM, err := ca.SignCSR(csr, id, pki.ServerHosts("192.0.2.7:1500"), now)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pki.IdentityOf(cert)
	if err != nil || got != id {
		t.Fatalf("IdentityOf = %+v, %v; want %+v", got, err, id)
	}
	if cert.Subject.CommonName != "replicator:rep-0123456789abcdef0" {
		t.Fatalf("common name %q", cert.Subject.CommonName)
	}
	if u := cert.URIs[0].String(); u != "lifeboat://acct-0123456789abcdef0/replicator/rep-0123456789abcdef0" {
		t.Fatalf("URI SAN %s", u)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if err := ca.Verify(cert, usage, now); err != nil {
			t.Fatalf("usage %v: %v", usage, err)
		}
	}
	if err := cert.VerifyHostname("192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if d := cert.NotAfter.Sub(now); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Fatalf("validity %v, want one year", d)
	}
	// The PEM form parses back to the same certificate, and a client can use it.
	back, err := pki.ParseCertificatePEM(certPEM)
	if err != nil || !back.Equal(cert) {
		t.Fatalf("PEM round trip: %v", err)
	}
	keyPEM, _ := pki.EncodeKeyPEM(key)
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	// A source-server certificate has no serverAuth.
	agent, _, err := a.Agents.SignCSR(csr, pki.Identity{Kind: pki.KindSourceServer, Account: id.Account, ID: "s-0123456789abcdef0"}, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	if a.Agents.Verify(agent, x509.ExtKeyUsageServerAuth, now) == nil {
		t.Fatal("an agent certificate is valid for serverAuth")
	}
}

func TestIdentityOfRejectsMalformed(t *testing.T) {
	mk := func(cn string, uris ...string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, u)
		}
		return c
	}
	good := "lifeboat://acct-1/source-server/s-1"
	cases := map[string]*x509.Certificate{
		"no URI":           mk("source-server:s-1"),
		"two URIs":         mk("source-server:s-1", good, good),
		"CN mismatch":      mk("source-server:s-2", good),
		"unknown kind":     mk("admin:s-1", "lifeboat://acct-1/admin/s-1"),
		"id of other kind": mk("replicator:s-1", "lifeboat://acct-1/replicator/s-1"),
		"bad account":      mk("source-server:s-1", "lifeboat://x/source-server/s-1"),
		"extra path":       mk("source-server:s-1", "lifeboat://acct-1/source-server/s-1/x"),
	}
	for name, c := range cases {
		if id, err := pki.IdentityOf(c); err == nil {
			t.Errorf("%s: accepted as %+v", name, id)
		}
	}
	if _, err := pki.IdentityOf(mk("source-server:s-1", good, "https://example.com/")); err != nil {
		t.Errorf("other URIs beside the identity must be ignored: %v", err)
	}
}

func TestParseCSRRejectsWeakOrForged(t *testing.T) {
	if _, err := pki.ParseCSR([]byte("not pem")); err == nil {
		t.Error("accepted non-PEM")
	}
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := pki.NewCSR(weak, "x")
	if _, err := pki.ParseCSR(p); err == nil || !strings.Contains(err.Error(), "2048") {
		t.Errorf("accepted RSA-1024: %v", err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p, _ = pki.NewCSR(p224, "x")
	if _, err := pki.ParseCSR(p); err == nil {
		t.Error("accepted P-224")
	}
	// Flip a byte in the signature.
	key, _ := pki.NewKey()
	p, _ = pki.NewCSR(key, "x")
	block, _ := pem.Decode(p)
	block.Bytes[len(block.Bytes)-3] ^= 0xff
	if _, err := pki.ParseCSR(pem.EncodeToMemory(block)); err == nil {
		t.Error("accepted a CSR with a broken signature")
	}
}

func TestTokens(t *testing.T) {
	pin := strings.Repeat("ab", pki.PinLength/2)
	for _, install := range []bool{false, true} {
		tok, err := pki.NewToken(install, pin)
		if err != nil {
			t.Fatal(err)
		}
		back, err := pki.ParseToken(tok.String())
		if err != nil || back != tok {
			t.Fatalf("round trip of %s: %+v, %v", tok, back, err)
		}
		if !pki.SecretMatches(tok.Secret, tok.Hash()) || pki.SecretMatches(tok.Secret+"0", tok.Hash()) {
			t.Fatal("SecretMatches is wrong")
		}
	}
	if _, err := pki.NewToken(true, "short"); err == nil {
		t.Fatal("install token without a full pin")
	}
	tok, _ := pki.NewToken(true, pin)
	s := tok.String()
	for _, bad := range []string{"", "lbx_" + s[4:], s[:len(s)-1], s + "_x", strings.ToUpper(s), "lbt_" + s[4:]} {
		if _, err := pki.ParseToken(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	tok, _ := pki.NewToken(true, strings.Repeat("0", pki.PinLength))
	f.Add(tok.String())
	api, _ := pki.NewToken(false, "")
	f.Add(api.String())
	f.Add("lbi___")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := pki.ParseToken(s)
		if err != nil {
			return
		}
		if tok.String() != s {
			t.Fatalf("ParseToken(%q) accepted a token that prints as %q", s, tok.String())
		}
	})
}

// TestPinnedTLS connects to real TLS servers: one with the control plane's certificate
// (accepted by the pin of the control plane's CA, refused by another pin before any
// request is sent), and impostors holding a replicator's certificate — from the
// replicators' CA, and, as an older Lifeboat's single CA allowed, from the pinned CA
// itself — which are refused before the request too.
func TestPinnedTLS(t *testing.T) {
	dir := t.TempDir()
	a, err := pki.LoadOrCreateAuthorities(dir)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := a.ControlPlane.LoadOrIssueServerCertificate(dir, []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pin := pki.Pin(a.ControlPlane.Certificate())
	requests := 0
	serve := func(c tls.Certificate) *httptest.Server {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests++ }))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS13}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	get := func(srv *httptest.Server, pin string) error {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.PinnedTLSConfig(pin)}}
		resp, err := c.Get(srv.URL)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	real := serve(cert)
	if err := get(real, pin); err != nil {
		t.Fatalf("the control plane CA's pin was refused: %v", err)
	}
	other, err := pki.LoadOrCreateCA(t.TempDir(), pki.RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	if err := get(real, pki.Pin(other.Certificate())); !errors.Is(err, pki.ErrPinMismatch) {
		t.Fatalf("another CA's pin was accepted: %v", err)
	}
	// A replicator's certificate, chain included, from the same control plane.
	key, _ := pki.NewKey()
	csrPEM, _ := pki.NewCSR(key, "impostor")
	csr, _ := pki.ParseCSR(csrPEM)
	_, repPEM, err := a.Replicators.SignCSR(csr, pki.Identity{Kind: pki.KindReplicator, Account: "acct-1", ID: "rep-1"}, []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.EncodeKeyPEM(key)
	repCert, err := tls.X509KeyPair(append(repPEM, a.Replicators.CertPEM()...), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := get(serve(repCert), pin); !errors.Is(err, pki.ErrPinMismatch) {
		t.Fatalf("a replicator's certificate passed the control plane's pin: %v", err)
	}
	// A certificate signed by the pinned CA that is not the control plane's (as the
	// single CA of older Lifeboat versions signed replicators): refused by identity.
	legacy, legacyCA := signedByHand(t, "lifeboat://acct-1/replicator/rep-1")
	if err := get(serve(legacy), pki.Pin(legacyCA)); !errors.Is(err, pki.ErrNotControlPlane) {
		t.Fatalf("a replicator certificate of the pinned CA was accepted: %v", err)
	}
	if requests != 1 {
		t.Fatalf("servers saw %d requests, want 1 (refused ones must not be sent)", requests)
	}
	// A pinned leaf (an operator certificate without its CA) is accepted as itself.
	if err := pki.VerifyPinned(pki.Pin(cert.Leaf), []*x509.Certificate{cert.Leaf}); err != nil {
		t.Fatal(err)
	}
	// RefuseOtherRoles, for clients trusting a CA file: a Lifeboat identity other than
	// the control plane's is refused, no identity (an operator's certificate) passes.
	if err := pki.RefuseOtherRoles(tls.ConnectionState{PeerCertificates: []*x509.Certificate{legacy.Leaf}}); !errors.Is(err, pki.ErrNotControlPlane) {
		t.Fatalf("RefuseOtherRoles accepted a replicator: %v", err)
	}
	if err := pki.RefuseOtherRoles(tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert.Leaf}}); err != nil {
		t.Fatal(err)
	}
	plain, _ := signedByHand(t, "")
	if err := pki.RefuseOtherRoles(tls.ConnectionState{PeerCertificates: []*x509.Certificate{plain.Leaf}}); err != nil {
		t.Fatal(err)
	}
}

// signedByHand makes a CA and a server certificate for 127.0.0.1 it signs, carrying
// the URI SAN uri (none when empty), outside package pki's rules.
func signedByHand(t *testing.T, uri string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	caKey, _ := pki.NewKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Lifeboat CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := pki.NewKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "replicator:rep-1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key, Leaf: leaf}, ca
}
