package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Token string prefixes.
const (
	InstallTokenPrefix = "lbi_"
	APITokenPrefix     = "lbt_"
)

// PinLength is the number of hex digits of a certificate's SHA-256 fingerprint kept in
// an install token: 128 bits, beyond any second-preimage search.
const PinLength = 32

const (
	tokenIDBytes     = 8
	tokenSecretBytes = 20
)

// Token is a parsed token string: lbt_<id>_<secret> for API tokens,
// lbi_<id>_<secret>_<pin> for install tokens, where pin is the first PinLength hex digits
// of the SHA-256 fingerprint of the certificate that anchors the control plane's TLS
// chain (its CA), so a fresh agent can verify the server before sending anything.
type Token struct {
	Install bool
	ID      string // hex, the token's id in the API
	Secret  string // hex, only its hash is stored
	Pin     string // install tokens only
}

// NewToken returns a new random token; pin is required for install tokens.
func NewToken(install bool, pin string) (Token, error) {
	if install && len(pin) != PinLength {
		return Token{}, errors.New("an install token needs the pin of the CA certificate")
	}
	t := Token{Install: install, ID: randomHex(tokenIDBytes), Secret: randomHex(tokenSecretBytes)}
	if install {
		t.Pin = pin
	}
	return t, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("lifeboat: the system's random source failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// String returns the token as users pass it.
func (t Token) String() string {
	if t.Install {
		return InstallTokenPrefix + t.ID + "_" + t.Secret + "_" + t.Pin
	}
	return APITokenPrefix + t.ID + "_" + t.Secret
}

// Hash returns the hash of the secret, the only form of it the server stores.
func (t Token) Hash() string { return HashSecret(t.Secret) }

// HashSecret hashes a token secret (SHA-256, hex). Secrets are random, so no salt or
// stretching is needed.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches reports in constant time whether secret hashes to hash.
func SecretMatches(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}

// ParseToken parses a token string.
func ParseToken(s string) (Token, error) {
	var t Token
	var rest string
	switch {
	case strings.HasPrefix(s, InstallTokenPrefix):
		t.Install, rest = true, s[len(InstallTokenPrefix):]
	case strings.HasPrefix(s, APITokenPrefix):
		rest = s[len(APITokenPrefix):]
	default:
		return t, errors.New("the token does not start with lbt_ (API token) or lbi_ (install token): copy it whole from `lifeboat tokens create`")
	}
	parts := strings.Split(rest, "_")
	want := 2
	if t.Install {
		want = 3
	}
	if len(parts) != want || !isHex(parts[0], 2*tokenIDBytes) || !isHex(parts[1], 2*tokenSecretBytes) ||
		(t.Install && !isHex(parts[2], PinLength)) {
		return t, errors.New("the token is malformed: copy it whole from `lifeboat tokens create`")
	}
	t.ID, t.Secret = parts[0], parts[1]
	if t.Install {
		t.Pin = parts[2]
	}
	return t, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Pin returns the pin of a certificate: the first PinLength hex digits of its SHA-256.
func Pin(cert *x509.Certificate) string { return Fingerprint(cert)[:PinLength] }

// ErrPinMismatch is returned (wrapped) when a server's chain does not match a pin.
var ErrPinMismatch = errors.New("the server's certificates do not match the CA pin in the install token")

// VerifyPinned checks a TLS peer chain against a pin. When the leaf itself matches, it is
// accepted (the pin names that very certificate). Otherwise a certificate of the chain
// must match the pin, the leaf must chain up to it for server authentication, and the
// leaf must carry the control plane's identity: a pin names the control plane's CA, and
// nothing else that CA might have signed passes for the control plane. Host names are not
// checked: the pin is the trust anchor, as in kubeadm's discovery.
func VerifyPinned(pin string, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("the server sent no certificate")
	}
	for i, c := range chain {
		if Pin(c) != pin {
			continue
		}
		if i == 0 {
			return nil
		}
		roots := x509.NewCertPool()
		roots.AddCert(c)
		inter := x509.NewCertPool()
		for _, m := range chain[1:i] {
			inter.AddCert(m)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return fmt.Errorf("the server's certificate does not chain to the pinned CA: %w", err)
		}
		if !isControlPlane(chain[0]) {
			return fmt.Errorf("%w: the server's certificate (%q) does not carry the control plane's identity", ErrNotControlPlane, chain[0].Subject.CommonName)
		}
		return nil
	}
	return ErrPinMismatch
}

// ErrNotControlPlane is returned (wrapped) when a server presents a certificate of the
// right CA that is not the control plane's: another Lifeboat component posing as it.
var ErrNotControlPlane = errors.New("the server is not the control plane")

// PinnedTLSConfig returns a client TLS configuration (TLS 1.3) that trusts a server only
// if its chain matches pin (see VerifyPinned). It asks for the control plane's own
// certificate by name (ControlPlaneSNI).
func PinnedTLSConfig(pin string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         ControlPlaneSNI,
		InsecureSkipVerify: true, // replaced by VerifyConnection's pin check
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyPinned(pin, cs.PeerCertificates)
		},
	}
}

// RefuseOtherRoles is a VerifyConnection check for clients that verify the control plane
// with a CA file: a certificate that carries a Lifeboat identity must carry the control
// plane's (one from an operator's CA carries none and is checked by the chain alone).
func RefuseOtherRoles(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	for _, u := range leaf.URIs {
		if u.Scheme == "lifeboat" && !isControlPlane(leaf) {
			return fmt.Errorf("%w: its certificate is for %s", ErrNotControlPlane, u)
		}
	}
	return nil
}
