package dnsupdate

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The tests in this file run against an in-process server of the dns package on
// 127.0.0.1, which answers as each test says: for the answers BIND does not give
// easily (policy refusals, unsigned or badly signed answers, truncation).

const (
	testKey    = "plan-key."
	testSecret = "cGxhbiBrZXkgb2YgdGhlIGluLXByb2Nlc3Mgc2VydmVyIQ=="
)

// startFake serves h on UDP and TCP on one port of 127.0.0.1, verifying TSIG with
// secret (nil: no TSIG), and returns the address.
func startFake(t *testing.T, secret string, h dns.HandlerFunc) string {
	t.Helper()
	var secrets map[string]string
	if secret != "" {
		secrets = map[string]string{testKey: secret}
	}
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil { // the port is taken for TCP: another one
			pc.Close()
			if try < 10 {
				continue
			}
			t.Fatal(err)
		}
		for _, srv := range []*dns.Server{{PacketConn: pc}, {Listener: l}} {
			started := make(chan struct{})
			srv.Handler, srv.TsigSecret, srv.NotifyStartedFunc = h, secrets, func() { close(started) }
			// The default refuses UPDATE (NOTIMP).
			srv.MsgAcceptFunc = func(dns.Header) dns.MsgAcceptAction { return dns.MsgAccept }
			go func() { _ = srv.ActivateAndServe() }()
			<-started
			t.Cleanup(func() { _ = srv.Shutdown() })
		}
		return pc.LocalAddr().String()
	}
}

func fakeClient(addr string) *Client {
	return &Client{Server: addr, Key: Key{Name: strings.TrimSuffix(testKey, "."), Secret: testSecret}, Timeout: 2 * time.Second}
}

// answer writes r's reply with rcode, signed with the request's key unless unsigned,
// with TSIG error tsigErr.
func answer(w dns.ResponseWriter, r *dns.Msg, rcode int, unsigned bool, tsigErr uint16) {
	m := new(dns.Msg)
	m.SetRcode(r, rcode)
	if t := r.IsTsig(); t != nil && !unsigned {
		m.SetTsig(t.Hdr.Name, t.Algorithm, 300, time.Now().Unix())
		m.Extra[len(m.Extra)-1].(*dns.TSIG).Error = tsigErr
	}
	_ = w.WriteMsg(m)
}

func TestReplaceSendsOneSignedUpdate(t *testing.T) {
	var mu sync.Mutex
	var got *dns.Msg
	var network string
	var tsigStatus error
	addr := startFake(t, testSecret, func(w dns.ResponseWriter, r *dns.Msg) {
		mu.Lock()
		got, network, tsigStatus = r.Copy(), w.RemoteAddr().Network(), w.TsigStatus()
		mu.Unlock()
		answer(w, r, dns.RcodeSuccess, false, 0)
	})
	set := RRSet{Name: "WWW.Example.test", Type: "a", TTL: 42, Values: []string{"192.0.2.7", "192.0.2.8"}}
	if err := fakeClient(addr).Replace(t.Context(), "example.test", set); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got.Opcode != dns.OpcodeUpdate || network != "tcp" || tsigStatus != nil || got.IsTsig() == nil {
		t.Fatalf("request: opcode %d over %s, TSIG %v (%v)", got.Opcode, network, got.IsTsig(), tsigStatus)
	}
	if len(got.Question) != 1 || got.Question[0].Name != "example.test." || got.Question[0].Qtype != dns.TypeSOA {
		t.Fatalf("zone section: %v", got.Question)
	}
	want := []string{
		"www.example.test.\t0\tCLASS255\tA\t", // delete the RRset (class ANY)
		"www.example.test.\t42\tIN\tA\t192.0.2.7",
		"www.example.test.\t42\tIN\tA\t192.0.2.8",
	}
	if len(got.Answer) != 0 || len(got.Ns) != len(want) {
		t.Fatalf("prerequisites %v, updates %v", got.Answer, got.Ns)
	}
	for i, rr := range got.Ns {
		if rr.String() != want[i] {
			t.Errorf("update %d: %q, want %q", i, rr.String(), want[i])
		}
	}
}

