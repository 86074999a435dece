// Package libvirt drives a libvirt host (local or remote) in pure Go, over libvirt's RPC
// protocol (github.com/digitalocean/go-libvirt, no cgo), for the libvirt launch provider.
//
// A host is named by a URI: qemu:///system (the local Unix socket), qemu+tcp://host[:port]/system,
// qemu+tls://host[:port]/system (client certificate, key and CA given as PEM bytes) or
// qemu+ssh://user@host[:port]/system (a private key and the host's known_hosts line
// given as bytes; the connection reaches the remote libvirt socket through the SSH
// connection, no ssh binary involved). Credentials are bytes, never file names in the
// URI nor arguments of a process.
//
// What it does: storage pools (check, or make a directory pool), volumes created and
// filled through libvirt's stream API (StorageVolUpload, no shared filesystem assumed;
// a failed upload deletes its partial volume), in-place writes of only the blocks that
// differ (StorageVolDownload compared per 1 MiB block), domains defined from a spec and
// started, isolated networks for drills, the serial console captured through libvirt's
// console stream, and the teardown of all of it.
//
// Every call takes a context and is bounded in time: a call without a deadline gets
// Config.CallTimeout; streams are bounded by their context and fail when no byte moves
// for Config.StallTimeout. When a call times out the connection is closed (go-libvirt
// cannot abandon one RPC), so the Client is unusable afterwards: dial again.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// Defaults for Config.
const (
	DefaultCallTimeout  = 60 * time.Second
	DefaultDialTimeout  = 15 * time.Second
	DefaultStallTimeout = 2 * time.Minute
)

// Bounds on outside input.
const (
	maxURILen         = 2048
	maxCredentialsLen = 256 << 10
	maxNameLen        = 200
)

// Config says which libvirt host to reach and how.
type Config struct {
	// URI is the libvirt URI (see the package comment).
	URI string
	// Credentials are PEM bytes: for qemu+tls the client certificate, its private key and
	// the CA certificate(s); for qemu+ssh the private key (OpenSSH or PEM) and, outside
	// the PEM blocks, the host's known_hosts line(s). See ParseCredentials.
	Credentials []byte
	// CallTimeout bounds a call whose context has no deadline (default DefaultCallTimeout).
	CallTimeout time.Duration
	// DialTimeout bounds connecting and opening the connection (default DefaultDialTimeout).
	DialTimeout time.Duration
	// StallTimeout fails a stream when no byte moves for that long (default DefaultStallTimeout).
	StallTimeout time.Duration
	Logger       *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Client is one connection to a libvirt host. Its methods are safe for concurrent use.
type Client struct {
	cfg  Config
	addr *Address
	lv   *golibvirt.Libvirt
	conn net.Conn
	log  *slog.Logger

	closeOnce sync.Once
}

// Dial connects to the libvirt host cfg names and opens its driver. The errors say,
// for an operator, whether the host does not answer, refuses the credentials or the
// URI is wrong; IsUnreachable tells the first two apart from the rest.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	addr, err := ParseURI(cfg.URI)
	if err != nil {
		return nil, err
	}
	creds, err := ParseCredentials(cfg.Credentials)
	if err != nil {
		return nil, fmt.Errorf("credentials for libvirt at %s: %w", addr, err)
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	raw, err := dialTransport(dctx, addr, creds)
	if err != nil {
		var ce *credError
		return nil, &UnreachableError{URI: addr.String(), Err: err, Refused: errors.As(err, &ce)}
	}
	conn := &errConn{Conn: raw}
	c := &Client{cfg: cfg, addr: addr, conn: conn, log: cfg.Logger.With("libvirt", addr.String())}
	c.lv = golibvirt.NewWithDialer(dialers.NewAlreadyConnected(conn))
	err = c.do(dctx, "open the connection", func() error { return c.lv.ConnectToURI(golibvirt.ConnectURI(addr.Remote)) })
	if err != nil {
		c.Close()
		refused := isAuthError(err)
		if rerr := conn.firstErr(); rerr != nil {
			// go-libvirt drops the connection's error; TLS 1.3 says only now that the
			// host refused the client certificate.
			err = fmt.Errorf("%w: %v", err, rerr)
			refused = refused || strings.Contains(rerr.Error(), "remote error: tls")
		}
		return nil, &UnreachableError{URI: addr.String(), Err: err, Refused: refused}
	}
	return c, nil
}

// errConn remembers the first error reading or writing the connection.
type errConn struct {
	net.Conn
	mu  sync.Mutex
	err error
}

func (e *errConn) note(err error) {
	if err != nil && !errors.Is(err, net.ErrClosed) {
		e.mu.Lock()
		if e.err == nil {
			e.err = err
		}
		e.mu.Unlock()
	}
}

func (e *errConn) Read(b []byte) (int, error) {
	n, err := e.Conn.Read(b)
	e.note(err)
	return n, err
}

func (e *errConn) Write(b []byte) (int, error) {
	n, err := e.Conn.Write(b)
	e.note(err)
	return n, err
}

func (e *errConn) firstErr() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// credError is a transport that refused the credentials (TLS handshake alert, ssh
// authentication or host key).
type credError struct{ err error }

func (c *credError) Error() string { return c.err.Error() }
func (c *credError) Unwrap() error { return c.err }

// URI is the host's URI as it may be shown (never with a password).
func (c *Client) URI() string { return c.addr.String() }

// Close closes the connection.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = c.lv.Disconnect()
		}()
		select {
		case <-done:
		case <-ctx.Done():
		}
		c.conn.Close()
	})
	return nil
}

