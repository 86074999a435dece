package testutil

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Certificate signs a certificate for a fresh key the way the control plane does from
// a CSR, by the CA of the identity's kind: serverHosts makes it a server certificate
// too; now starts its validity (a year).
func Certificate(t testing.TB, ca *pki.Authorities, id pki.Identity, serverHosts []string, now time.Time) tls.Certificate {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := pki.NewCSR(key, "test")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, certPEM, err := ca.For(id.Kind).SignCSR(csr, id, serverHosts, now)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
