package controlplane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

func ptr[T any](v T) *T { return &v }

func TestInstallTokenExpiryUsesAndRevocation(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		twice := e.installToken(api.ScopeSourceServer, 2)
		for i := range 2 {
			if _, err := e.register(twice, fmt.Sprintf("m%d", i), false); err != nil {
				t.Fatalf("use %d of 2: %v", i+1, err)
			}
		}
		_, err := e.register(twice, "m2", false)
		ae := wantAPIError(t, err, 401, api.CodeTokenUsedUp)
		if !strings.Contains(ae.Message, "used 2 times") {
			t.Errorf("message %q does not say how often it was used", ae.Message)
		}

		hour := e.installToken(api.ScopeSourceServer, 0) // default TTL: 1 hour
		e.clock.Advance(59 * time.Minute)
		if _, err := e.register(hour, "m3", false); err != nil {
			t.Fatalf("before expiry: %v", err)
		}
		e.clock.Advance(2 * time.Minute)
		_, err = e.register(hour, "m4", false)
		ae = wantAPIError(t, err, 401, api.CodeTokenExpired)
		if !strings.Contains(ae.Message, "expired") {
			t.Errorf("message %q does not say it expired", ae.Message)
		}

		// API tokens with a TTL expire too; revoked tokens stop at once.
		short := e.client(e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer, TTLSeconds: 60}))
		if _, err := short.Whoami(e.ctx); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(61 * time.Second)
		_, err = short.Whoami(e.ctx)
		wantAPIError(t, err, 401, api.CodeTokenExpired)

		resp, err := e.admin.CreateToken(e.ctx, api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
		if err != nil {
			t.Fatal(err)
		}
		viewer := e.client(resp.Secret)
		if err := e.admin.RevokeToken(e.ctx, resp.Token.ID); err != nil {
			t.Fatal(err)
		}
		_, err = viewer.Whoami(e.ctx)
		wantAPIError(t, err, 401, api.CodeTokenRevoked)

		// A token with a wrong secret, or not a token at all, is refused.
		bad := resp.Secret[:len(resp.Secret)-1] + "0"
		if bad == resp.Secret {
			bad = resp.Secret[:len(resp.Secret)-1] + "1"
		}
		_, err = e.client(bad).Whoami(e.ctx)
		wantAPIError(t, err, 401, api.CodeUnauthenticated)
		_, err = e.client("hunter2").Whoami(e.ctx)
		wantAPIError(t, err, 401, api.CodeUnauthenticated)

		// The secret is never stored or listed.
		list, err := e.admin.Tokens(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		blob, _ := json.Marshal(list)
		if strings.Contains(string(blob), strings.Split(resp.Secret, "_")[2]) {
			t.Fatal("a token list shows a secret")
		}
	})
}

func TestQuotaRefusesThe301st(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		tok := e.installToken(api.ScopeSourceServer, 0)
		var seventh api.RegisterSourceServerResponse
		for i := range api.DefaultQuotaSourceServers {
			resp, err := e.register(tok, fmt.Sprintf("machine-%03d", i), false)
			if err != nil {
				t.Fatalf("registration %d of 300: %v", i+1, err)
			}
			if i == 7 {
				seventh = resp
			}
		}
		_, err := e.register(tok, "machine-300", false)
		ae := wantAPIError(t, err, 409, api.CodeQuotaExceeded)
		for _, want := range []string{"300", "lifeboat accounts set-quota " + e.cp.SystemAccountID()} {
			if !strings.Contains(ae.Message, want) {
				t.Errorf("quota message %q does not contain %q", ae.Message, want)
			}
		}
		acct, err := e.admin.Account(e.ctx)
		if err != nil || acct.ReplicatingSourceServers != 300 {
			t.Fatalf("account shows %d replicating servers (%v), want 300", acct.ReplicatingSourceServers, err)
		}
		// A stopped server no longer counts against the quota.
		if _, err := e.certClient(seventh.Certificate).UpdateReplicationState(e.ctx, seventh.SourceServer.ID,
			api.ReplicationStateUpdate{DataReplicationState: ptr(api.StateStopped)}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.register(tok, "machine-300", false); err != nil {
			t.Fatalf("after one server stopped: %v", err)
		}
		// Raising the quota lets one more in, and no more.
		if _, err := e.admin.UpdateAccount(e.ctx, e.cp.SystemAccountID(), api.UpdateAccountRequest{QuotaSourceServers: ptr(301)}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.register(tok, "machine-301", false); err != nil {
			t.Fatalf("after raising the quota: %v", err)
		}
		_, err = e.register(tok, "machine-302", false)
		wantAPIError(t, err, 409, api.CodeQuotaExceeded)
	})
}

