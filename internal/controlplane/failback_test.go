package controlplane_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// reverseKeyOf is the reverse key recovery writes into a recovery instance's disk, as
// docs/failback.md defines it.
func reverseKeyOf(t *testing.T, e *env, id string) string {
	t.Helper()
	mk, err := store.LoadMasterKey(filepath.Join(e.dataDir, "staging.key"))
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, mk[:])
	m.Write([]byte("lifeboat reverse replication key v1\x00" + id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// recoverOnce recovers (or drills) the server with the image provider and returns the
// recovery instance.
func recoverOnce(t *testing.T, e *env, op *api.Client, server string, drill bool) api.RecoveryInstance {
	t.Helper()
	job, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: server}}, IsDrill: drill})
	if err != nil {
		t.Fatal(err)
	}
	job = recoverytest.WaitJob(t, op, job.ID, time.Minute)
	ri, err := op.RecoveryInstance(e.ctx, job.Servers[0].RecoveryInstanceID)
	if err != nil {
		t.Fatal(err)
	}
	return ri
}

// refused checks that err is an API error of that status whose message says text.
func refused(t *testing.T, what string, err error, status int, code, text string) {
	t.Helper()
	if ae := wantAPIError(t, err, status, code); !strings.Contains(ae.Message, text) {
		t.Fatalf("%s: %q, want it to say %q", what, ae.Message, text)
	}
}

// TestReverseReplicationStartAndRegistration: an operator starts reversed replication
// of a recovery (never of a drill, never twice); the recovery instance's agent gets the
// reversed source server's identity only with the instance's reverse key and only once
// reversed replication is started; the reversed server names its instance, origin and
// seed PIT, and its certificate works.
func TestReverseReplicationStartAndRegistration(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		repo := recoverytest.Store(t, e.cp)
		const size = 2 << 20
		srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": size})
		pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Filesystem, e.clock.Now().Add(-time.Hour),
			recoverytest.Volume{Name: "vda", Image: image(t, size, 1)})
		imageSettings(t, e, srv.ID)
		op := e.userClient(api.RoleOperator)
		ri := recoverOnce(t, e, op, srv.ID, false)
		drill := recoverOnce(t, e, op, srv.ID, true)
		if ri.FailbackState != api.FailbackNotStarted || ri.ReversedSourceServerID != "" {
			t.Fatalf("a new recovery instance: failback %q, reversed %q", ri.FailbackState, ri.ReversedSourceServerID)
		}

		csrPEM, _ := csr(t)
		anon := e.client("")
		register := func(id, key string) (api.RegisterSourceServerResponse, error) {
			return anon.RegisterReversed(e.ctx, api.ReverseRegisterRequest{RecoveryInstanceID: id, ReverseKey: key,
				RegisterSourceServerRequest: api.RegisterSourceServerRequest{CSR: string(csrPEM), MachineID: "m1", Hostname: "recovered",
					Volumes: []api.Volume{{Name: "vda", Path: "/dev/vda", SizeBytes: size}}}})
		}
		key := reverseKeyOf(t, e, ri.ID)
		_, err := register(ri.ID, key)
		refused(t, "registration before reversed replication started", err, 409, api.CodeReverseNotStarted, "reverse-replication "+ri.ID)
		_, err = register(ri.ID, reverseKeyOf(t, e, drill.ID))
		refused(t, "registration with another instance's key", err, 401, "", "reverse key")
		_, err = e.userClient(api.RoleViewer).StartReverseReplication(e.ctx, ri.ID)
		refused(t, "a viewer starting reversed replication", err, 403, api.CodeForbidden, "")
		_, err = op.StartReverseReplication(e.ctx, drill.ID)
		refused(t, "reversed replication of a drill", err, 409, "", "is a drill")

		rr, err := op.StartReverseReplication(e.ctx, ri.ID)
		if err != nil {
			t.Fatal(err)
		}
		if rr.OriginSourceServerID != srv.ID || rr.SeedSnapshotID != pit.ID || rr.FailbackState != api.FailbackInProgress || rr.SourceServerID == srv.ID {
			t.Fatalf("reverse replication %+v", rr)
		}
		if j, err := op.Job(e.ctx, rr.JobID); err != nil || j.Type != api.JobReverseReplication || j.Servers[0].SourceServerID != rr.SourceServerID {
			t.Fatalf("reversed replication's job %s: %+v (%v)", rr.JobID, j, err)
		}
		_, err = op.StartReverseReplication(e.ctx, ri.ID)
		refused(t, "a second reversed replication", err, 409, "", "replicates back already")

		resp, err := register(ri.ID, key)
		if err != nil {
			t.Fatal(err)
		}
		s := resp.SourceServer
		if s.ID != rr.SourceServerID || s.Reversed == nil || s.Reversed.RecoveryInstanceID != ri.ID ||
			s.Reversed.OriginSourceServerID != srv.ID || s.Reversed.SeedSnapshotID != pit.ID || resp.Certificate == "" {
			t.Fatalf("reversed registration: %+v", s)
		}
		if _, err := e.certClient(resp.Certificate).ReplicationConfig(e.ctx, s.ID); err != nil {
			t.Fatalf("the reversed server's certificate: %v", err)
		}
		got, err := op.RecoveryInstance(e.ctx, ri.ID)
		if err != nil || got.FailbackState != api.FailbackInProgress || got.ReversedSourceServerID != s.ID {
			t.Fatalf("recovery instance after the start: %+v (%v)", got, err)
		}

		// Failback: refused until the reversed server is CONTINUOUS with a consistent
		// PIT, of a drill, into an instance that is not registered; completing is
		// refused before a failback.
		_, err = op.StartFailback(e.ctx, ri.ID, api.FailbackRequest{Into: "inst-00000000000000bad"})
		refused(t, "failback before reversed replication is ready", err, 409, "", "fail back once it is CONTINUOUS")
		_, err = op.StartFailback(e.ctx, drill.ID, api.FailbackRequest{Into: "inst-00000000000000bad"})
		refused(t, "failback of a drill", err, 409, "", "drills never fail back")
		_, err = op.StartFailback(e.ctx, ri.ID, api.FailbackRequest{Into: "nowhere"})
		refused(t, "failback into something that is not an instance id", err, 400, api.CodeInvalid, "must name a registered instance")
		_, err = op.CompleteFailback(e.ctx, ri.ID)
		refused(t, "completing a failback that did not happen", err, 409, "", "fail back first")
		_, err = e.userClient(api.RoleAdmin).DisconnectSourceServer(e.ctx, s.ID, false, false)
		refused(t, "disconnecting a reversed source server during its failback", err, 409, "", "stops the failback")
	})
}

