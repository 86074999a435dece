package dnsupdate

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// The tests in this file run against a real BIND 9 (testutil.StartBIND): they need root
// and Debian's bind9 package.

const labZone = "lab.test."

func startLab(t *testing.T) *testutil.BIND {
	t.Helper()
	return testutil.StartBIND(t, testutil.BINDOptions{
		Zones: []string{labZone, "drill.test"}, // production records, and a drill's
		Records: map[string][]string{
			labZone: {
				"www 60 IN A 192.0.2.1",
				"site 120 IN CNAME www",
				`note 300 IN TXT "first words"`,
			},
			"drill.test": {"www 60 IN A 192.0.2.1"},
		},
	})
}

func labClient(b *testutil.BIND) *Client {
	return &Client{Server: b.Addr, Key: Key{Name: b.KeyName, Algorithm: b.Algorithm, Secret: b.Secret}, Timeout: 2 * time.Second}
}

// lookup reads a record set, failing the test on an error.
func lookup(t *testing.T, c *Client, name, typ string) RRSet {
	t.Helper()
	set, err := c.Lookup(t.Context(), name, typ)
	if err != nil {
		t.Fatalf("Lookup %s %s: %v", name, typ, err)
	}
	slices.Sort(set.Values)
	return set
}

func wantSet(t *testing.T, got RRSet, ttl uint32, values ...string) {
	t.Helper()
	if got.TTL != ttl || !slices.Equal(got.Values, values) {
		t.Fatalf("%s %s: TTL %d %q, want TTL %d %q", got.Name, got.Type, got.TTL, got.Values, ttl, values)
	}
}

func TestBINDLookupAndReplace(t *testing.T) {
	b := startLab(t)
	c := labClient(b)
	wantSet(t, lookup(t, c, "www.lab.test", "A"), 60, "192.0.2.1")
	wantSet(t, lookup(t, c, "site.lab.test.", "CNAME"), 120, "www.lab.test.")
	wantSet(t, lookup(t, c, "note.lab.test.", "TXT"), 300, `"first words"`)
	wantSet(t, lookup(t, c, "nothing.lab.test.", "A"), 0) // NXDOMAIN
	wantSet(t, lookup(t, c, "www.lab.test.", "AAAA"), 0)  // NODATA
	if err := c.Check(t.Context(), labZone); err != nil { // a dry run's check
		t.Fatalf("Check with the zone's key: %v", err)
	}

	// Failover: the record points at two recovered servers, with a short TTL.
	if err := c.Replace(t.Context(), labZone, RRSet{Name: "www.lab.test.", Type: "A", TTL: 30, Values: []string{"192.0.2.20", "192.0.2.21"}}); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	wantSet(t, lookup(t, c, "www.lab.test.", "A"), 30, "192.0.2.20", "192.0.2.21")
	for _, set := range []RRSet{
		{Name: "site.lab.test.", Type: "cname", TTL: 15, Values: []string{"dr"}}, // relative to the zone
		{Name: "note.lab.test.", Type: "TXT", TTL: 45, Values: []string{`"failed over" "at once"`}},
		{Name: "v6.lab.test.", Type: "AAAA", TTL: 10, Values: []string{"2001:db8::1"}}, // a new name
	} {
		if err := c.Replace(t.Context(), "lab.test", set); err != nil {
			t.Fatalf("Replace %s %s: %v", set.Name, set.Type, err)
		}
	}
	wantSet(t, lookup(t, c, "site.lab.test.", "CNAME"), 15, "dr.lab.test.")
	wantSet(t, lookup(t, c, "note.lab.test.", "TXT"), 45, `"failed over" "at once"`)
	wantSet(t, lookup(t, c, "v6.lab.test.", "AAAA"), 10, "2001:db8::1")

	// A drill changes its own zone only.
	if err := c.Replace(t.Context(), "drill.test.", RRSet{Name: "www.drill.test.", Type: "A", TTL: 5, Values: []string{"198.51.100.5"}}); err != nil {
		t.Fatalf("Replace in the drill zone: %v", err)
	}
	wantSet(t, lookup(t, c, "www.drill.test.", "A"), 5, "198.51.100.5")
	wantSet(t, lookup(t, c, "www.lab.test.", "A"), 30, "192.0.2.20", "192.0.2.21")

	// No values: the records go.
	if err := c.Replace(t.Context(), labZone, RRSet{Name: "v6.lab.test.", Type: "AAAA", TTL: 10}); err != nil {
		t.Fatalf("Replace with no values: %v", err)
	}
	wantSet(t, lookup(t, c, "v6.lab.test.", "AAAA"), 0)

	// The changes are in named's journal: they outlive a restart.
	b.Stop()
	b.Start()
	wantSet(t, lookup(t, c, "www.lab.test.", "A"), 30, "192.0.2.20", "192.0.2.21")
}

