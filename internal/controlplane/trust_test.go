package controlplane_test

import (
	"slices"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestReplicatorLearnsOfAReplacedAgentAtOnce: a replicator waiting on its list of
// assigned servers is woken by the re-registration of one of its agents and reads the
// new certificate serial only; asked about one server, it gets the current answer, and
// nothing about a server that is not its own.
func TestReplicatorLearnsOfAReplacedAgentAtOnce(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		rep, r := e.replicator("r1", "default")
		_, a := e.agent("machine-a")
		list, err := rep.AssignedSourceServersWait(e.ctx, r.Replicator.ID, "", 0)
		if err != nil || len(list.Items) != 1 || list.Items[0].SourceServer.ID != a.SourceServer.ID {
			t.Fatalf("assigned list %+v, %v", list.Items, err)
		}
		oldSerials := list.Items[0].CertificateSerials
		// Unchanged, a wait ends at its deadline with the same list.
		same, err := rep.AssignedSourceServersWait(e.ctx, r.Replicator.ID, list.Fingerprint(), time.Second)
		if err != nil || same.Fingerprint() != list.Fingerprint() {
			t.Fatalf("an unchanged list changed: %v", err)
		}
		type result struct {
			list api.AssignedSourceServerList
			took time.Duration
			err  error
		}
		done := make(chan result, 1)
		go func() {
			start := time.Now()
			l, err := rep.AssignedSourceServersWait(e.ctx, r.Replicator.ID, list.Fingerprint(), api.MaxConfigWait)
			done <- result{l, time.Since(start), err}
		}()
		time.Sleep(200 * time.Millisecond) // let the wait start (a change before it only makes it return sooner)
		replaced, err := e.register(e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin}), "machine-a", true)
		if err != nil {
			t.Fatal(err)
		}
		res := <-done
		if res.err != nil || len(res.list.Items) != 1 {
			t.Fatalf("woken list %+v, %v", res.list.Items, res.err)
		}
		if res.took >= api.MaxConfigWait-time.Second {
			t.Fatalf("the wait was not woken by the replacement (took %s)", res.took)
		}
		serials := res.list.Items[0].CertificateSerials
		if len(serials) != 1 || slices.Contains(oldSerials, serials[0]) {
			t.Fatalf("after the replacement the replicator accepts %v (old %v)", serials, oldSerials)
		}
		one, ok, err := rep.AssignedSourceServer(e.ctx, r.Replicator.ID, replaced.SourceServer.ID)
		if err != nil || !ok || !slices.Equal(one.CertificateSerials, serials) {
			t.Fatalf("one server: %+v, %v, %v", one, ok, err)
		}
		// A server of another replicator is not its business.
		if _, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "dr"}); err != nil {
			t.Fatal(err)
		}
		e.replicator("r2", "dr")
		_, b := e.agent("machine-b")
		dr := "dr"
		if _, err := e.admin.SetServerReplicationSettings(e.ctx, b.SourceServer.ID, api.ReplicationSettingsOverrides{TargetSite: &dr}); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := rep.AssignedSourceServer(e.ctx, r.Replicator.ID, b.SourceServer.ID); err != nil || ok {
			t.Fatalf("another replicator's server: ok=%v, %v", ok, err)
		}
	})
}