// TestDuplicateMachineIsReportedAndReplaceKeepsTheID: a second registration of a machine
// id is refused; re-registering it in place (it keeps its id, replica and PITs) takes
// over its identity, so an ordinary install token cannot — machine ids are not secret —
// while an install token an admin made for it, or an admin API token, can; it is
// audited, and the old certificate stops working at once.
func TestDuplicateMachineIsReportedAndReplaceKeepsTheID(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		oldAgent, first := e.agent("same-machine")
		_, err := e.register(e.installToken(api.ScopeSourceServer, 1), "same-machine", false)
		ae := wantAPIError(t, err, 409, api.CodeDuplicateMachine)
		for _, want := range []string{first.SourceServer.ID, "source-servers delete", "--replace"} {
			if !strings.Contains(ae.Message, want) {
				t.Errorf("duplicate message %q does not contain %q", ae.Message, want)
			}
		}
		list, err := e.admin.ListSourceServers(e.ctx, api.SourceServerFilter{})
		if err != nil || len(list.Items) != 1 {
			t.Fatalf("after a refused duplicate: %d servers, %v; want 1", len(list.Items), err)
		}
		// The takeover: anyone with an install token who knows the machine id.
		_, err = e.register(e.installToken(api.ScopeSourceServer, 1), "same-machine", true)
		ae = wantAPIError(t, err, 403, api.CodeForbidden)
		if !strings.Contains(ae.Message, "--allow-replace") {
			t.Errorf("refused takeover says %q, not how to do it rightly", ae.Message)
		}
		if _, err := oldAgent.SourceServer(e.ctx, first.SourceServer.ID); err != nil {
			t.Fatalf("a refused takeover broke the real agent: %v", err)
		}
		second, err := e.register(e.token(api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1, AllowReplace: true}), "same-machine", true)
		if err != nil {
			t.Fatalf("replace with an install token made for it: %v", err)
		}
		if second.SourceServer.ID != first.SourceServer.ID || !second.Replaced {
			t.Fatalf("replace gave %s (replaced=%v), want the same id %s", second.SourceServer.ID, second.Replaced, first.SourceServer.ID)
		}
		_, err = oldAgent.SourceServer(e.ctx, first.SourceServer.ID)
		wantAPIError(t, err, 401, api.CodeUnauthenticated)
		if _, err := e.certClient(second.Certificate).SourceServer(e.ctx, first.SourceServer.ID); err != nil {
			t.Fatalf("the new certificate does not work: %v", err)
		}
		// An admin API token may re-register too, and both are audited.
		third, err := e.register(e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin}), "same-machine", true)
		if err != nil || third.SourceServer.ID != first.SourceServer.ID {
			t.Fatalf("replace with an admin token: %v", err)
		}
		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{Action: "source-server.reregister"})
		if err != nil || len(audit.Items) != 2 || audit.Items[0].ActorKind == audit.Items[1].ActorKind {
			t.Fatalf("re-registrations audited: %+v, %v", audit.Items, err)
		}
		for _, it := range audit.Items {
			if it.ActorKind != api.CallerUser && it.ActorKind != api.CallerInstall {
				t.Fatalf("re-registration audited as done by %s", it.ActorKind)
			}
		}
		// Deleting frees the machine id for a fresh registration (a new id).
		if err := e.admin.DeleteSourceServer(e.ctx, first.SourceServer.ID, false); err != nil {
			t.Fatal(err)
		}
		fourth, err := e.register(e.installToken(api.ScopeSourceServer, 1), "same-machine", false)
		if err != nil || fourth.SourceServer.ID == first.SourceServer.ID {
			t.Fatalf("after delete: %v, id %s", err, fourth.SourceServer.ID)
		}
	})
}

// TestReplicatorNameTakeoverNeedsAnAdmin: registering a replicator under a name that is
// registered already would take over its id, its servers and the address their agents
// stream to: refused without replace, and with replace unless an admin allowed it. An
// allowed re-registration is audited, the old certificate is refused at once, and agents
// are told the new certificate's serial only.
func TestReplicatorNameTakeoverNeedsAnAdmin(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		oldRep, first := e.replicator("r1", "default")
		agent, a := e.agent("machine-a")
		register := func(token string, replace bool, address string) (api.RegisterReplicatorResponse, error) {
			csrPEM, _ := csr(e.t)
			return e.client(token).RegisterReplicator(e.ctx, api.RegisterReplicatorRequest{CSR: string(csrPEM), Name: "r1", Site: "default",
				Address: address, Replace: replace})
		}
		_, err := register(e.installToken(api.ScopeReplicator, 1), false, "192.0.2.66:1500")
		wantAPIError(t, err, 409, api.CodeDuplicateName)
		_, err = register(e.installToken(api.ScopeReplicator, 1), true, "192.0.2.66:1500")
		wantAPIError(t, err, 403, api.CodeForbidden)
		cfg, err := agent.ReplicationConfig(e.ctx, a.SourceServer.ID)
		if err != nil || cfg.Replicator == nil || cfg.Replicator.Address != "127.0.0.1:1500" {
			t.Fatalf("a refused takeover moved the agent: %+v, %v", cfg.Replicator, err)
		}
		firstSerial := cfg.Replicator.CertificateSerials
		if _, err := oldRep.Heartbeat(e.ctx, first.Replicator.ID, api.HeartbeatRequest{}); err != nil {
			t.Fatalf("a refused takeover broke the real replicator: %v", err)
		}
		second, err := register(e.token(api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeReplicator, Uses: 1, AllowReplace: true}),
			true, "127.0.0.1:1501")
		if err != nil {
			t.Fatalf("replace with an install token made for it: %v", err)
		}
		if second.Replicator.ID != first.Replicator.ID {
			t.Fatalf("replace gave id %s, want %s", second.Replicator.ID, first.Replicator.ID)
		}
		_, err = oldRep.Heartbeat(e.ctx, first.Replicator.ID, api.HeartbeatRequest{})
		wantAPIError(t, err, 401, api.CodeUnauthenticated)
		cfg, err = agent.ReplicationConfig(e.ctx, a.SourceServer.ID)
		if err != nil || cfg.Replicator == nil || cfg.Replicator.Address != "127.0.0.1:1501" || len(cfg.Replicator.CertificateSerials) != 1 ||
			slices.Contains(firstSerial, cfg.Replicator.CertificateSerials[0]) {
			t.Fatalf("after the re-registration the agent is told %+v (old serials %v), %v", cfg.Replicator, firstSerial, err)
		}
		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{Action: "replicator.reregister"})
		if err != nil || len(audit.Items) != 1 || audit.Items[0].Detail["previousAddress"] != "127.0.0.1:1500" {
			t.Fatalf("re-registration audited: %+v, %v", audit.Items, err)
		}
	})
}

