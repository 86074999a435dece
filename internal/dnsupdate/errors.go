package dnsupdate

import (
	"errors"
	"fmt"

	"github.com/miekg/dns"
)

// Kind says what went wrong, for callers that act on it (a dry run's verdict, a retry).
type Kind int

// The kinds of failure. The zero Kind is "not an error of this package".
const (
	Invalid     Kind = iota + 1 // the request itself (key, name, type, value) is wrong; nothing was sent
	Unreachable                 // no answer: the server is down, unreachable or too slow
	KeyRefused                  // the server refused the TSIG key (BADKEY, BADSIG, BADTIME)
	Refused                     // the server's policy refused the update (REFUSED)
	NotServed                   // the server does not serve the zone or the name (NOTAUTH, REFUSED query, referral)
	OutsideZone                 // a name is not in the zone (NOTZONE)
	Failed                      // anything else: SERVFAIL, an answer without a valid signature, ...
)

// String names a Kind.
func (k Kind) String() string {
	switch k {
	case Invalid:
		return "invalid"
	case Unreachable:
		return "unreachable"
	case KeyRefused:
		return "key refused"
	case Refused:
		return "refused"
	case NotServed:
		return "zone not served"
	case OutsideZone:
		return "outside zone"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Error is what the package returns: a message in an operator's words, its Kind, and
// the underlying cause when there is one.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf is the Kind of an error this package returned (possibly wrapped), 0 otherwise.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

func invalid(msg string) error { return &Error{Kind: Invalid, Msg: msg} }

// rcodeName is an rcode's mnemonic, as dig prints it.
func rcodeName(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rcode)
}

// updateError judges the answer to a signed UPDATE: nil when it was applied (NOERROR,
// signed with the key, signature verified). what says what was asked, e.g. "the
// update of www.example.com. A in zone example.com.".
func (c *Client) updateError(r reply, key tsigKey, zone, what string) error {
	server := c.Server
	if t := r.IsTsig(); t != nil && t.Error != dns.RcodeSuccess {
		return c.tsigError(t.Error, key)
	}
	switch r.Rcode {
	case dns.RcodeSuccess:
		if r.IsTsig() == nil {
			return &Error{Kind: Failed, Msg: fmt.Sprintf("the DNS server %s answered %s without a TSIG signature: whether it was applied cannot be trusted", server, what)}
		}
		if r.tsigErr != nil {
			return &Error{Kind: Failed, Msg: fmt.Sprintf("the signature of the DNS server %s's answer to %s did not verify with the key %s: whether it was applied cannot be trusted", server, what, key), Err: r.tsigErr}
		}
		return nil
	case dns.RcodeNotAuth:
		// A refused key is NOTAUTH too, with a TSIG error (above), or none at all from a
		// server that does not do TSIG.
		msg := fmt.Sprintf("the DNS server %s is not authoritative for zone %s (NOTAUTH): check the zone name, and that %s is the zone's primary server", server, zone, server)
		if r.IsTsig() == nil {
			msg += fmt.Sprintf(", and the TSIG key %s", key)
		}
		return &Error{Kind: NotServed, Msg: msg}
	case dns.RcodeNotZone:
		return &Error{Kind: OutsideZone, Msg: fmt.Sprintf("the DNS server %s refused %s: a name is outside zone %s (NOTZONE)", server, what, zone)}
	case dns.RcodeRefused:
		return &Error{Kind: Refused, Msg: fmt.Sprintf("the DNS server %s refused %s (REFUSED): the key %s is not allowed to make it; check the zone's update-policy or allow-update", server, what, key)}
	case dns.RcodeServerFailure:
		return &Error{Kind: Failed, Msg: fmt.Sprintf("the DNS server %s failed to apply %s (SERVFAIL): its log says why (a journal it cannot write, a zone that did not load, ...)", server, what)}
	}
	return &Error{Kind: Failed, Msg: fmt.Sprintf("the DNS server %s did not apply %s: it answered %s", server, what, rcodeName(r.Rcode))}
}

// tsigError is the error for a TSIG error code in an answer.
func (c *Client) tsigError(code uint16, key tsigKey) error {
	name := key.String()
	switch code {
	case dns.RcodeBadTime:
		return &Error{Kind: KeyRefused, Msg: fmt.Sprintf("the DNS server %s refused the TSIG key %s because of the time (BADTIME): the clocks of this machine and the server differ by more than 5 minutes", c.Server, name)}
	case dns.RcodeBadKey, dns.RcodeBadSig:
		return &Error{Kind: KeyRefused, Msg: fmt.Sprintf("the DNS server %s refused the TSIG key %s (%s): check the key name, algorithm and secret", c.Server, name, rcodeName(int(code)))}
	}
	return &Error{Kind: KeyRefused, Msg: fmt.Sprintf("the DNS server %s refused the TSIG key %s (TSIG error %s): check the key name, algorithm and secret", c.Server, name, rcodeName(int(code)))}
}
