package api

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

func TestIDs(t *testing.T) {
	for _, p := range []string{PrefixSourceServer, PrefixSnapshot, PrefixJob, PrefixRecoveryInstance, PrefixReplicator, PrefixAccount} {
		id := NewID(p)
		if !ValidID(p, id) || len(id) != len(p)+17 {
			t.Fatalf("NewID(%q) = %q is not valid", p, id)
		}
		if NewID(p) == id {
			t.Fatalf("NewID(%q) repeated itself", p)
		}
	}
	for _, bad := range []string{"s-0123456789abcdef", "s-0123456789abcdef01", "s-0123456789ABCDEF0", "x-0123456789abcdef0", ""} {
		if ValidID(PrefixSourceServer, bad) {
			t.Errorf("ValidID accepted %q", bad)
		}
	}
}

func TestOverridesApplyWithoutSharingTheTemplate(t *testing.T) {
	tmpl := DefaultReplicationSettings("file:///srv/staging")
	if err := tmpl.Validate(); err != nil {
		t.Fatal(err)
	}
	bw, site := 20, "dr"
	eff := tmpl.Apply(ReplicationSettingsOverrides{BandwidthMbps: &bw, TargetSite: &site})
	if eff.BandwidthMbps != 20 || eff.TargetSite != "dr" || eff.Compression != CompressionS2 {
		t.Fatalf("effective %+v", eff)
	}
	eff.PITPolicy.Rules[0].Interval = 5
	if tmpl.PITPolicy.Rules[0].Interval != 10 {
		t.Fatal("changing the effective settings changed the template's rules")
	}
}

func TestReadyForRecoveryIsDerived(t *testing.T) {
	now := time.Now()
	st := NewReplicationState(now)
	if st.Ready() {
		t.Fatal("a new server is ready")
	}
	cont, sync := StateContinuous, StateInitialSync
	cases := []struct {
		state string
		level consistency.Level
		want  bool
	}{
		{cont, consistency.Filesystem, true},
		{cont, consistency.Crash, true},
		{cont, consistency.None, false}, // a fuzzy point is never offered silently
		{sync, consistency.Filesystem, false},
		{StateStalled, consistency.Crash, true},
	}
	for _, c := range cases {
		s := st.Apply(ReplicationStateUpdate{DataReplicationState: &c.state,
			LastConsistencyPoint: &ConsistencyPointInfo{Time: now, Level: c.level}}, now)
		if s.ReadyForRecovery != c.want {
			t.Errorf("%s with a %s point: ready=%v, want %v", c.state, c.level, s.ReadyForRecovery, c.want)
		}
	}
	// An older consistency point never replaces a newer one.
	s := st.Apply(ReplicationStateUpdate{LastConsistencyPoint: &ConsistencyPointInfo{Time: now, Level: consistency.Crash}}, now)
	s = s.Apply(ReplicationStateUpdate{LastConsistencyPoint: &ConsistencyPointInfo{Time: now.Add(-time.Minute), Level: consistency.None}}, now)
	if s.LastConsistencyPoint.Level != consistency.Crash {
		t.Fatal("an older point replaced a newer one")
	}
}

func TestReadEvents(t *testing.T) {
	stream := "retry: 2000\n\n: keep-alive\n\nid: 1\nevent: site.create\ndata: {\"seq\":1,\"type\":\"site.create\",\"targetId\":\"dr\"}\n\n" +
		"event: reset\ndata: {\"reason\":\"x\"}\n\n"
	var got []Event
	if err := ReadEvents(strings.NewReader(stream), func(e Event) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Seq != 1 || got[0].TargetID != "dr" || got[1].Type != "reset" {
		t.Fatalf("events %+v", got)
	}
	stop := errors.New("stop")
	if err := ReadEvents(strings.NewReader(stream), func(Event) error { return stop }); err != stop {
		t.Fatalf("the callback's error was not returned: %v", err)
	}
	if err := ReadEvents(strings.NewReader("data: {nope\n\n"), func(Event) error { return nil }); err == nil {
		t.Fatal("a broken event was accepted")
	}
}

func FuzzReadEvents(f *testing.F) {
	f.Add("id: 1\nevent: x\ndata: {\"seq\":1}\n\n")
	f.Add("event: reset\ndata: {}\n\n")
	f.Add("data: a\ndata: b\n\n")
	f.Fuzz(func(t *testing.T, s string) {
		n := 0
		_ = ReadEvents(strings.NewReader(s), func(Event) error { n++; return nil })
		if n > strings.Count(s, "\n") {
			t.Fatalf("%d events from %d lines", n, strings.Count(s, "\n"))
		}
	})
}

func TestAccountRequestsWithStores(t *testing.T) {
	creds := &S3Credentials{AccessKey: "a", SecretKey: "s"}
	url := "s3://bucket/p?endpoint=127.0.0.1:9000"
	def, quota := DefaultStagingStore, 5
	for name, err := range map[string]error{
		"credentials without a store": UpdateAccountRequest{QuotaSourceServers: &quota, StagingStoreCredentials: creds}.Validate(),
		"an empty secret":             CreateAccountRequest{Name: "x", StagingStoreURL: url, StagingStoreCredentials: &S3Credentials{AccessKey: "a"}}.Validate(),
		"a store that is no URL":      CreateAccountRequest{Name: "x", StagingStoreURL: "http://x"}.Validate(),
		"nothing to change":           UpdateAccountRequest{}.Validate(),
	} {
		if err == nil {
			t.Errorf("%s was accepted", name)
		}
	}
	for name, err := range map[string]error{
		"a store with credentials": CreateAccountRequest{Name: "x", StagingStoreURL: url, StagingStoreCredentials: creds}.Validate(),
		"the default store":        UpdateAccountRequest{StagingStoreURL: &def}.Validate(),
	} {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPlural(t *testing.T) {
	for n, want := range map[int]string{0: "servers", 1: "server", 2: "servers"} {
		if got := Plural("server", n); got != want {
			t.Errorf("Plural(server, %d) = %q, want %q", n, got, want)
		}
	}
}
