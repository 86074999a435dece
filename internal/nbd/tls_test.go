package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCert is a self-signed certificate for localhost and 127.0.0.1, written as QEMU's
// tls-creds-x509 wants it (ca-cert.pem, server-cert.pem, server-key.pem in dir).
type testCert struct {
	server tls.Config // the server's configuration
	client tls.Config // a client's, trusting the certificate
	dir    string
}

func newTestCert(t testing.TB) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lifeboat nbd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	for name, b := range map[string][]byte{"ca-cert.pem": certPEM, "server-cert.pem": certPEM, "server-key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	pair := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}
	return &testCert{
		server: tls.Config{Certificates: []tls.Certificate{pair}},
		client: tls.Config{RootCAs: pool, ServerName: "localhost"},
		dir:    dir,
	}
}

// TestTLS reads through a TLS session, and checks that nothing is served before TLS.
func TestTLS(t *testing.T) {
	tc := newTestCert(t)
	srv, want := newServer(t)
	srv.TLSConfig = &tc.server
	ts := startServer(t, "tcp", srv)

	c := ts.dial(t)
	c.handshake(clientFixedNewstyle | clientNoZeroes)
	c.expect(optList, nil, repErrTLSReqd)
	c.expect(optStructuredReply, nil, repErrTLSReqd)
	c.expect(77, nil, repErrTLSReqd)
	if _, typ := c.info(optGo, "disk"); typ != repErrTLSReqd {
		t.Fatalf("NBD_OPT_GO before TLS: %#x", typ)
	}
	c.expect(optStartTLS, []byte("x"), repErrInvalid)
	c.startTLS(&tc.client)
	c.expect(optStartTLS, nil, repErrInvalid) // already
	c.expect(optStructuredReply, nil, repAck)
	c.structured = true
	if ei, typ := c.info(optGo, "disk"); typ != repAck || ei.size != exportSize {
		t.Fatalf("NBD_OPT_GO over TLS: %#x size %d", typ, ei.size)
	}
	checkBytes(t, "a read over TLS", c.read(1, 3<<20, 1<<20), want[3<<20:4<<20])
	c.disconnect()

	// NBD_OPT_EXPORT_NAME before TLS cannot be refused: the connection ends.
	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.option(optExportName, []byte("disk"))
	c.expectClosed()

	// A client that does not speak TLS after the acknowledgement is dropped.
	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.expect(optStartTLS, nil, repAck)
	c.write(make([]byte, 64))
	c.expectClosed()

	// A client that does not trust the server's certificate gets no data.
	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.expect(optStartTLS, nil, repAck)
	if err := tls.Client(c.nc, &tls.Config{ServerName: "localhost", RootCAs: x509.NewCertPool()}).Handshake(); err == nil {
		t.Fatal("a TLS handshake with an untrusted certificate succeeded")
	}
}