func TestAgentActsOnlyOnItself(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		agentA, a := e.agent("a")
		_, b := e.agent("b")
		got, err := agentA.SourceServer(e.ctx, a.SourceServer.ID)
		if err != nil || got.ID != a.SourceServer.ID {
			t.Fatalf("own server: %v", err)
		}
		if len(got.Volumes) != 1 || got.Volumes[0].MajorMinor != "253:0" {
			t.Fatalf("volumes from registration: %+v", got.Volumes)
		}
		_, err = agentA.SourceServer(e.ctx, b.SourceServer.ID)
		wantAPIError(t, err, 403, api.CodeForbidden)
		_, err = agentA.UpdateReplicationState(e.ctx, b.SourceServer.ID, api.ReplicationStateUpdate{DataReplicationState: ptr(api.StateStalled)})
		wantAPIError(t, err, 403, api.CodeForbidden)
		_, err = agentA.SetVolumes(e.ctx, b.SourceServer.ID, nil)
		wantAPIError(t, err, 403, api.CodeForbidden)
		_, err = agentA.ListSourceServers(e.ctx, api.SourceServerFilter{})
		wantAPIError(t, err, 403, api.CodeForbidden)
		_, err = agentA.RecoverySnapshots(e.ctx, a.SourceServer.ID, 0, "")
		wantAPIError(t, err, 403, api.CodeForbidden)

		// Its own reports land, and the state is validated.
		st, err := agentA.UpdateReplicationState(e.ctx, a.SourceServer.ID, api.ReplicationStateUpdate{
			DataReplicationState: ptr(api.StateInitialSync), InitialSyncPercent: ptr(42.5), Tracker: ptr("ebpf"),
			BacklogBytes: ptr(int64(1 << 20)), ThroughputBytesPerSecond: ptr(int64(50 << 20))})
		if err != nil || st.DataReplicationState != api.StateInitialSync || *st.InitialSyncPercent != 42.5 || st.Tracker != "ebpf" {
			t.Fatalf("state update: %+v, %v", st, err)
		}
		_, err = agentA.UpdateReplicationState(e.ctx, a.SourceServer.ID, api.ReplicationStateUpdate{DataReplicationState: ptr("SYNCING")})
		wantAPIError(t, err, 400, api.CodeInvalid)
		vols := []api.Volume{{Name: "vdb", Path: "/dev/vdb", SizeBytes: 1 << 30, MajorMinor: "253:16"}}
		srv, err := agentA.SetVolumes(e.ctx, a.SourceServer.ID, vols)
		if err != nil || len(srv.Volumes) != 1 || srv.Volumes[0].Name != "vdb" || srv.LastSeenAt == nil {
			t.Fatalf("set volumes: %+v, %v", srv, err)
		}
		_, err = agentA.SetVolumes(e.ctx, a.SourceServer.ID, []api.Volume{{Name: "x", Path: "relative"}})
		wantAPIError(t, err, 400, api.CodeInvalid)
	})
}