// UnreachableError is a libvirt host that does not answer or refuses the credentials.
type UnreachableError struct {
	URI     string
	Err     error
	Refused bool // the host answered and refused the credentials
}

func (e *UnreachableError) Error() string {
	if e.Refused {
		return fmt.Sprintf("libvirt at %s refuses the connection (credentials or access): %v", e.URI, e.Err)
	}
	return fmt.Sprintf("libvirt at %s does not answer: %v", e.URI, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// IsUnreachable reports whether err says the host does not answer or refuses the
// credentials.
func IsUnreachable(err error) bool {
	var u *UnreachableError
	return errors.As(err, &u)
}

// isAuthError reports whether libvirt refused the connection's credentials.
func isAuthError(err error) bool {
	var le golibvirt.Error
	if errors.As(err, &le) {
		switch golibvirt.ErrorNumber(le.Code) {
		case golibvirt.ErrAuthFailed, golibvirt.ErrAuthCancelled, golibvirt.ErrAuthUnavailable,
			golibvirt.ErrAccessDenied, golibvirt.ErrNoConnect:
			return true
		}
	}
	return false
}

// errCode is libvirt's error number in err, or -1.
func errCode(err error) golibvirt.ErrorNumber {
	var le golibvirt.Error
	if errors.As(err, &le) {
		return golibvirt.ErrorNumber(le.Code)
	}
	return -1
}

// do runs one RPC bounded by ctx (CallTimeout when ctx has no deadline). On timeout it
// closes the connection, which ends the RPC.
func (c *Client) do(ctx context.Context, what string, f func() error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
	}
	return c.run(ctx, what, f)
}

// run runs f until it returns or ctx ends; then the connection is closed so that f
// returns, and run waits for it (briefly) so no goroutine is left writing.
func (c *Client) run(ctx context.Context, what string, f func() error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s at %s: %w", what, c.addr, err)
	}
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s at %s: %w", what, c.addr, err)
		}
		return nil
	case <-ctx.Done():
		c.conn.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		return fmt.Errorf("%s at %s: libvirt did not finish in time, the connection is closed: %w", what, c.addr, ctx.Err())
	}
}

// checkName refuses a libvirt object name that is empty, too long or holds characters
// that have no place in a name (slashes, control characters).
func checkName(kind, name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("%s name %q: must be 1 to %d characters", kind, name, maxNameLen)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\\' {
			return fmt.Errorf("%s name %q: no slashes or control characters", kind, name)
		}
	}
	return nil
}
