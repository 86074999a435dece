package dnsupdate

import (
	"encoding/base64"
	"fmt"
	"math"
	"strings"

	"github.com/miekg/dns"
)

// typeCode is the code of a record type a plan changes, 0 for any other type.
func typeCode(typ string) uint16 {
	switch typ {
	case "A":
		return dns.TypeA
	case "AAAA":
		return dns.TypeAAAA
	case "CNAME":
		return dns.TypeCNAME
	case "TXT":
		return dns.TypeTXT
	}
	return 0
}

// algorithmName is the domain name of an HMAC algorithm named as BIND's tsig-keygen
// names it, "" for an unknown one.
func algorithmName(alg string) string {
	switch alg {
	case "hmac-sha1":
		return dns.HmacSHA1
	case "hmac-sha224":
		return dns.HmacSHA224
	case "hmac-sha256":
		return dns.HmacSHA256
	case "hmac-sha384":
		return dns.HmacSHA384
	case "hmac-sha512":
		return dns.HmacSHA512
	}
	return ""
}

// tsigKey is a Key checked and in the form the dns package wants.
type tsigKey struct {
	name, algorithm, secret string
}

// String is the key's name as its owner writes it, for messages.
func (k tsigKey) String() string { return strings.TrimSuffix(k.name, ".") }

// key checks c.Key: a name, a known algorithm (default hmac-sha256) and a base64 secret.
func (c *Client) key() (tsigKey, error) {
	k := c.Key
	name := strings.ToLower(strings.TrimSpace(k.Name))
	if name == "" {
		return tsigKey{}, invalid("no TSIG key name is set (BIND's key \"NAME\" { ... })")
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return tsigKey{}, invalid(fmt.Sprintf("the TSIG key name %q is not a valid name", k.Name))
	}
	alg := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(k.Algorithm)), ".")
	if alg == "" {
		alg = "hmac-sha256"
	}
	algName := algorithmName(alg)
	if algName == "" {
		return tsigKey{}, invalid(fmt.Sprintf("the TSIG key %s has algorithm %q; use one of hmac-sha256, hmac-sha512, hmac-sha384, hmac-sha224, hmac-sha1", k.Name, k.Algorithm))
	}
	secret := strings.TrimSpace(k.Secret)
	if raw, err := base64.StdEncoding.DecodeString(secret); err != nil || len(raw) == 0 {
		return tsigKey{}, invalid(fmt.Sprintf("the secret of TSIG key %s is not base64 (as tsig-keygen prints it)", k.Name))
	}
	return tsigKey{name: dns.Fqdn(name), algorithm: algName, secret: secret}, nil
}

// fqdn checks a domain name and returns it fully qualified and in lower case.
func fqdn(what, name string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" || n == "." {
		return "", invalid(fmt.Sprintf("no %s is given", what))
	}
	if strings.ContainsFunc(n, isControl) {
		return "", invalid(fmt.Sprintf("the %s %q has control characters", what, name))
	}
	if _, ok := dns.IsDomainName(n); !ok {
		return "", invalid(fmt.Sprintf("the %s %q is not a valid domain name", what, name))
	}
	return dns.Fqdn(n), nil
}

// recordType checks a record type and returns its name in upper case and its code.
func recordType(typ string) (string, uint16, error) {
	t := strings.ToUpper(strings.TrimSpace(typ))
	code := typeCode(t)
	if code == 0 {
		return "", 0, invalid(fmt.Sprintf("record type %q is not supported (A, AAAA, CNAME or TXT)", typ))
	}
	return t, code, nil
}

// records turns set's values into records of zone, each parsed as a zone file would
// (relative names are relative to the zone).
func records(zone string, set RRSet, code uint16) ([]dns.RR, error) {
	if set.TTL > math.MaxInt32 {
		return nil, invalid(fmt.Sprintf("TTL %d of %s %s is above the largest a DNS TTL can be (%d)", set.TTL, set.Name, set.Type, math.MaxInt32))
	}
	if code == dns.TypeCNAME && len(set.Values) > 1 {
		return nil, invalid(fmt.Sprintf("%s can have only one CNAME, not %d", set.Name, len(set.Values)))
	}
	var rrs []dns.RR
	for _, v := range set.Values {
		if strings.ContainsFunc(v, isControl) || strings.TrimSpace(v) == "" {
			return nil, invalid(fmt.Sprintf("value %q of %s %s is empty or has control characters", v, set.Name, set.Type))
		}
		line := fmt.Sprintf("%s %d IN %s %s\n", set.Name, set.TTL, set.Type, v)
		zp := dns.NewZoneParser(strings.NewReader(line), zone, "")
		rr, ok := zp.Next()
		if err := zp.Err(); err != nil || !ok {
			return nil, invalid(fmt.Sprintf("value %q is not a valid %s record: %v", v, set.Type, err))
		}
		if _, more := zp.Next(); more || rr.Header().Rrtype != code {
			return nil, invalid(fmt.Sprintf("value %q is not one %s record", v, set.Type))
		}
		rrs = append(rrs, rr)
	}
	return rrs, nil
}

// value is a record's data in presentation form, without its name, TTL, class and type.
func value(rr dns.RR) string {
	return strings.TrimPrefix(rr.String(), rr.Header().String())
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