func TestReplicatorAssignmentSnapshotsAndFailover(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		// A server registered before any replicator waits unassigned.
		agentA, a := e.agent("a")
		cfg, err := agentA.ReplicationConfig(e.ctx, a.SourceServer.ID)
		if err != nil || cfg.Replicator != nil {
			t.Fatalf("config before any replicator: %+v, %v", cfg, err)
		}
		if cfg.Settings.StagingStoreURL != "file://"+e.dataDir+"/staging" || cfg.CACertificates == "" {
			t.Fatalf("settings %+v", cfg.Settings)
		}
		r1, r1reg := e.replicator("r1", "default")
		cfg, err = agentA.ReplicationConfig(e.ctx, a.SourceServer.ID)
		if err != nil || cfg.Replicator == nil || cfg.Replicator.ID != r1reg.Replicator.ID || cfg.Replicator.Address != "127.0.0.1:1500" {
			t.Fatalf("config after r1 registered: %+v, %v", cfg.Replicator, err)
		}
		// The replicator's certificate serves its listener too.
		cert, _ := tls.X509KeyPair([]byte(r1reg.Certificate), func() []byte { _, k := csr(t); return k }())
		leaf, _ := parseLeaf(cert)
		if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
			t.Fatalf("replicator certificate: %v", err)
		}

		hb, err := r1.Heartbeat(e.ctx, r1reg.Replicator.ID, api.HeartbeatRequest{Metrics: api.ReplicatorMetrics{CPUPercent: 12.5, RSSBytes: 100 << 20, VolumesServed: 1}})
		if err != nil || hb.AssignedSourceServers != 1 {
			t.Fatalf("heartbeat: %+v, %v", hb, err)
		}
		assigned, err := r1.AssignedSourceServers(e.ctx, r1reg.Replicator.ID)
		if err != nil || len(assigned.Items) != 1 || assigned.Items[0].SourceServer.ID != a.SourceServer.ID ||
			assigned.Items[0].Settings.Compression != api.CompressionS2 {
			t.Fatalf("assigned: %+v, %v", assigned, err)
		}

		// A second replicator takes the next server (least loaded).
		r2, r2reg := e.replicator("r2", "default")
		_, b := e.agent("b")
		got, _ := e.admin.SourceServer(e.ctx, b.SourceServer.ID)
		if got.ReplicatorID != r2reg.Replicator.ID {
			t.Fatalf("b went to %s, want the least-loaded r2", got.ReplicatorID)
		}
		// The replicator reports state; snapshots make the server ready for recovery.
		if _, err := r1.UpdateReplicationState(e.ctx, a.SourceServer.ID, api.ReplicationStateUpdate{
			DataReplicationState: ptr(api.StateContinuous), LagSeconds: ptr(0.4)}); err != nil {
			t.Fatal(err)
		}
		if _, err := r1.UpdateReplicationState(e.ctx, b.SourceServer.ID, api.ReplicationStateUpdate{LagSeconds: ptr(1.0)}); err == nil {
			t.Fatal("r1 updated a server assigned to r2")
		}
		t0 := e.clock.Now().Add(-time.Hour)
		lock := e.clock.Now().Add(24 * time.Hour)
		var pits []string
		for i := range 3 {
			req := api.CreateRecoverySnapshotRequest{Time: t0.Add(time.Duration(i) * 10 * time.Minute), Level: consistency.Filesystem,
				Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 10 << 30, Ref: fmt.Sprint("v", i)}}, SizeBytes: int64(i) << 20}
			if i == 0 {
				req.LockUntil = &lock
			}
			p, err := r1.CreateRecoverySnapshot(e.ctx, a.SourceServer.ID, req)
			if err != nil {
				t.Fatal(err)
			}
			pits = append(pits, p.ID)
		}
		got, _ = e.admin.SourceServer(e.ctx, a.SourceServer.ID)
		if !got.Replication.ReadyForRecovery || got.Replication.LastConsistencyPoint.SnapshotID != pits[2] {
			t.Fatalf("after snapshots: %+v", got.Replication)
		}
		list, err := e.admin.ListSourceServers(e.ctx, api.SourceServerFilter{})
		if err != nil || list.Items[0].ID != a.SourceServer.ID {
			t.Fatalf("the ready server is not listed first: %v", err)
		}
		snaps, err := e.admin.RecoverySnapshots(e.ctx, a.SourceServer.ID, 2, "")
		if err != nil || len(snaps.Items) != 2 || snaps.Items[0].ID != pits[2] || snaps.NextPageToken == "" {
			t.Fatalf("snapshots page: %+v, %v", snaps, err)
		}
		del, err := r1.DeleteRecoverySnapshots(e.ctx, a.SourceServer.ID, []string{pits[0], pits[1], "pit-00000000000000000"})
		if err != nil || len(del.Deleted) != 1 || del.Deleted[0] != pits[1] || len(del.Refused) != 2 ||
			!strings.Contains(del.Refused[0].Reason, "locked") {
			t.Fatalf("batch delete: %+v, %v", del, err)
		}
		err = e.admin.DeleteRecoverySnapshot(e.ctx, pits[0])
		wantAPIError(t, err, 409, api.CodeConflict)
		err = e.admin.DeleteSourceServer(e.ctx, a.SourceServer.ID, true)
		wantAPIError(t, err, 409, api.CodeConflict) // the locked snapshot protects it

		// r1 stops beating: past the timeout its servers move to r2, which beats.
		e.clock.Advance(40 * time.Second)
		if _, err := r2.Heartbeat(e.ctx, r2reg.Replicator.ID, api.HeartbeatRequest{}); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(10 * time.Second)
		if err := e.cp.AssignAll(e.ctx); err != nil {
			t.Fatal(err)
		}
		got, _ = e.admin.SourceServer(e.ctx, a.SourceServer.ID)
		if got.ReplicatorID != r2reg.Replicator.ID {
			t.Fatalf("after r1 was lost, a is on %q, want r2", got.ReplicatorID)
		}
		reps, _ := e.admin.Replicators(e.ctx)
		states := map[string]string{}
		for _, r := range reps.Items {
			states[r.Name] = r.State
		}
		if states["r1"] != api.ReplicatorLost || states["r2"] != api.ReplicatorLive {
			t.Fatalf("replicator states %v", states)
		}
		// A dedicated replicator takes its server even when it is not the least loaded.
		_, err = e.admin.SetServerReplicationSettings(e.ctx, b.SourceServer.ID, api.ReplicationSettingsOverrides{DedicatedReplicator: ptr("r1")})
		if err != nil {
			t.Fatal(err)
		}
		got, _ = e.admin.SourceServer(e.ctx, b.SourceServer.ID)
		if got.ReplicatorID != r1reg.Replicator.ID {
			t.Fatalf("dedicated r1: b is on %s", got.ReplicatorID)
		}
		_, err = e.admin.SetServerReplicationSettings(e.ctx, b.SourceServer.ID, api.ReplicationSettingsOverrides{DedicatedReplicator: ptr("nope")})
		wantAPIError(t, err, 400, api.CodeInvalid)
		// Deleting a replicator reassigns its servers.
		if err := e.admin.DeleteReplicator(e.ctx, r2reg.Replicator.ID); err != nil {
			t.Fatal(err)
		}
		got, _ = e.admin.SourceServer(e.ctx, a.SourceServer.ID)
		if got.ReplicatorID == r2reg.Replicator.ID {
			t.Fatal("a is still on the deleted replicator")
		}
	})
}

