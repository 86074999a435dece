package wire

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// ServerTLSConfig is the replicator's TLS configuration: TLS 1.3 only, ALPN ALPN, cert
// as its certificate, and a client certificate required, chained to roots, valid for
// client authentication and carrying a source-server identity.
func ServerTLSConfig(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert, // the chain is checked for ExtKeyUsageClientAuth
		ClientCAs:    roots,
		NextProtos:   []string{ALPN},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := checkALPN(cs); err != nil {
				return err
			}
			id, err := PeerIdentity(cs)
			if err != nil {
				return err
			}
			if id.Kind != pki.KindSourceServer {
				return fmt.Errorf("client certificate is for %s: only source-server agents may send data to a replicator", id)
			}
			return nil
		},
	}
}

// ClientTLSConfig is the agent's TLS configuration: TLS 1.3 only, ALPN ALPN, cert always
// presented, and the replicator's certificate chained to roots, valid for serverName
// and carrying a replicator identity.
func ClientTLSConfig(cert tls.Certificate, roots *x509.CertPool, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Always present the certificate, even when the server names other CAs, so a
		// refusal is logged by the replicator with the reason.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
		RootCAs:              roots,
		ServerName:           serverName,
		NextProtos:           []string{ALPN},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := checkALPN(cs); err != nil {
				return err
			}
			id, err := PeerIdentity(cs)
			if err != nil {
				return err
			}
			if id.Kind != pki.KindReplicator {
				return fmt.Errorf("server certificate is for %s, not a replicator: check the replicator address", id)
			}
			return nil
		},
	}
}

func checkALPN(cs tls.ConnectionState) error {
	if cs.NegotiatedProtocol != ALPN {
		return fmt.Errorf("peer did not negotiate ALPN protocol %q (got %q): it does not speak Lifeboat's replication protocol version 1", ALPN, cs.NegotiatedProtocol)
	}
	return nil
}

// PeerIdentity returns the identity in the peer's verified certificate.
func PeerIdentity(cs tls.ConnectionState) (pki.Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return pki.Identity{}, errors.New("peer presented no certificate")
	}
	if len(cs.VerifiedChains) == 0 {
		return pki.Identity{}, errors.New("peer certificate was not verified against the Lifeboat CA")
	}
	id, err := pki.IdentityOf(cs.PeerCertificates[0])
	if err != nil {
		return pki.Identity{}, fmt.Errorf("peer certificate carries no usable identity: %w", err)
	}
	return id, nil
}