func TestReplaceJudgesTheAnswer(t *testing.T) {
	for _, tc := range []struct {
		what     string
		secret   string // the server's secret for the key
		rcode    int
		unsigned bool
		tsigErr  uint16
		kind     Kind
		want     string
	}{
		{"applied", testSecret, dns.RcodeSuccess, false, 0, 0, ""},
		{"policy", testSecret, dns.RcodeRefused, false, 0, Refused, "refused the update of www.example.test. A in zone example.test. (REFUSED): the key plan-key is not allowed"},
		{"outside the zone", testSecret, dns.RcodeNotZone, false, 0, OutsideZone, "a name is outside zone example.test. (NOTZONE)"},
		{"not served", testSecret, dns.RcodeNotAuth, false, 0, NotServed, "is not authoritative for zone example.test. (NOTAUTH)"},
		{"bad time", testSecret, dns.RcodeNotAuth, false, dns.RcodeBadTime, KeyRefused, "(BADTIME): the clocks of this machine and the server differ"},
		{"bad key", testSecret, dns.RcodeNotAuth, true, dns.RcodeBadKey, KeyRefused, "refused the TSIG key plan-key (BADKEY): check the key name, algorithm and secret"},
		{"server failure", testSecret, dns.RcodeServerFailure, false, 0, Failed, "failed to apply the update of www.example.test. A in zone example.test. (SERVFAIL)"},
		{"prerequisite", testSecret, dns.RcodeYXDomain, false, 0, Failed, "it answered YXDOMAIN"},
		{"unsigned success", testSecret, dns.RcodeSuccess, true, 0, Failed, "without a TSIG signature: whether it was applied cannot be trusted"},
		{"success signed with another secret", "b3RoZXIgc2VjcmV0", dns.RcodeSuccess, false, 0, Failed, "did not verify with the key plan-key: whether"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			addr := startFake(t, tc.secret, func(w dns.ResponseWriter, r *dns.Msg) {
				if tc.unsigned {
					// An unsigned error answer copies the request's TSIG, without a MAC.
					m := new(dns.Msg)
					m.SetRcode(r, tc.rcode)
					if tc.tsigErr != 0 {
						ts := *r.IsTsig()
						ts.MAC, ts.MACSize, ts.Error = "", 0, tc.tsigErr
						m.Extra = append(m.Extra, &ts)
					}
					buf, _ := m.Pack()
					_, _ = w.Write(buf)
					return
				}
				answer(w, r, tc.rcode, false, tc.tsigErr)
			})
			err := fakeClient(addr).Replace(t.Context(), "example.test.", RRSet{Name: "www.example.test.", Type: "A", TTL: 5, Values: []string{"192.0.2.1"}})
			if tc.kind == 0 {
				if err != nil {
					t.Fatalf("Replace: %v", err)
				}
				return
			}
			if KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Replace: %v (kind %s), want kind %s and %q", err, KindOf(err), tc.kind, tc.want)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	addr := startFake(t, "", func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		switch q.Name {
		case "big.example.test.": // too big for UDP: truncated there, whole over TCP
			if w.RemoteAddr().Network() == "udp" {
				m.Truncated = true
				break
			}
			for i := range 3 {
				rr, _ := dns.NewRR("big.example.test. " + []string{"70", "50", "60"}[i] + " IN A 192.0.2." + string(rune('1'+i)))
				m.Answer = append(m.Answer, rr)
			}
		case "alias.example.test.": // the CNAME and its target: only the name's own records count
			a, _ := dns.NewRR("alias.example.test. 30 IN CNAME www.example.test.")
			b, _ := dns.NewRR("www.example.test. 30 IN A 192.0.2.9")
			m.Answer = append(m.Answer, a, b)
		case "cached.example.test.":
			m.Authoritative = false
		case "broken.example.test.":
			m.Rcode = dns.RcodeServerFailure
		}
		_ = w.WriteMsg(m)
	})
	c := fakeClient(addr)
	set, err := c.Lookup(t.Context(), "big.example.test.", "A")
	if err != nil || set.TTL != 50 || strings.Join(set.Values, " ") != "192.0.2.1 192.0.2.2 192.0.2.3" {
		t.Fatalf("Lookup over TCP after truncation: %+v, %v", set, err)
	}
	if set, err := c.Lookup(t.Context(), "alias.example.test.", "A"); err != nil || len(set.Values) != 0 {
		t.Fatalf("Lookup A of a CNAME: %+v, %v", set, err)
	}
	if set, err := c.Lookup(t.Context(), "alias.example.test.", "CNAME"); err != nil || set.TTL != 30 || set.Values[0] != "www.example.test." {
		t.Fatalf("Lookup CNAME: %+v, %v", set, err)
	}
	if _, err := c.Lookup(t.Context(), "cached.example.test.", "A"); KindOf(err) != NotServed || !strings.Contains(err.Error(), "is not authoritative for cached.example.test.") {
		t.Fatalf("Lookup, answer without authority: %v", err)
	}
	if _, err := c.Lookup(t.Context(), "broken.example.test.", "A"); KindOf(err) != Failed || !strings.Contains(err.Error(), "answered SERVFAIL to the query for broken.example.test. A") {
		t.Fatalf("Lookup, SERVFAIL: %v", err)
	}
}