func TestSettingsAreValidatedAndMerged(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		_, a := e.agent("a")
		tmpl, err := e.admin.ReplicationTemplate(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tmpl.PITPolicy.ConsistencyPointRetentionMinutes != 60 || len(tmpl.PITPolicy.Rules) != 3 || tmpl.ConsistencyPointIntervalSeconds != 1 {
			t.Fatalf("default template %+v", tmpl)
		}
		bad := []struct {
			name   string
			mutate func(*api.ReplicationSettings)
			want   string
		}{
			{"negative bandwidth", func(s *api.ReplicationSettings) { s.BandwidthMbps = -1 }, "bandwidthMbps"},
			{"zero interval", func(s *api.ReplicationSettings) { s.ConsistencyPointIntervalSeconds = 0 }, "consistencyPointIntervalSeconds"},
			{"daily retention 366", func(s *api.ReplicationSettings) { s.PITPolicy.Rules[2].RetentionDuration = 366 }, "DAY"},
			{"daily retention 0", func(s *api.ReplicationSettings) { s.PITPolicy.Rules[2].RetentionDuration = 0 }, "DAY"},
			{"compression", func(s *api.ReplicationSettings) { s.Compression = "gzip" }, "compression"},
			{"store scheme", func(s *api.ReplicationSettings) { s.StagingStoreURL = "http://x" }, "file:// or s3://"},
			{"relative file store", func(s *api.ReplicationSettings) { s.StagingStoreURL = "file://relative/dir" }, "absolute"},
			{"unknown site", func(s *api.ReplicationSettings) { s.TargetSite = "mars" }, "does not exist"},
			{"two MINUTE rules", func(s *api.ReplicationSettings) { s.PITPolicy.Rules[1] = s.PITPolicy.Rules[0] }, "one rule per unit"},
		}
		for _, c := range bad {
			s := tmpl
			s.PITPolicy.Rules = append([]api.PITRule(nil), tmpl.PITPolicy.Rules...)
			c.mutate(&s)
			_, err := e.admin.SetReplicationTemplate(e.ctx, s)
			ae := wantAPIError(t, err, 400, api.CodeInvalid)
			if !strings.Contains(ae.Message, c.want) {
				t.Errorf("%s: message %q does not mention %q", c.name, ae.Message, c.want)
			}
		}
		good := tmpl
		good.BandwidthMbps = 100
		good.StagingStoreURL = "s3://bucket/prefix?endpoint=127.0.0.1:9000"
		good.PITPolicy.Rules = []api.PITRule{{Units: api.UnitDay, Interval: 1, RetentionDuration: 365}}
		if _, err := e.admin.SetReplicationTemplate(e.ctx, good); err != nil {
			t.Fatal(err)
		}
		// Overrides merge over the template; clearing them inherits again.
		srv, err := e.admin.SetServerReplicationSettings(e.ctx, a.SourceServer.ID, api.ReplicationSettingsOverrides{
			BandwidthMbps: ptr(0), Compression: ptr(api.CompressionS2)})
		if err != nil {
			t.Fatal(err)
		}
		if srv.Effective.BandwidthMbps != 0 || srv.Effective.Compression != api.CompressionS2 ||
			srv.Effective.StagingStoreURL != good.StagingStoreURL || len(srv.Effective.PITPolicy.Rules) != 1 {
			t.Fatalf("effective %+v", srv.Effective)
		}
		_, err = e.admin.SetServerReplicationSettings(e.ctx, a.SourceServer.ID, api.ReplicationSettingsOverrides{ConsistencyPointIntervalSeconds: ptr(-3)})
		wantAPIError(t, err, 400, api.CodeInvalid)
		srv, err = e.admin.SetServerReplicationSettings(e.ctx, a.SourceServer.ID, api.ReplicationSettingsOverrides{})
		if err != nil || srv.Effective.BandwidthMbps != 100 {
			t.Fatalf("cleared overrides: %+v, %v", srv.Effective, err)
		}
		// Launch settings: defaults from the source, validated on change.
		ls, err := e.admin.LaunchSettings(e.ctx, a.SourceServer.ID)
		if err != nil || ls.Settings.CPUs != 2 || ls.Settings.MemoryMiB != 2048 || ls.Settings.Network.Mode != api.NetworkIsolated {
			t.Fatalf("default launch settings %+v, %v", ls.Settings, err)
		}
		l := ls.Settings
		l.Network = api.LaunchNetwork{Mode: api.NetworkUser, PortForwards: []api.PortForward{{Protocol: "tcp", HostPort: 8080, GuestPort: 80}}}
		l.IP, l.Hostname, l.BootMode = "10.0.0.5/24", "web-dr", api.BootUEFI
		l.PostLaunchActions = []api.PostLaunchAction{{Name: "web-up", Type: "http-check", URL: "http://127.0.0.1:8080/", TimeoutSeconds: 60}}
		if out, err := e.admin.SetLaunchSettings(e.ctx, a.SourceServer.ID, l); err != nil || out.Settings.Hostname != "web-dr" {
			t.Fatalf("set launch settings: %v", err)
		}
		for name, mutate := range map[string]func(*api.LaunchSettings){
			"cpus":     func(l *api.LaunchSettings) { l.CPUs = 0 },
			"memory":   func(l *api.LaunchSettings) { l.MemoryMiB = 1 },
			"ip":       func(l *api.LaunchSettings) { l.IP = "10.0.0.5" },
			"forward":  func(l *api.LaunchSettings) { l.Network.Mode = api.NetworkIsolated },
			"boot":     func(l *api.LaunchSettings) { l.BootMode = "efi" },
			"provider": func(l *api.LaunchSettings) { l.Provider = "ec2" },
			"into missing": func(l *api.LaunchSettings) {
				l.Provider, l.TargetInstanceID = api.ProviderExistingInstance, "inst-00000000000000000"
			},
			"action type":   func(l *api.LaunchSettings) { l.PostLaunchActions[0].Type = "dns" },
			"hostname":      func(l *api.LaunchSettings) { l.Hostname = "bad_name" },
			"port too high": func(l *api.LaunchSettings) { l.Network.PortForwards[0].HostPort = 70000 },
		} {
			bad := l
			bad.Network.PortForwards = append([]api.PortForward(nil), l.Network.PortForwards...)
			bad.PostLaunchActions = append([]api.PostLaunchAction(nil), l.PostLaunchActions...)
			mutate(&bad)
			if _, err := e.admin.SetLaunchSettings(e.ctx, a.SourceServer.ID, bad); err == nil {
				t.Errorf("launch settings with bad %s were accepted", name)
			} else {
				wantAPIError(t, err, 400, api.CodeInvalid)
			}
		}
	})
}

