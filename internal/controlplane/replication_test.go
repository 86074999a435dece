package controlplane_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

func TestReplicationControlAndSnapshotRequests(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		agent, reg := e.agent("machine-ctl")
		id := reg.SourceServer.ID
		op := e.userClient(api.RoleOperator)
		cfg, err := agent.ReplicationConfig(e.ctx, id)
		if err != nil || cfg.Control.Desired != api.DesiredReplicating || cfg.Control.Generation != 0 {
			t.Fatalf("initial control %+v %v", cfg.Control, err)
		}
		// Pause and resume; the state follows at once.
		if _, err := op.ReplicationAction(e.ctx, id, api.ActionPause); err != nil {
			t.Fatal(err)
		}
		s, _ := e.admin.SourceServer(e.ctx, id)
		if s.Replication.DataReplicationState != api.StatePaused {
			t.Fatalf("after pause: %s", s.Replication.DataReplicationState)
		}
		if _, err := op.RequestSnapshot(e.ctx, id); !isStatus(err, 409) {
			t.Fatalf("a snapshot request while paused: %v, want 409", err)
		}
		if _, err := op.ReplicationAction(e.ctx, id, api.ActionRetry); !isStatus(err, 409) {
			t.Fatalf("retry while paused: %v, want 409", err)
		}
		if _, err := op.ReplicationAction(e.ctx, id, api.ActionResume); err != nil {
			t.Fatal(err)
		}
		// Retry bumps the generation (a new session and a rescan) and clears the error.
		stalled := api.StateStalled
		if _, err := agent.UpdateReplicationState(e.ctx, id, api.ReplicationStateUpdate{DataReplicationState: &stalled,
			Error: &api.ReplicationError{Code: api.ErrStagingStorageFull, Message: "free space on the staging disk"}}); err != nil {
			t.Fatal(err)
		}
		ctl, err := op.ReplicationAction(e.ctx, id, api.ActionRetry)
		if err != nil || ctl.Generation != 1 {
			t.Fatalf("retry: %+v %v", ctl, err)
		}
		s, _ = e.admin.SourceServer(e.ctx, id)
		if s.Replication.Error != nil {
			t.Fatalf("retry left the error %+v", s.Replication.Error)
		}
		// Stop frees the quota; start counts again and bumps the generation.
		if _, err := op.ReplicationAction(e.ctx, id, api.ActionStop); err != nil {
			t.Fatal(err)
		}
		acct, _ := e.admin.Account(e.ctx)
		if acct.ReplicatingSourceServers != 0 {
			t.Fatalf("a stopped server counts against the quota: %d", acct.ReplicatingSourceServers)
		}
		ctl, err = op.ReplicationAction(e.ctx, id, api.ActionStart)
		if err != nil || ctl.Generation != 2 || ctl.Desired != api.DesiredReplicating {
			t.Fatalf("start: %+v %v", ctl, err)
		}
		if _, err := op.ReplicationAction(e.ctx, id, "explode"); !isStatus(err, 400) {
			t.Fatalf("an unknown action: %v", err)
		}
		if _, err := e.userClient(api.RoleViewer).ReplicationAction(e.ctx, id, api.ActionStop); !isStatus(err, 403) {
			t.Fatalf("a viewer stopping replication: %v", err)
		}

		// A snapshot request reaches the agent and the replicator, and is cleared by the
		// first PIT at least as recent.
		req, err := op.RequestSnapshot(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := op.RequestSnapshot(e.ctx, id)
		if again.ID != req.ID {
			t.Fatal("a second request while one is pending made a new one")
		}
		cfg, _ = agent.ReplicationConfig(e.ctx, id)
		if cfg.Control.SnapshotRequest == nil || cfg.Control.SnapshotRequest.ID != req.ID {
			t.Fatalf("the agent does not see the request: %+v", cfg.Control)
		}
		r1, r1reg := e.replicator("r1", "default")
		assigned, err := r1.AssignedSourceServers(e.ctx, r1reg.Replicator.ID)
		if err != nil || len(assigned.Items) != 1 || len(assigned.Items[0].CertificateSerials) != 1 || assigned.Items[0].Control.SnapshotRequest == nil {
			t.Fatalf("assigned: %+v %v", assigned, err)
		}
		old := req.RequestedAt.Add(-time.Second)
		if _, err := r1.CreateRecoverySnapshot(e.ctx, id, api.CreateRecoverySnapshotRequest{Time: old, Level: consistency.Filesystem,
			Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1}}}); err != nil {
			t.Fatal(err)
		}
		cfg, _ = agent.ReplicationConfig(e.ctx, id)
		if cfg.Control.SnapshotRequest == nil {
			t.Fatal("an older PIT satisfied the request")
		}
		if _, err := r1.CreateRecoverySnapshot(e.ctx, id, api.CreateRecoverySnapshotRequest{Time: req.RequestedAt, Level: consistency.Filesystem,
			Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1}}}); err != nil {
			t.Fatal(err)
		}
		cfg, _ = agent.ReplicationConfig(e.ctx, id)
		if cfg.Control.SnapshotRequest != nil {
			t.Fatal("the request is still pending after a PIT at its time")
		}
	})
}

func TestAgentNotSeen(t *testing.T) {
	e := &env{t: t, kind: "sqlite", clock: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}, dataDir: t.TempDir(),
		ctx: t.Context(), agentTimeout: 4 * time.Second}
	e.open(t.TempDir() + "/cp.db")
	agent, reg := e.agent("machine-quiet")
	id := reg.SourceServer.ID
	if _, err := agent.ReplicationConfig(e.ctx, id); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := e.admin.SourceServer(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if s.Replication.DataReplicationState == api.StateDisconnected && s.Replication.Error != nil &&
			s.Replication.Error.Code == api.ErrAgentNotSeen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not become DISCONNECTED/AGENT_NOT_SEEN: %+v", s.Replication)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The agent reports again: the state is its own again.
	cont := api.StateContinuous
	st, err := agent.UpdateReplicationState(e.ctx, id, api.ReplicationStateUpdate{DataReplicationState: &cont, ClearError: true})
	if err != nil || st.DataReplicationState != api.StateContinuous || st.Error != nil {
		t.Fatalf("after the agent reported: %+v %v", st, err)
	}
}

func isStatus(err error, status int) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == status
}