func TestBINDRefusesBadKeys(t *testing.T) {
	b := startLab(t)
	good := labClient(b)
	wrongSecret := labClient(b)
	wrongSecret.Key.Secret = "c2VjcmV0IHRoYXQgaXMgbm90IHRoZSB6b25lJ3Mga2V5IQ=="
	unknownKey := labClient(b)
	unknownKey.Key.Name = "nobody-knows-me"
	wrongAlg := labClient(b)
	wrongAlg.Key.Algorithm = "hmac-sha512"
	set := RRSet{Name: "www.lab.test.", Type: "A", TTL: 5, Values: []string{"203.0.113.66"}}
	for _, tc := range []struct {
		what string
		c    *Client
		key  string
	}{
		{"a wrong secret", wrongSecret, b.KeyName},
		{"an unknown key name", unknownKey, "nobody-knows-me"},
		{"a wrong algorithm", wrongAlg, b.KeyName},
	} {
		for op, run := range map[string]func() error{
			"Replace": func() error { return tc.c.Replace(t.Context(), labZone, set) },
			"Check":   func() error { return tc.c.Check(t.Context(), labZone) },
		} {
			err := run()
			t.Logf("%s with %s: %v", op, tc.what, err)
			name := strings.TrimSuffix(tc.key, ".")
			if KindOf(err) != KeyRefused || !strings.Contains(err.Error(), "refused the TSIG key "+name+" (") ||
				!strings.Contains(err.Error(), "check the key name, algorithm and secret") {
				t.Errorf("%s with %s: %v (kind %s), want the key %s refused", op, tc.what, err, KindOf(err), name)
			}
		}
	}
	wantSet(t, lookup(t, good, "www.lab.test.", "A"), 60, "192.0.2.1") // unchanged
	if err := good.Check(t.Context(), labZone); err != nil {
		t.Fatalf("Check with the right key: %v", err)
	}
}

func TestBINDZoneErrors(t *testing.T) {
	b := startLab(t)
	c := labClient(b)
	set := RRSet{Name: "www.elsewhere.test.", Type: "A", TTL: 5, Values: []string{"203.0.113.66"}}
	// A name outside the zone named: refused before anything is sent.
	err := c.Replace(t.Context(), labZone, set)
	if KindOf(err) != OutsideZone || !strings.Contains(err.Error(), "www.elsewhere.test. is not in zone lab.test.") {
		t.Errorf("Replace outside the zone: %v (kind %s)", err, KindOf(err))
	}
	// A zone the server does not serve: BIND answers the signed update NOTAUTH.
	err = c.Replace(t.Context(), "elsewhere.test.", set)
	if KindOf(err) != NotServed || !strings.Contains(err.Error(), "is not authoritative for zone elsewhere.test. (NOTAUTH)") {
		t.Errorf("Replace in a zone not served: %v (kind %s)", err, KindOf(err))
	}
	for zone, want := range map[string]string{
		"elsewhere.test.": "refused to answer for elsewhere.test. (REFUSED)",
		"www.lab.test.":   "www.lab.test. is not a zone on the DNS server " + b.Addr + ": it is a name in zone lab.test.",
		"none.lab.test.":  "says none.lab.test. does not exist (NXDOMAIN)",
	} {
		err := c.Check(t.Context(), zone)
		t.Logf("Check %s: %v", zone, err)
		if KindOf(err) != NotServed || !strings.Contains(err.Error(), want) {
			t.Errorf("Check %s: %v (kind %s), want %q", zone, err, KindOf(err), want)
		}
	}
	if _, err := c.Lookup(t.Context(), "www.elsewhere.test.", "A"); KindOf(err) != NotServed {
		t.Errorf("Lookup in a zone not served: %v (kind %s)", err, KindOf(err))
	}
}

func TestBINDDown(t *testing.T) {
	b := startLab(t)
	c := labClient(b)
	c.Timeout = time.Second
	set := RRSet{Name: "www.lab.test.", Type: "A", TTL: 5, Values: []string{"203.0.113.66"}}
	ops := map[string]func(ctx context.Context) error{
		"Lookup":  func(ctx context.Context) error { _, err := c.Lookup(ctx, "www.lab.test.", "A"); return err },
		"Replace": func(ctx context.Context) error { return c.Replace(ctx, labZone, set) },
		"Check":   func(ctx context.Context) error { return c.Check(ctx, labZone) },
	}
	// A hung server: connections and queries are taken, nothing answers.
	b.Pause()
	for op, run := range ops {
		start := time.Now()
		err := run(t.Context())
		took := time.Since(start)
		t.Logf("%s, named paused: %v (%s)", op, err, took.Round(time.Millisecond))
		if KindOf(err) != Unreachable || !strings.Contains(err.Error(), "the DNS server "+b.Addr+" did not answer within 1s") || took > 3*time.Second {
			t.Errorf("%s with named paused: %v (kind %s) after %s", op, err, KindOf(err), took)
		}
	}
	// ctx's deadline bounds it too, and a cancelled ctx stops it at once.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Replace(ctx, labZone, set); KindOf(err) != Unreachable || time.Since(start) > 2*time.Second {
		t.Errorf("Replace within a 300ms deadline: %v after %s", err, time.Since(start))
	}
	ctx, cancel = context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	start = time.Now()
	if err := c.Replace(ctx, labZone, set); !strings.Contains(err.Error(), "context canceled") || time.Since(start) > 900*time.Millisecond {
		t.Errorf("Replace cancelled after 200ms: %v after %s", err, time.Since(start))
	}
	b.Resume()

	// A stopped server: its address refuses at once.
	b.Stop()
	for op, run := range ops {
		start := time.Now()
		err := run(t.Context())
		t.Logf("%s, named stopped: %v", op, err)
		if KindOf(err) != Unreachable || !strings.Contains(err.Error(), "the DNS server "+b.Addr) || time.Since(start) > 3*time.Second {
			t.Errorf("%s with named stopped: %v (kind %s)", op, err, KindOf(err))
		}
	}
	b.Start()
	wantSet(t, lookup(t, c, "www.lab.test.", "A"), 60, "192.0.2.1") // nothing was changed
}