func TestBadRequestsGetOneSentence(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		tok := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
		hc := e.httpClient("")
		do := func(method, path, body string) (int, api.ErrorBody, http.Header) {
			req, _ := http.NewRequest(method, e.cp.URL()+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb api.ErrorBody
			_ = json.NewDecoder(resp.Body).Decode(&eb)
			return resp.StatusCode, eb, resp.Header
		}
		cases := []struct {
			method, path, body string
			status             int
			code, contains     string
		}{
			{"POST", "/api/v1/sites", `{"id":"x","colour":"red"}`, 400, api.CodeInvalid, `unknown field "colour"`},
			{"POST", "/api/v1/sites", `{"id":"x"} {"id":"y"}`, 400, api.CodeInvalid, "exactly one JSON object"},
			{"POST", "/api/v1/sites", `{"id":7}`, 400, api.CodeInvalid, `"id" must be a string`},
			{"POST", "/api/v1/sites", ``, 400, api.CodeInvalid, "needs a JSON body"},
			{"POST", "/api/v1/sites", `{"id":"Not A Name"}`, 400, api.CodeInvalid, "lowercase"},
			{"POST", "/api/v1/sites", `{"id":"` + strings.Repeat("a", 2<<20) + `"}`, 413, api.CodeTooLarge, "larger than"},
			{"POST", "/api/v1/tokens", `{"kind":"api","role":"root"}`, 400, api.CodeInvalid, "admin, operator or viewer"},
			{"POST", "/api/v1/tokens", `{"kind":"install","ttlSeconds":99999999}`, 400, api.CodeInvalid, "30 days"},
			{"GET", "/api/v1/source-servers?limit=0", ``, 400, api.CodeInvalid, "limit must be"},
			{"GET", "/api/v1/source-servers?state=SYNCING", ``, 400, api.CodeInvalid, "not a replication state"},
			{"GET", "/api/v1/source-servers?page_token=zzz", ``, 400, api.CodeInvalid, "page token"},
			{"GET", "/api/v1/source-servers/s-00000000000000000", ``, 404, api.CodeNotFound, "source-servers list"},
			{"GET", "/api/v1/nothing", ``, 404, api.CodeNotFound, "openapi.json"},
			{"PUT", "/api/v1/sites", `{}`, 405, api.CodeMethodNotAllowed, "allowed"},
			{"DELETE", "/api/v1/sites/default", ``, 409, api.CodeConflict, ""},
		}
		// The default site is in use once a server targets it.
		e.agent("m")
		for _, c := range cases {
			status, eb, hdr := do(c.method, c.path, c.body)
			if status != c.status || eb.Error.Code != c.code || !strings.Contains(eb.Error.Message, c.contains) {
				t.Errorf("%s %s %.40s: %d %s %q; want %d %s containing %q", c.method, c.path, c.body, status, eb.Error.Code,
					eb.Error.Message, c.status, c.code, c.contains)
			}
			if status == 405 && hdr.Get("Allow") == "" {
				t.Errorf("405 without Allow header")
			}
			if strings.Count(strings.TrimSuffix(eb.Error.Message, "."), ". ") > 0 {
				t.Errorf("%s %s: message %q is more than one sentence", c.method, c.path, eb.Error.Message)
			}
		}
		// TLS below 1.3 is refused.
		old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.cp.CAPool(), MaxVersion: tls.VersionTLS12}}}
		if _, err := old.Get(e.cp.URL() + "/api/v1/health"); err == nil {
			t.Fatal("a TLS 1.2 client was served")
		}
	})
}

