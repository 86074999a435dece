package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// tlsCert is a certificate and its key, PEM.
type tlsCert struct {
	crt     *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

// makeCert makes a certificate: a CA when parent is nil, else a server (with the
// 127.0.0.1 address) or client certificate signed by parent.
func makeCert(t testing.TB, cn string, parent *tlsCert, server bool) *tlsCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: []string{"lbtest"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
	signer, signerKey := tmpl, key
	switch {
	case parent == nil:
		tmpl.IsCA, tmpl.KeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature
	case server:
		tmpl.ExtKeyUsage, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []net.IP{net.IPv4(127, 0, 0, 1)}
	default:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if parent != nil {
		signer, signerKey = parent.crt, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	crt, _ := x509.ParseCertificate(der)
	pk, _ := x509.MarshalPKCS8PrivateKey(key)
	return &tlsCert{crt: crt, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})}
}

// writeTLS makes a CA, the server's certificate and two client bundles, and adds the
// TLS listener to libvirtd.conf.
func (l *Libvirtd) writeTLS(t testing.TB) {
	t.Helper()
	ca := makeCert(t, "lbtest libvirt CA", nil, false)
	srv := makeCert(t, "127.0.0.1", ca, true)
	cli := makeCert(t, "lbtest-client", ca, false)
	other := makeCert(t, "lbtest other CA", nil, false)
	stranger := makeCert(t, "lbtest-stranger", other, false)
	mkdirAll(t, l.path("pki"))
	writePrivate(t, l.path("pki", "cacert.pem"), string(ca.certPEM))
	writePrivate(t, l.path("pki", "servercert.pem"), string(srv.certPEM))
	writePrivate(t, l.path("pki", "serverkey.pem"), string(srv.keyPEM))
	l.TLSCredentials = concat(cli.certPEM, cli.keyPEM, ca.certPEM)
	l.UntrustedTLSCredentials = concat(stranger.certPEM, stranger.keyPEM, ca.certPEM)
	conf, err := os.ReadFile(l.path("libvirtd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf(`listen_tls = 1
tls_port = "%d"
auth_tls = "none"
key_file = %q
cert_file = %q
ca_file = %q
`, l.TLSPort, l.path("pki", "serverkey.pem"), l.path("pki", "servercert.pem"), l.path("pki", "cacert.pem"))
	writePrivate(t, l.path("libvirtd.conf"), strings.Replace(string(conf), "listen_tls = 0\n", listen, 1))
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
