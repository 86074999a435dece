// Package dnsupdate changes DNS records for recovery plans: it reads a record set from
// a zone's authoritative server and replaces it with one RFC 2136 dynamic update signed
// with a TSIG key (RFC 8945), as BIND, Knot, PowerDNS and CoreDNS accept, and it checks
// for dry runs that the server serves the zone and accepts the key, changing nothing.
//
// Every error is of type *Error, in an operator's words, with a Kind that tells a
// server that is down from a refused key, a refusing policy or a zone not served.
package dnsupdate

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Key is a TSIG key as BIND's tsig-keygen prints it.
type Key struct {
	Name      string // the key's name, e.g. "lifeboat-key"
	Algorithm string // "hmac-sha256" (the default when empty), "hmac-sha512", ...
	Secret    string // base64
}

// RRSet is the records of one name and type.
type RRSet struct {
	Name   string   // fully qualified, e.g. "www.example.com."
	Type   string   // A, AAAA, CNAME or TXT
	TTL    uint32   // seconds
	Values []string // each record's data in presentation form: "192.0.2.10", "web.example.com.", "\"v=1\""
}

// Client talks to one DNS server, the primary of the zones it changes.
type Client struct {
	Server  string        // host:port, e.g. "10.1.2.3:53"
	Key     Key           // signs updates
	Timeout time.Duration // bounds each exchange with the server; 0: 5s
}

// Lookup reads name's records of type typ from the server itself (no recursion, no
// resolver in between). A name or type without records (NXDOMAIN, NODATA) gives a set
// with no Values; TTL is the set's. Queries are unsigned, over UDP, and over TCP when
// the answer does not fit.
func (c *Client) Lookup(ctx context.Context, name, typ string) (RRSet, error) {
	fq, err := fqdn("record name", name)
	if err != nil {
		return RRSet{}, err
	}
	t, code, err := recordType(typ)
	if err != nil {
		return RRSet{}, err
	}
	r, err := c.query(ctx, fq, code)
	if err != nil {
		return RRSet{}, err
	}
	if err := c.queryError(r, fq, t); err != nil {
		return RRSet{}, err
	}
	set := RRSet{Name: fq, Type: t}
	for _, rr := range r.Answer {
		h := rr.Header()
		if h.Rrtype != code || !strings.EqualFold(h.Name, fq) {
			continue
		}
		if len(set.Values) == 0 || h.Ttl < set.TTL {
			set.TTL = h.Ttl
		}
		set.Values = append(set.Values, value(rr))
	}
	return set, nil
}

// Replace makes set the records of its name and type in zone, in one signed dynamic
// update that deletes the name's records of that type and adds set's, with set.TTL
// (no Values: the records are deleted). It succeeds only on an answer signed with the
// key that says NOERROR. Updates go over TCP.
func (c *Client) Replace(ctx context.Context, zone string, set RRSet) error {
	key, err := c.key()
	if err != nil {
		return err
	}
	z, err := fqdn("zone", zone)
	if err != nil {
		return err
	}
	name, err := fqdn("record name", set.Name)
	if err != nil {
		return err
	}
	t, code, err := recordType(set.Type)
	if err != nil {
		return err
	}
	if !dns.IsSubDomain(z, name) {
		return &Error{Kind: OutsideZone, Msg: fmt.Sprintf("%s is not in zone %s: a record can only be changed in the zone that holds it", name, z)}
	}
	set.Name, set.Type = name, t
	rrs, err := records(z, set, code)
	if err != nil {
		return err
	}
	m := new(dns.Msg)
	m.SetUpdate(z)
	m.RemoveRRset([]dns.RR{&dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: code, Class: dns.ClassANY}}})
	if len(rrs) > 0 {
		m.Insert(rrs)
	}
	r, err := c.exchange(ctx, m, "tcp", &key)
	if err != nil {
		return err
	}
	return c.updateError(r, key, z, fmt.Sprintf("the update of %s %s in zone %s", name, t, z))
}

// Check proves, changing nothing, that the server serves zone authoritatively (its
// SOA) and accepts the key: it sends a signed update whose only content is a
// prerequisite that holds (the zone's apex exists). It cannot tell whether the zone's
// policy lets the key change a given name: only Replace finds out.
func (c *Client) Check(ctx context.Context, zone string) error {
	key, err := c.key()
	if err != nil {
		return err
	}
	z, err := fqdn("zone", zone)
	if err != nil {
		return err
	}
	if err := c.checkSOA(ctx, z); err != nil {
		return err
	}
	m := new(dns.Msg)
	m.SetUpdate(z)
	m.NameUsed([]dns.RR{&dns.ANY{Hdr: dns.RR_Header{Name: z}}})
	r, err := c.exchange(ctx, m, "tcp", &key)
	if err != nil {
		return err
	}
	return c.updateError(r, key, z, fmt.Sprintf("a test update of zone %s (one that changes nothing)", z))
}

// checkSOA checks that the server answers zone's SOA with authority.
func (c *Client) checkSOA(ctx context.Context, zone string) error {
	r, err := c.query(ctx, zone, dns.TypeSOA)
	if err != nil {
		return err
	}
	if err := c.queryError(r, zone, "SOA"); err != nil {
		return err
	}
	for _, rr := range r.Answer {
		if soa, ok := rr.(*dns.SOA); ok && strings.EqualFold(soa.Hdr.Name, zone) {
			return nil
		}
	}
	if r.Rcode == dns.RcodeNameError {
		return &Error{Kind: NotServed, Msg: fmt.Sprintf("the DNS server %s says %s does not exist (NXDOMAIN): check the zone name", c.Server, zone)}
	}
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return &Error{Kind: NotServed, Msg: fmt.Sprintf("%s is not a zone on the DNS server %s: it is a name in zone %s", zone, c.Server, soa.Hdr.Name)}
		}
	}
	return &Error{Kind: NotServed, Msg: fmt.Sprintf("the DNS server %s has no SOA record for %s: it does not serve that zone", c.Server, zone)}
}

// query asks the server for name's records of type code, unsigned, without recursion.
func (c *Client) query(ctx context.Context, name string, code uint16) (reply, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, code)
	m.RecursionDesired = false
	m.SetEdns0(1232, false)
	r, err := c.exchange(ctx, m, "udp", nil)
	if err == nil && r.Truncated {
		r, err = c.exchange(ctx, m, "tcp", nil)
	}
	return r, err
}

// queryError judges the answer to a query: nil for an authoritative answer, with
// records or without (NXDOMAIN or NODATA).
func (c *Client) queryError(r reply, name, typ string) error {
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		if !r.Authoritative {
			return &Error{Kind: NotServed, Msg: fmt.Sprintf("the DNS server %s is not authoritative for %s: it answered without authority (a referral, or from a cache); give the zone's primary server", c.Server, name)}
		}
		return nil
	case dns.RcodeRefused:
		return &Error{Kind: NotServed, Msg: fmt.Sprintf("the DNS server %s refused to answer for %s (REFUSED): it serves no zone holding that name, or does not answer this machine", c.Server, name)}
	}
	return &Error{Kind: Failed, Msg: fmt.Sprintf("the DNS server %s answered %s to the query for %s %s", c.Server, rcodeName(r.Rcode), name, typ)}
}
