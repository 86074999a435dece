package libvirt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Transports.
const (
	TransportUnix = "unix"
	TransportTCP  = "tcp"
	TransportTLS  = "tls"
	TransportSSH  = "ssh"
)

const (
	defaultSocket  = "/run/libvirt/libvirt-sock"
	defaultTCPPort = "16509"
	defaultTLSPort = "16514"
	defaultSSHPort = "22"
)

// Address is a parsed libvirt URI.
type Address struct {
	Transport string // unix, tcp, tls or ssh
	Host      string // host:port (tcp, tls, ssh)
	User      string // ssh
	Socket    string // unix: the local socket; ssh: the remote one
	Remote    string // the URI the host's libvirtd opens: qemu:///system
	shown     string
}

func (a *Address) String() string { return a.shown }

// ParseURI checks a libvirt URI and says how to reach it. Only the qemu driver is
// accepted, with the transports unix (the default), tcp, tls and ssh.
func ParseURI(raw string) (*Address, error) {
	if raw == "" || len(raw) > maxURILen {
		return nil, fmt.Errorf("libvirt URI: must be 1 to %d characters, like qemu:///system or qemu+tcp://host/system", maxURILen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("libvirt URI %q: %w", raw, err)
	}
	if _, hasPw := u.User.Password(); hasPw {
		return nil, errors.New("libvirt URI: put no password in the URI (it would be shown and stored): give the credentials from a file")
	}
	driver, transport, _ := strings.Cut(u.Scheme, "+")
	if driver != "qemu" {
		return nil, fmt.Errorf("libvirt URI %s: only the qemu driver is supported (qemu:///system, qemu+tcp://, qemu+tls://, qemu+ssh://)", u.Redacted())
	}
	if u.Path != "/system" && u.Path != "/session" {
		return nil, fmt.Errorf("libvirt URI %s: the path must be /system (or /session)", u.Redacted())
	}
	a := &Address{Transport: transport, Remote: "qemu://" + u.Path, User: u.User.Username()}
	if a.Transport == "" {
		a.Transport = TransportUnix
		if u.Host != "" {
			a.Transport = TransportTLS // libvirt's rule: a host without a transport is tls
		}
	}
	if err := a.fill(u); err != nil {
		return nil, err
	}
	shown := *u
	shown.RawQuery = ""
	a.shown = shown.String()
	return a, nil
}

// fill sets the address's host and socket per transport.
func (a *Address) fill(u *url.URL) error {
	q := u.Query()
	port := u.Port()
	switch a.Transport {
	case TransportUnix:
		if u.Host != "" {
			return fmt.Errorf("libvirt URI %s: a unix socket URI names no host (qemu:///system)", u.Redacted())
		}
		a.Socket = q.Get("socket")
		if a.Socket == "" {
			a.Socket = defaultSocket
		}
		return nil
	case TransportTCP:
		port = orDefault(port, defaultTCPPort)
	case TransportTLS:
		port = orDefault(port, defaultTLSPort)
	case TransportSSH:
		port = orDefault(port, defaultSSHPort)
		a.Socket = orDefault(q.Get("socket"), "/var/run/libvirt/libvirt-sock")
		if a.User == "" {
			return fmt.Errorf("libvirt URI %s: name the ssh user (qemu+ssh://user@host/system)", u.Redacted())
		}
	default:
		return fmt.Errorf("libvirt URI %s: transport %q is not supported: use qemu:///system, qemu+tcp://, qemu+tls:// or qemu+ssh://", u.Redacted(), a.Transport)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("libvirt URI %s: name the host", u.Redacted())
	}
	a.Host = net.JoinHostPort(u.Hostname(), port)
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Credentials are what a connection proves itself with.
type Credentials struct {
	TLS        *tls.Certificate // client certificate and key
	CAs        *x509.CertPool   // CA certificates the host's certificate must chain to (nil: none given)
	SSHKey     ssh.Signer       // ssh private key
	KnownHosts []string         // ssh known_hosts lines
}

// ParseCredentials reads a PEM bundle: certificates (the one that matches the private
// key is the client's, the others are CAs), one private key (PKCS#1, PKCS#8, EC or
// OpenSSH), and, outside the PEM blocks, known_hosts lines for ssh. Empty is no
// credentials.
func ParseCredentials(b []byte) (Credentials, error) {
	var c Credentials
	if len(b) > maxCredentialsLen {
		return c, fmt.Errorf("more than %d bytes", maxCredentialsLen)
	}
	var certs []*pem.Block
	var key *pem.Block
	rest := b
	for {
		before, blk, after := nextPEM(rest)
		c.KnownHosts = append(c.KnownHosts, knownHostsLines(before)...)
		if blk == nil {
			break
		}
		switch {
		case blk.Type == "CERTIFICATE":
			certs = append(certs, blk)
		case strings.HasSuffix(blk.Type, "PRIVATE KEY"):
			if key != nil {
				return c, errors.New("more than one private key")
			}
			key = blk
		default:
			return c, fmt.Errorf("unexpected PEM block %q", blk.Type)
		}
		rest = after
	}
	return c, c.fromBlocks(certs, key)
}

// nextPEM splits b at its next PEM block.
func nextPEM(b []byte) (before []byte, blk *pem.Block, after []byte) {
	i := bytes.Index(b, []byte("-----BEGIN "))
	if i < 0 {
		return b, nil, nil
	}
	blk, after = pem.Decode(b[i:])
	if blk == nil {
		return b, nil, nil
	}
	return b[:i], blk, after
}

func knownHostsLines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// fromBlocks makes the TLS pair, CA pool and ssh signer.
func (c *Credentials) fromBlocks(certs []*pem.Block, key *pem.Block) error {
	if key != nil {
		s, err := ssh.ParsePrivateKey(pem.EncodeToMemory(key))
		if err != nil {
			return fmt.Errorf("private key: %w", err)
		}
		c.SSHKey = s
	}
	if len(certs) == 0 {
		return nil
	}
	for _, blk := range certs {
		if key != nil && c.TLS == nil {
			if pair, err := tls.X509KeyPair(pem.EncodeToMemory(blk), pem.EncodeToMemory(key)); err == nil {
				c.TLS = &pair
				continue
			}
		}
		crt, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fmt.Errorf("certificate: %w", err)
		}
		if c.CAs == nil {
			c.CAs = x509.NewCertPool()
		}
		c.CAs.AddCert(crt)
	}
	return nil
}

// dialTransport connects to the host: the byte stream libvirt's RPC runs on.
func dialTransport(ctx context.Context, a *Address, c Credentials) (net.Conn, error) {
	var d net.Dialer
	switch a.Transport {
	case TransportUnix:
		return d.DialContext(ctx, "unix", a.Socket)
	case TransportTCP:
		return d.DialContext(ctx, "tcp", a.Host)
	case TransportTLS:
		return dialTLS(ctx, a, c)
	case TransportSSH:
		return dialSSH(ctx, a, c)
	}
	return nil, fmt.Errorf("transport %q is not supported", a.Transport)
}

func dialTLS(ctx context.Context, a *Address, c Credentials) (net.Conn, error) {
	if c.TLS == nil {
		return nil, errors.New("qemu+tls needs a client certificate and its private key in the credentials")
	}
	if c.CAs == nil {
		return nil, errors.New("qemu+tls needs the CA certificate of the host's certificate in the credentials")
	}
	host, _, _ := net.SplitHostPort(a.Host)
	d := tls.Dialer{Config: &tls.Config{Certificates: []tls.Certificate{*c.TLS}, RootCAs: c.CAs,
		ServerName: host, MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", a.Host)
	if err != nil {
		return nil, tlsError(err)
	}
	// libvirtd then writes one byte: 1 when it accepted the client's certificate.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(conn, b); err != nil {
		conn.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			// gnutls closes without an alert when it rejects a TLS 1.3 client certificate.
			return nil, &credError{errors.New("the host closed the connection after the TLS handshake: it refused the client certificate (or this client's address)")}
		}
		return nil, tlsError(err)
	}
	if b[0] != 1 {
		conn.Close()
		return nil, &credError{errors.New("the host refused the client certificate")}
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn, nil
}

// tlsError marks a TLS error that is about certificates as a refusal of credentials.
func tlsError(err error) error {
	var alert tls.AlertError
	var verr *tls.CertificateVerificationError
	if errors.As(err, &alert) || errors.As(err, &verr) || strings.Contains(err.Error(), "remote error: tls") {
		return &credError{err}
	}
	return err
}

// dialSSH connects over ssh and opens a channel to the remote libvirt socket
// (direct-streamlocal, as ssh -W and libvirt's own ssh transport with nc do).
func dialSSH(ctx context.Context, a *Address, c Credentials) (net.Conn, error) {
	if c.SSHKey == nil {
		return nil, errors.New("qemu+ssh needs a private key in the credentials")
	}
	if len(c.KnownHosts) == 0 {
		return nil, errors.New("qemu+ssh needs the host's key: add its known_hosts line (ssh-keyscan HOST) to the credentials")
	}
	hostKeys, err := knownHostsCallback(c.KnownHosts)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	tcp, err := d.DialContext(ctx, "tcp", a.Host)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = tcp.SetDeadline(dl)
	}
	cc, chans, reqs, err := ssh.NewClientConn(tcp, a.Host, &ssh.ClientConfig{User: a.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(c.SSHKey)}, HostKeyCallback: hostKeys})
	if err != nil {
		tcp.Close()
		if strings.Contains(err.Error(), "unable to authenticate") || strings.Contains(err.Error(), "host key") {
			return nil, &credError{fmt.Errorf("ssh: %w", err)}
		}
		return nil, fmt.Errorf("ssh: %w", err)
	}
	_ = tcp.SetDeadline(time.Time{})
	client := ssh.NewClient(cc, chans, reqs)
	conn, err := client.Dial("unix", a.Socket)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("ssh: reach the libvirt socket %s on the host: %w", a.Socket, err)
	}
	return &sshConn{Conn: conn, client: client}, nil
}

// sshConn closes its ssh client with it.
type sshConn struct {
	net.Conn
	client *ssh.Client
}

func (s *sshConn) Close() error {
	err := s.Conn.Close()
	s.client.Close()
	return err
}

// knownHostsCallback accepts the host keys of known_hosts lines given as bytes (the
// credentials are the site's, so any of their keys is the host's; the host names in
// the lines are not compared, hashed ones included).
func knownHostsCallback(lines []string) (ssh.HostKeyCallback, error) {
	var keys [][]byte
	for _, l := range lines {
		_, _, key, _, _, err := ssh.ParseKnownHosts([]byte(l))
		if err != nil {
			return nil, fmt.Errorf("known_hosts line %q: %w", truncate(l, 60), err)
		}
		keys = append(keys, key.Marshal())
	}
	return func(host string, _ net.Addr, key ssh.PublicKey) error {
		for _, k := range keys {
			if bytes.Equal(k, key.Marshal()) {
				return nil
			}
		}
		return fmt.Errorf("the host key of %s (%s %s) is none of the credentials' known_hosts keys", host, key.Type(), ssh.FingerprintSHA256(key))
	}, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
