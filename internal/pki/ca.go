// Package pki is Lifeboat's own public key infrastructure: three certificate authorities
// created at the control plane's first start, one per role — the control plane's CA
// signs only its serving certificate, the agents' CA only source-server certificates, the
// replicators' CA only replicator certificates — so a certificate of one role can never
// pass for another (docs/security.md). It also holds the identities certificates carry,
// and the install and API tokens, including the pin of the control plane's CA that an
// install token embeds so a fresh agent can trust a self-signed control plane on first
// contact.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// Lifetimes of what the CA issues.
const (
	CAValidity          = 10 * 365 * 24 * time.Hour
	ServerCertValidity  = 397 * 24 * time.Hour
	ClientCertValidity  = 365 * 24 * time.Hour
	serverRenewBefore   = 60 * 24 * time.Hour
	certificateBackdate = 5 * time.Minute // tolerate clocks a little behind
)

// File names under the PKI directory. CACertFile is the control plane's CA: the one
// clients trust the API with (LIFEBOAT_CA_CERT).
const (
	CACertFile           = "ca.crt"
	AgentCACertFile      = "agent-ca.crt"
	ReplicatorCACertFile = "replicator-ca.crt"
	ServerCertFile       = "server.crt"
	serverKeyFile        = "server.key"
)

// Role is what a CA signs. Each role has its own CA and key.
type Role string

// The roles.
const (
	RoleControlPlane Role = "control-plane" // the control plane's serving certificate
	RoleAgents       Role = "agents"        // source-server (agent) client certificates
	RoleReplicators  Role = "replicators"   // replicator certificates (server and client)
)

// files returns the certificate and key file names of a role's CA.
func (r Role) files() (cert, key string, err error) {
	switch r {
	case RoleControlPlane:
		return CACertFile, "ca.key", nil
	case RoleAgents:
		return AgentCACertFile, "agent-ca.key", nil
	case RoleReplicators:
		return ReplicatorCACertFile, "replicator-ca.key", nil
	}
	return "", "", fmt.Errorf("unknown CA role %q", r)
}

// signs is the identity kind a role's CA signs.
func (r Role) signs() string {
	switch r {
	case RoleAgents:
		return KindSourceServer
	case RoleReplicators:
		return KindReplicator
	}
	return KindControlPlane
}

// legacyCAName is the common name of the single CA of Lifeboat before the roles had CAs
// of their own; it signed every certificate.
const legacyCAName = "Lifeboat CA"

// CA is one of the control plane's certificate authorities.
type CA struct {
	role    Role
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

// Authorities are the three CAs of a control plane.
type Authorities struct {
	ControlPlane, Agents, Replicators *CA
}

// LoadOrCreateAuthorities loads (creating what is missing) the three CAs in dir.
func LoadOrCreateAuthorities(dir string) (*Authorities, error) {
	var a Authorities
	var err error
	for _, x := range []struct {
		role Role
		dst  **CA
	}{{RoleControlPlane, &a.ControlPlane}, {RoleAgents, &a.Agents}, {RoleReplicators, &a.Replicators}} {
		if *x.dst, err = LoadOrCreateCA(dir, x.role); err != nil {
			return nil, err
		}
	}
	return &a, nil
}

// Legacy reports whether the control plane's CA is the single CA of an older Lifeboat,
// which also signed agents and replicators: their old certificates are no longer
// accepted, and they must be registered again.
func (a *Authorities) Legacy() bool { return a.ControlPlane.cert.Subject.CommonName == legacyCAName }

// ClientPool holds the CAs of the clients the control plane authenticates by certificate:
// agents and replicators.
func (a *Authorities) ClientPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.Agents.cert)
	p.AddCert(a.Replicators.cert)
	return p
}

// For returns the CA that signs identities of kind (KindSourceServer, KindReplicator or
// KindControlPlane).
func (a *Authorities) For(kind string) *CA {
	switch kind {
	case KindSourceServer:
		return a.Agents
	case KindReplicator:
		return a.Replicators
	}
	return a.ControlPlane
}

// LoadOrCreateCA loads the CA of role from dir, or creates it there (ECDSA P-256, 10
// years) when dir has none. The key file is written with mode 0600.
func LoadOrCreateCA(dir string, role Role) (*CA, error) {
	certFile, keyFile, err := role.files()
	if err != nil {
		return nil, err
	}
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, os.ErrNotExist) {
		return createCA(dir, role)
	}
	if err != nil {
		return nil, fmt.Errorf("read the CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read the CA key (%s exists, so its key must too): %w", certPath, err)
	}
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("CA key %s does not belong to certificate %s: restore the pair from backup", keyPath, certPath)
	}
	return &CA{role: role, cert: cert, key: key, certPEM: certPEM}, nil
}