func TestAuditAndEvents(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		defer cancel()
		viewer := e.userClient(api.RoleViewer)
		events := make(chan api.Event, 100)
		streamDone := make(chan error, 1)
		go func() {
			streamDone <- viewer.Events(ctx, 0, func(ev api.Event) error { events <- ev; return nil })
		}()
		// The stream is open once a change we make arrives; make changes until then.
		var first api.Event
	wait:
		for i := 0; ; i++ {
			if _, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: fmt.Sprintf("site-%d", i)}); err != nil {
				t.Fatal(err)
			}
			select {
			case first = <-events:
				break wait
			case <-time.After(100 * time.Millisecond):
			}
			if i > 100 {
				t.Fatal("no event arrived")
			}
		}
		if first.Type != "site.create" || first.Seq == 0 {
			t.Fatalf("first event %+v", first)
		}
		_, a := e.agent("m")
		want := map[string]bool{"token.create": false, "source-server.register": false}
		deadline := time.After(10 * time.Second)
		for !want["token.create"] || !want["source-server.register"] {
			select {
			case ev := <-events:
				if _, ok := want[ev.Type]; ok {
					want[ev.Type] = true
				}
			case <-deadline:
				t.Fatalf("events not seen: %v", want)
			}
		}
		// A client that reconnects with Last-Event-ID gets what it missed.
		ctx2, cancel2 := context.WithTimeout(e.ctx, 10*time.Second)
		defer cancel2()
		var replayed []string
		errStop := fmt.Errorf("stop")
		err := viewer.Events(ctx2, first.Seq, func(ev api.Event) error {
			replayed = append(replayed, ev.Type)
			if ev.Type == "source-server.register" {
				return errStop
			}
			return nil
		})
		if err != errStop || len(replayed) < 2 {
			t.Fatalf("replay after %d: %v, %v", first.Seq, replayed, err)
		}
		cancel()
		<-streamDone

		// The audit log names who did what to which target.
		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{TargetID: a.SourceServer.ID})
		if err != nil || len(audit.Items) == 0 {
			t.Fatalf("audit: %v", err)
		}
		reg := audit.Items[len(audit.Items)-1]
		if reg.Action != "source-server.register" || reg.ActorKind != api.CallerInstall || reg.Detail["machineId"] != "m" {
			t.Fatalf("registration audit entry %+v", reg)
		}
		_, err = viewer.Audit(e.ctx, api.AuditFilter{})
		wantAPIError(t, err, 403, api.CodeForbidden)
	})
}

