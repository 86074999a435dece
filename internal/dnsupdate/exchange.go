package dnsupdate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// defaultTimeout bounds one exchange when Client.Timeout is not set.
const defaultTimeout = 5 * time.Second

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return defaultTimeout
}

// reply is a server's answer.
type reply struct {
	*dns.Msg
	// tsigErr is why the answer's signature did not verify; nil when it did, or when
	// the answer is unsigned (see IsTsig). A refused key comes back unsigned.
	tsigErr error
}

// exchange sends m to the server over network ("udp" or "tcp") and reads its answer,
// within the client's timeout and ctx. With key set, m is signed and the answer's
// signature checked, for the caller to judge. Transport failures come back as errors
// of kind Unreachable, or ctx's error when ctx ended.
func (c *Client) exchange(ctx context.Context, m *dns.Msg, network string, key *tsigKey) (reply, error) {
	if err := ctx.Err(); err != nil {
		return reply{}, fmt.Errorf("asking the DNS server %s: %w", c.Server, err)
	}
	limit := c.timeout()
	if d, ok := ctx.Deadline(); ok && time.Until(d) < limit {
		limit = time.Until(d)
	}
	ectx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	dc := &dns.Client{Net: network, Timeout: limit}
	if key != nil {
		dc.TsigSecret = map[string]string{key.name: key.secret}
		m.SetTsig(key.name, key.algorithm, 300, time.Now().Unix())
	}
	conn, err := dc.DialContext(ectx, c.Server)
	if err != nil {
		return reply{}, c.transportError(ctx, ectx, limit, err)
	}
	defer conn.Close()
	// The dns package only takes the deadline from a context: close the connection when
	// ctx is cancelled, to stop a read at once.
	stop := context.AfterFunc(ectx, func() { conn.Close() })
	defer stop()
	r, _, err := dc.ExchangeWithConnContext(ectx, m, conn)
	switch {
	case err == nil:
		return reply{Msg: r}, nil
	case r != nil && r.IsTsig() != nil && isTSIGError(err):
		return reply{Msg: r, tsigErr: err}, nil
	}
	return reply{}, c.transportError(ctx, ectx, limit, err)
}

// isTSIGError reports whether err is the dns package's verdict on an answer's
// signature. It does not verify NOTAUTH answers at all (ErrAuth): those that refuse a
// key are unsigned anyway (RFC 8945), and none is taken for a success.
func isTSIGError(err error) bool {
	for _, e := range []error{dns.ErrSig, dns.ErrSecret, dns.ErrTime, dns.ErrKeyAlg, dns.ErrNoSig, dns.ErrAuth} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// transportError turns a failure to dial, write or read into an operator's message.
func (c *Client) transportError(ctx, ectx context.Context, limit time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("asking the DNS server %s: %w", c.Server, ctx.Err())
	}
	// The limit is the client's timeout or ctx's deadline, whichever came first.
	var ne net.Error
	if ectx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
		return &Error{Kind: Unreachable, Msg: fmt.Sprintf("the DNS server %s did not answer within %s", c.Server, limit.Round(time.Millisecond))}
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return &Error{Kind: Unreachable, Msg: fmt.Sprintf("the DNS server %s refused the connection (is it running?)", c.Server), Err: err}
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return &Error{Kind: Unreachable, Msg: fmt.Sprintf("the DNS server %s could not be reached", c.Server), Err: err}
	}
	return &Error{Kind: Failed, Msg: fmt.Sprintf("the DNS server %s sent an answer that could not be read", c.Server), Err: err}
}