// TestDisconnect: a source server with a recovery (not a drill) is not disconnected
// without --force, saying why; one without is: DISCONNECTED, its agent's certificate
// refused at once, and with delete_data its unlocked PITs gone from the record and the
// staging store while a locked one stays.
func TestDisconnect(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		repo := recoverytest.Store(t, e.cp)
		const size = 1 << 20
		admin := e.userClient(api.RoleAdmin)
		agentClient, reg := e.agent("m-disc")
		srv := reg.SourceServer
		now := e.clock.Now()
		p1, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Filesystem, now.Add(-2*time.Hour), recoverytest.Volume{Name: "vda", Image: image(t, size, 1)})
		p2, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Filesystem, now.Add(-time.Hour), recoverytest.Volume{Name: "vda", Image: image(t, size, 2)})
		if _, err := admin.ProtectRecoverySnapshot(e.ctx, p2.ID, now.Add(24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		imageSettings(t, e, srv.ID)
		recoverOnce(t, e, admin, srv.ID, false)

		_, err := admin.DisconnectSourceServer(e.ctx, srv.ID, false, true)
		refused(t, "disconnect with a recovery instance", err, 409, "", "loses the way back")
		if _, err := e.userClient(api.RoleOperator).DisconnectSourceServer(e.ctx, srv.ID, true, false); err == nil {
			t.Fatal("an operator disconnected a source server")
		}
		s, err := admin.DisconnectSourceServer(e.ctx, srv.ID, true, true)
		if err != nil || s.Replication.DataReplicationState != api.StateDisconnected {
			t.Fatalf("disconnect --force: %+v (%v)", s.Replication, err)
		}
		if _, err := agentClient.ReplicationConfig(e.ctx, srv.ID); err == nil {
			t.Fatal("the disconnected server's agent certificate still works")
		}
		if _, err := admin.RecoverySnapshot(e.ctx, p1.ID); err == nil {
			t.Fatalf("unlocked PIT %s is still recorded after --delete-data", p1.ID)
		}
		if _, err := repo.LoadPIT(e.ctx, srv.ID, p1.ID); err == nil {
			t.Fatalf("unlocked PIT %s is still in the staging store after --delete-data", p1.ID)
		}
		if _, err := admin.RecoverySnapshot(e.ctx, p2.ID); err != nil {
			t.Fatalf("locked PIT %s was deleted: %v", p2.ID, err)
		}
		if _, err := repo.LoadPIT(e.ctx, srv.ID, p2.ID); err != nil {
			t.Fatalf("locked PIT %s is gone from the staging store: %v", p2.ID, err)
		}
	})
}