func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	e := start(t, "sqlite")
	doc, err := e.admin.OpenAPI(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if doc["openapi"] != "3.1.0" {
		t.Fatalf("openapi %v", doc["openapi"])
	}
	paths := doc["paths"].(map[string]any)
	n := 0
	for _, item := range paths {
		n += len(item.(map[string]any))
	}
	if n != len(wantAccess)+len(publicRoutes) {
		t.Errorf("the document has %d operations, the test knows %d", n, len(wantAccess)+len(publicRoutes))
	}
	for _, key := range append(publicRoutes, keys(wantAccess)...) {
		method, path, _ := strings.Cut(key, " ")
		item, ok := paths[path].(map[string]any)
		if !ok || item[strings.ToLower(method)] == nil {
			t.Errorf("%s is not in the OpenAPI document", key)
		}
	}
	// Every $ref resolves to a schema.
	blob, _ := json.Marshal(doc)
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	for _, part := range strings.Split(string(blob), `"$ref":"#/components/schemas/`)[1:] {
		name := part[:strings.IndexByte(part, '"')]
		if schemas[name] == nil {
			t.Errorf("$ref to missing schema %s", name)
		}
	}
	for _, name := range []string{"SourceServer", "ReplicationState", "ReplicationSettings", "LaunchSettings", "ErrorBody"} {
		if schemas[name] == nil {
			t.Errorf("schema %s missing", name)
		}
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestRestartOnSameDataDirKeepsEverything(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			e := &env{t: t, kind: kind, clock: &clock{now: time.Now().UTC()}, dataDir: t.TempDir(), ctx: context.Background()}
			dbURL := dbtest.URL(t, kind)
			e.open(dbURL)
			_, a := e.agent("m")
			caBefore := string(e.cp.CACertPEM())
			acct := e.cp.SystemAccountID()
			e.restart(dbURL)
			if string(e.cp.CACertPEM()) != caBefore || e.cp.SystemAccountID() != acct {
				t.Fatal("restart made a new CA or system account")
			}
			agent := e.certClient(a.Certificate)
			got, err := agent.SourceServer(e.ctx, a.SourceServer.ID)
			if err != nil || got.MachineID != "m" {
				t.Fatalf("after restart the agent's certificate or server is gone: %v", err)
			}
		})
	}
}

func TestConsolePage(t *testing.T) {
	e := start(t, "sqlite")
	resp, err := e.httpClient("").Get(e.cp.URL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := new(strings.Builder)
	_, _ = io.Copy(body, resp.Body)
	// The root leads to the console's sign-in page (internal/console has its tests).
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/console/sign-in" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(body.String(), `name="token"`) || csp == "" || strings.Contains(csp, "unsafe-inline") {
		t.Fatalf("console: %d %s %s, CSP %q\n%.300s", resp.StatusCode, resp.Request.URL.Path, resp.Header.Get("Content-Type"), csp, body.String())
	}
}

// TestOperatorCertificate serves a certificate from another CA (the operator's) to
// clients that trust it, while install tokens keep pinning the control plane's own CA:
// agents ask for its certificate by name, register through the pin and then
// authenticate with certificates from Lifeboat's agents' CA.
func TestOperatorCertificate(t *testing.T) {
	opDir := t.TempDir()
	opCA, err := pki.LoadOrCreateCA(opDir, pki.RoleControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := opCA.IssueServer([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(opDir, "tls.crt"), filepath.Join(opDir, "tls.key")
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cp, err := controlplane.Open(ctx, controlplane.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", TLSCertFile: certFile, TLSKeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cp.Serve(sctx) }()
	defer func() { cancel(); <-done; cp.Close() }()
	if cp.Pin() == pki.Pin(opCA.Certificate()) || cp.Pin() != pki.Pin(mustParseCert(t, cp.CACertPEM())) {
		t.Fatal("install tokens do not pin the control plane's own CA")
	}
	// Browsers and other clients trusting the operator's CA get its certificate.
	browser, err := api.NewClient(api.ClientConfig{Server: cp.URL(), CAPEM: opCA.CertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := browser.Health(ctx); err != nil {
		t.Fatalf("a client trusting the operator's CA: %v", err)
	}
	tok, err := cp.CreateToken(ctx, cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenInstall})
	if err != nil {
		t.Fatal(err)
	}
	installer, err := api.NewClient(api.ClientConfig{Server: cp.URL(), Token: tok.Secret}) // trust from the token's pin
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, keyPEM := csr(t)
	reg, err := installer.RegisterSourceServer(ctx, api.RegisterSourceServerRequest{CSR: string(csrPEM), MachineID: "m", Hostname: "h"})
	if err != nil {
		t.Fatalf("register through the operator's certificate: %v", err)
	}
	cfg := api.AgentConfig{Server: cp.URL(), ServerPin: cp.Pin(), SourceServerID: reg.SourceServer.ID, Certificate: reg.Certificate,
		Key: string(keyPEM), CACertificates: reg.CACertificates}
	agent, err := cfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.SourceServer(ctx, reg.SourceServer.ID); err != nil {
		t.Fatalf("the agent's certificate was refused: %v", err)
	}
	if reg.CACertificates == string(cp.CACertPEM()) || reg.CACertificates == string(opCA.CertPEM()) ||
		!strings.Contains(mustParseCert(t, []byte(reg.CACertificates)).Subject.CommonName, "replicators") {
		t.Fatal("registration returned the wrong CA for replicators")
	}
}

func mustParseCert(t *testing.T, pemText []byte) *x509.Certificate {
	t.Helper()
	c, err := pki.ParseCertificatePEM(pemText)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