func TestInvalidRequestsSendNothing(t *testing.T) {
	good := RRSet{Name: "www.example.test.", Type: "A", TTL: 60, Values: []string{"192.0.2.1"}}
	withKey := func(k Key) *Client { return &Client{Server: "127.0.0.1:9", Key: k} }
	key := Key{Name: "k", Secret: testSecret}
	for _, tc := range []struct {
		what string
		c    *Client
		zone string
		set  RRSet
		kind Kind
		want string
	}{
		{"no key name", withKey(Key{Secret: testSecret}), "example.test.", good, Invalid, "no TSIG key name"},
		{"secret not base64", withKey(Key{Name: "k", Secret: "not base64!"}), "example.test.", good, Invalid, "is not base64"},
		{"unknown algorithm", withKey(Key{Name: "k", Algorithm: "hmac-md5", Secret: testSecret}), "example.test.", good, Invalid, `algorithm "hmac-md5"`},
		{"no zone", withKey(key), "", good, Invalid, "no zone is given"},
		{"unsupported type", withKey(key), "example.test.", RRSet{Name: "www.example.test.", Type: "MX", Values: []string{"10 mail"}}, Invalid, `record type "MX" is not supported`},
		{"a second record smuggled in", withKey(key), "example.test.", RRSet{Name: "www.example.test.", Type: "A", Values: []string{"192.0.2.1\nevil 60 IN A 203.0.113.1"}}, Invalid, "control characters"},
		{"two CNAMEs", withKey(key), "example.test.", RRSet{Name: "www.example.test.", Type: "CNAME", Values: []string{"a.", "b."}}, Invalid, "only one CNAME"},
		{"bad address", withKey(key), "example.test.", RRSet{Name: "www.example.test.", Type: "A", Values: []string{"300.1.2.3"}}, Invalid, `"300.1.2.3" is not a valid A record`},
		{"an IPv6 address for A", withKey(key), "example.test.", RRSet{Name: "www.example.test.", Type: "A", Values: []string{"2001:db8::1"}}, Invalid, "is not a valid A record"},
		{"huge TTL", withKey(key), "example.test.", RRSet{Name: "www.example.test.", Type: "A", TTL: 1 << 31, Values: []string{"192.0.2.1"}}, Invalid, "TTL 2147483648"},
		{"bad name", withKey(key), "example.test.", RRSet{Name: "www..example.test.", Type: "A"}, Invalid, "not a valid domain name"},
		{"outside the zone", withKey(key), "example.test.", RRSet{Name: "www.example.org.", Type: "A"}, OutsideZone, "www.example.org. is not in zone example.test."},
	} {
		err := tc.c.Replace(t.Context(), tc.zone, tc.set)
		if KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v (kind %s), want kind %s and %q", tc.what, err, KindOf(err), tc.kind, tc.want)
		}
	}
	if _, err := withKey(key).Lookup(t.Context(), "www.example.test.", "SOA"); KindOf(err) != Invalid {
		t.Errorf("Lookup of an unsupported type: %v", err)
	}
}

func TestValuesInPresentationForm(t *testing.T) {
	for _, tc := range []struct{ typ, in, out string }{
		{"A", "192.0.2.1", "192.0.2.1"},
		{"AAAA", "2001:DB8:0::1", "2001:db8::1"},
		{"CNAME", "web", "web.example.test."},
		{"CNAME", "web.example.org.", "web.example.org."},
		{"TXT", `"v=spf1 -all"`, `"v=spf1 -all"`},
		{"TXT", `"two" "strings; with a semicolon"`, `"two" "strings; with a semicolon"`},
		{"TXT", "bare", `"bare"`},
	} {
		set := RRSet{Name: "x.example.test.", Type: tc.typ, TTL: 1, Values: []string{tc.in}}
		rrs, err := records("example.test.", set, typeCode(tc.typ))
		if err != nil || len(rrs) != 1 || value(rrs[0]) != tc.out {
			t.Errorf("%s %q: %v %v, want %q", tc.typ, tc.in, rrs, err, tc.out)
		}
	}
}

// TestUnansweredIsBounded: a server that takes the query and never answers.
func TestUnansweredIsBounded(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0") // the kernel completes connections; nobody reads
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := fakeClient(l.Addr().String())
	c.Timeout = 10 * time.Second
	set := RRSet{Name: "www.example.test.", Type: "A", TTL: 5, Values: []string{"192.0.2.1"}}

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Replace(ctx, "example.test.", set)
	if KindOf(err) != Unreachable || !strings.Contains(err.Error(), "did not answer within") || time.Since(start) > 2*time.Second {
		t.Fatalf("Replace with a 300ms deadline: %v after %s", err, time.Since(start))
	}

	ctx, cancel = context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start = time.Now()
	err = c.Replace(ctx, "example.test.", set)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Fatalf("Replace cancelled after 100ms: %v after %s", err, time.Since(start))
	}

	c.Timeout = 200 * time.Millisecond
	start = time.Now()
	err = c.Replace(t.Context(), "example.test.", set)
	if KindOf(err) != Unreachable || !strings.Contains(err.Error(), "the DNS server "+c.Server+" did not answer within 200ms") || time.Since(start) > 2*time.Second {
		t.Fatalf("Replace with a 200ms timeout: %v after %s", err, time.Since(start))
	}
}
