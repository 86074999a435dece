package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Identity kinds carried by certificates.
const (
	KindSourceServer = "source-server"
	KindReplicator   = "replicator"
	KindControlPlane = "control-plane"
)

// ControlPlaneSNI is the server name Lifeboat's own clients (agents, replicators, agent
// install) send to the control plane: it answers it with its own certificate, from its
// own CA, even when it serves browsers an operator's certificate (--tls-cert). It is a
// name under .internal, which is never delegated in the public DNS.
const ControlPlaneSNI = "control-plane.lifeboat.internal"

// Identity is who a certificate speaks for. It is encoded in the certificate as the URI
// SAN lifeboat://<account-id>/<kind>/<id> and the CommonName <kind>:<id>; the control
// plane's serving certificate carries lifeboat://control-plane and the CommonName
// control-plane (ControlPlaneIdentity).
type Identity struct {
	Kind    string // KindSourceServer, KindReplicator or KindControlPlane
	Account string // acct-… (empty for the control plane)
	ID      string // s-… or rep-… (empty for the control plane)
}

// ControlPlaneIdentity is the identity of the control plane's serving certificate.
var ControlPlaneIdentity = Identity{Kind: KindControlPlane}

func (id Identity) String() string {
	if id.Kind == KindControlPlane {
		return id.Kind
	}
	return id.Kind + ":" + id.ID
}

// URI returns the identity's URI SAN.
func (id Identity) URI() *url.URL {
	if id.Kind == KindControlPlane {
		return &url.URL{Scheme: "lifeboat", Host: KindControlPlane}
	}
	return &url.URL{Scheme: "lifeboat", Host: id.Account, Path: "/" + id.Kind + "/" + id.ID}
}

func (id Identity) valid() error {
	var prefix string
	switch id.Kind {
	case KindControlPlane:
		if id != ControlPlaneIdentity {
			return fmt.Errorf("the control plane's identity has no account or id, not %q/%q", id.Account, id.ID)
		}
		return nil
	case KindSourceServer:
		prefix = "s-"
	case KindReplicator:
		prefix = "rep-"
	default:
		return fmt.Errorf("unknown identity kind %q", id.Kind)
	}
	if !strings.HasPrefix(id.ID, prefix) || len(id.ID) > 64 || strings.ContainsAny(id.ID, "/:") {
		return fmt.Errorf("identity id %q is not a %s id", id.ID, id.Kind)
	}
	if !strings.HasPrefix(id.Account, "acct-") || len(id.Account) > 64 || strings.ContainsAny(id.Account, "/:@") {
		return fmt.Errorf("identity account %q is not an account id", id.Account)
	}
	return nil
}

// IdentityOf reads the identity from a certificate issued by one of Lifeboat's CAs. It
// checks the encoding only: the caller verifies the chain (the TLS handshake does) and
// that the chain ends at the CA of the identity's kind.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != "lifeboat" {
			continue
		}
		if u.Host == KindControlPlane && u.Path == "" && u.RawQuery == "" && u.Fragment == "" && u.User == nil {
			found = append(found, ControlPlaneIdentity)
			continue
		}
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if len(parts) != 2 {
			return Identity{}, fmt.Errorf("certificate URI %s is not lifeboat://<account>/<kind>/<id>", u)
		}
		found = append(found, Identity{Kind: parts[0], Account: u.Host, ID: parts[1]})
	}
	if len(found) != 1 {
		return Identity{}, fmt.Errorf("certificate has %d lifeboat:// identities, want exactly one", len(found))
	}
	id := found[0]
	if err := id.valid(); err != nil {
		return Identity{}, err
	}
	if cert.Subject.CommonName != id.String() {
		return Identity{}, fmt.Errorf("certificate common name %q does not match its identity %s", cert.Subject.CommonName, id)
	}
	return id, nil
}

// isControlPlane reports whether cert carries the control plane's identity.
func isControlPlane(cert *x509.Certificate) bool {
	id, err := IdentityOf(cert)
	return err == nil && id == ControlPlaneIdentity
}

// ParseCSR decodes a PEM certificate request and checks its signature and key: ECDSA
// P-256 or P-384, Ed25519, or RSA of 2048 bits or more.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr is not a PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr cannot be parsed: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr signature is not valid: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errors.New("csr key must be ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, errors.New("csr RSA key is shorter than 2048 bits")
		}
	default:
		return nil, errors.New("csr key must be ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more")
	}
	return csr, nil
}

// NewCSR returns a PEM certificate request for key. The CA ignores its subject and
// names, and sets the identity it assigns.
func NewCSR(key crypto.Signer, commonName string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create a certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ServerHosts returns the host of a host:port address, for SignCSR's serverHosts.
func ServerHosts(address string) []string {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	return []string{host}
}

// SignCSR issues a client certificate (valid one year from now) for the CSR's key,
// carrying id, which must be of the kind this CA signs (agents: source servers;
// replicators: replicators). serverHosts, when given, makes it a server certificate for
// those hosts too (replicators use one certificate for their listener and their API
// calls).
func (c *CA) SignCSR(csr *x509.CertificateRequest, id Identity, serverHosts []string, now time.Time) (*x509.Certificate, []byte, error) {
	if err := id.valid(); err != nil {
		return nil, nil, err
	}
	if id.Kind != c.role.signs() || id.Kind == KindControlPlane {
		return nil, nil, fmt.Errorf("the %s CA does not sign %s certificates", c.role, id.Kind)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: id.String(), Organization: []string{id.Account}},
		NotBefore:    now.Add(-certificateBackdate),
		NotAfter:     now.Add(ClientCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URI()},
	}
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if len(serverHosts) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		addHosts(tmpl, serverHosts)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, csr.PublicKey, c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign the certificate for %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, EncodeCertificatePEM(der), nil
}