func createCA(dir string, role Role) (*CA, error) {
	certFile, keyFile, err := role.files()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the PKI directory: %w", err)
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "Lifeboat " + string(role) + " CA", Organization: []string{"Lifeboat"}},
		NotBefore:             now.Add(-certificateBackdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	certPEM := EncodeCertificatePEM(der)
	// Key first: a crash between the two writes leaves no certificate, so the next
	// start creates a new pair instead of finding a certificate without its key.
	if err := atomicfile.WriteFile(filepath.Join(dir, keyFile), keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, certFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	return &CA{role: role, cert: cert, key: key, certPEM: certPEM}, nil
}

// Role is what the CA signs.
func (c *CA) Role() Role { return c.role }

// Certificate returns the CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertPEM returns the CA certificate in PEM form.
func (c *CA) CertPEM() []byte { return slices.Clone(c.certPEM) }

// Pool returns a pool holding the CA certificate.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// Verify checks that cert was issued by this CA for the given use and is valid at now.
func (c *CA) Verify(cert *x509.Certificate, usage x509.ExtKeyUsage, now time.Time) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: c.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// IssueServer issues the control plane's serving certificate for hosts (DNS names and IP
// addresses, and always ControlPlaneSNI) for a key it generates, carrying the control
// plane's identity, and returns the certificate chain (leaf, then CA) and key in PEM.
// Only the control plane's CA issues it.
func (c *CA) IssueServer(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	if c.role != RoleControlPlane {
		return nil, nil, fmt.Errorf("the %s CA does not issue the control plane's certificate", c.role)
	}
	key, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: ControlPlaneIdentity.String()},
		NotBefore:    now.Add(-certificateBackdate),
		NotAfter:     now.Add(ServerCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		URIs:         []*url.URL{ControlPlaneIdentity.URI()},
	}
	addHosts(tmpl, append([]string{ControlPlaneSNI}, hosts...))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue the server certificate: %w", err)
	}
	keyPEM, err = EncodeKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return append(EncodeCertificatePEM(der), c.certPEM...), keyPEM, nil
}

// LoadOrIssueServerCertificate returns the control plane's TLS certificate from dir,
// issuing a new one when there is none, when it does not name every host or carry the
// control plane's identity, when it was not issued by this CA, or when it expires within
// 60 days.
func (c *CA) LoadOrIssueServerCertificate(dir string, hosts []string, now time.Time) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, ServerCertFile), filepath.Join(dir, serverKeyFile)
	if tc, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		leaf, err := x509.ParseCertificate(tc.Certificate[0])
		if err == nil && c.Verify(leaf, x509.ExtKeyUsageServerAuth, now) == nil && isControlPlane(leaf) &&
			leaf.NotAfter.Sub(now) > serverRenewBefore && namesAll(leaf, append([]string{ControlPlaneSNI}, hosts...)) {
			tc.Leaf = leaf
			return tc, nil
		}
	}
	certPEM, keyPEM, err := c.IssueServer(hosts, now)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := atomicfile.WriteFile(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	tc, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, err
	}
	tc.Leaf, err = x509.ParseCertificate(tc.Certificate[0])
	return tc, err
}

func namesAll(cert *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
				return false
			}
		} else if !slices.Contains(cert.DNSNames, h) {
			return false
		}
	}
	return true
}

func addHosts(tmpl *x509.Certificate, hosts []string) {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if h != "" && !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
}

// Fingerprint returns the SHA-256 of a certificate's DER encoding, in lowercase hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// SerialHex returns a certificate's serial number in lowercase hex.
func SerialHex(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("lifeboat: the system's random source failed: " + err.Error())
	}
	return n.Add(n, big.NewInt(1))
}

// NewKey generates an ECDSA P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate a key: %w", err)
	}
	return k, nil
}

// EncodeKeyPEM encodes a private key as a PKCS #8 PEM block.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode the private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM decodes a PKCS #8 or SEC 1 private key.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key found")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, errors.New("the private key cannot sign")
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("the private key is neither PKCS #8 nor SEC 1")
}

// EncodeCertificatePEM encodes a DER certificate as PEM.
func EncodeCertificatePEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ParseCertificatePEM decodes the first certificate of a PEM bundle.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	certs, err := ParseCertificatesPEM(data)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ParseCertificatesPEM decodes every certificate of a PEM bundle (at least one).
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
