package controlplane_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/store"
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

// TestReadersRefuseAManifestOtherThanTheRecordedOne: the control plane records each
// PIT's manifest digest when it is sealed; a manifest rewritten under the PIT's name
// afterwards (by someone holding the key, or a put-back older one) is refused by
// export and by recovery, and the record gives the replicator the floor of its heads.
func TestReadersRefuseAManifestOtherThanTheRecordedOne(t *testing.T) {
	e := startWith(t, db.SQLite, nil)
	repo := recoverytest.Store(t, e.cp)
	img := image(t, 4<<20, 5)
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 4 << 20})
	pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	op := e.userClient(api.RoleOperator)
	body, err := op.ExportVolume(e.ctx, pit.ID, "vda")
	if err != nil {
		t.Fatal(err)
	}
	readExport(t, body)

	// What a replicator opening a session of the server is told: the head versions of
	// its newest PIT, in its repository.
	rep, r := e.replicator("r1", "default")
	assigned, ok, err := rep.AssignedSourceServer(e.ctx, r.Replicator.ID, srv.ID)
	if err != nil || !ok || assigned.HeadVersionsStoreID != repo.ID() || assigned.HeadVersions["vda"] != pit.Volumes[0].HeadVersion ||
		pit.Volumes[0].HeadVersion == 0 {
		t.Fatalf("the floor of the heads: %+v (%v, %v), want version %d in %s", assigned, ok, err, pit.Volumes[0].HeadVersion, repo.ID())
	}

	// The same PIT id sealed again over other content: the manifest under its name
	// changes, the record does not.
	h, err := repo.OpenHead(e.ctx, srv.ID, "vda", 4<<20, store.HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WriteBlocks(e.ctx, []store.Block{{Index: 0, Data: bytes.Repeat([]byte{9}, repo.BlockSize())}}); err != nil {
		t.Fatal(err)
	}
	forged, err := repo.SealPIT(e.ctx, store.SealRequest{ID: pit.ID, Server: srv.ID, Time: pit.Time, Level: pit.Level, Heads: []*store.Head{h}})
	h.Close()
	if err != nil || forged.Digest == pit.Digest {
		t.Fatalf("rewrite the manifest: %v", err)
	}
	_, err = op.ExportVolume(e.ctx, pit.ID, "vda")
	if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "not the one recorded") {
		t.Fatalf("export of a rewritten manifest: %v", err)
	}
	imageSettings(t, e, srv.ID)
	_, err = op.StartRecovery(e.ctx, api.StartRecoveryRequest{IsDrill: true, SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID, RecoverySnapshotID: pit.ID}}})
	if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "not the one recorded") {
		t.Fatalf("a drill from a rewritten manifest: %v", err)
	}
}
