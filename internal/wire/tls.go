package wire

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// ServerTLSConfig is the replicator's TLS configuration: TLS 1.3 only, ALPN ALPN, cert
// as its certificate, and a client certificate required, chained to agentCAs (the
// agents' CA only), valid for client authentication and carrying a source-server
// identity of account (the replicator's own: it serves no other account's agents).
func ServerTLSConfig(cert tls.Certificate, agentCAs *x509.CertPool, account string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert, // the chain is checked for ExtKeyUsageClientAuth
		ClientCAs:    agentCAs,
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
			if id.Account != account {
				return fmt.Errorf("client certificate of %s is of account %s: this replicator serves account %s only", id, id.Account, account)
			}
			return nil
		},
	}
}

// Assigned is the replicator an agent was assigned, as its replication config names it:
// the agent accepts no other.
type Assigned struct {
	Account string   // the agent's own account
	ID      string   // rep-…
	Serials []string // the replicator's current certificate serials (hex)
}

// ClientTLSConfig is the agent's TLS configuration: TLS 1.3 only, ALPN ALPN, cert always
// presented, and the replicator's certificate chained to replicatorCAs (the replicators'
// CA only), valid for serverName, carrying the identity of the assigned replicator (its
// id and the agent's account) and one of its current serials — so neither another
// replicator nor a replaced or deleted one's old certificate receives the agent's data.
func ClientTLSConfig(cert tls.Certificate, replicatorCAs *x509.CertPool, serverName string, want Assigned) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Always present the certificate, even when the server names other CAs, so a
		// refusal is logged by the replicator with the reason.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
		RootCAs:              replicatorCAs,
		ServerName:           serverName,
		NextProtos:           []string{ALPN},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := checkALPN(cs); err != nil {
				return err
			}
			return checkAssigned(cs, want)
		},
	}
}

func checkAssigned(cs tls.ConnectionState, want Assigned) error {
	id, err := PeerIdentity(cs)
	if err != nil {
		return err
	}
	if id.Kind != pki.KindReplicator {
		return fmt.Errorf("server certificate is for %s, not a replicator: check the replicator address", id)
	}
	if id.ID != want.ID || id.Account != want.Account {
		return fmt.Errorf("%w: the server is replicator %s of account %s, but this agent is assigned %s of account %s",
			ErrNotAssigned, id.ID, id.Account, want.ID, want.Account)
	}
	serial := pki.SerialHex(cs.PeerCertificates[0])
	if !slices.ContainsFunc(want.Serials, func(s string) bool { return strings.EqualFold(s, serial) }) {
		return fmt.Errorf("%w: replicator %s presented certificate %s, which the control plane no longer lists (replaced or revoked)",
			ErrNotAssigned, id.ID, serial)
	}
	return nil
}

// ErrNotAssigned is returned (wrapped) when the replicator an agent reached is not the
// one it was assigned, or presents a certificate that is no longer current.
var ErrNotAssigned = errors.New("not the assigned replicator")

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
