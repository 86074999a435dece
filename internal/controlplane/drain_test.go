package controlplane_test

import (
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// A drained replicator's servers move at once to the least-loaded other live replicator
// of its site, and it takes no new ones; with no other replicator, servers stay where
// they are. Back in service, it takes servers again.
func TestDrainMovesAReplicatorsServers(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		r1, r1reg := e.replicator("r1", "default")
		if _, err := r1.Heartbeat(e.ctx, r1reg.Replicator.ID, api.HeartbeatRequest{}); err != nil {
			t.Fatal(err)
		}
		_, a := e.agent("a")
		on := func(id string) string {
			t.Helper()
			s, err := e.admin.SourceServer(e.ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			return s.ReplicatorID
		}
		// Alone in its site: draining moves nothing.
		r, err := e.admin.DrainReplicator(e.ctx, r1reg.Replicator.ID, true)
		if err != nil || !r.Draining || r.AssignedSourceServers != 1 || on(a.SourceServer.ID) != r1reg.Replicator.ID {
			t.Fatalf("draining the only replicator: %+v, %v, a on %s", r, err, on(a.SourceServer.ID))
		}
		r2, r2reg := e.replicator("r2", "default")
		if _, err := r2.Heartbeat(e.ctx, r2reg.Replicator.ID, api.HeartbeatRequest{}); err != nil {
			t.Fatal(err)
		}
		if got := on(a.SourceServer.ID); got != r2reg.Replicator.ID {
			t.Fatalf("a second replicator beat: a stays on %s, want r2", got)
		}
		_, b := e.agent("b")
		if got := on(b.SourceServer.ID); got != r2reg.Replicator.ID {
			t.Fatalf("a new server went to %s while r1 drains, want r2", got)
		}
		r, err = e.admin.DrainReplicator(e.ctx, r1reg.Replicator.ID, false)
		if err != nil || r.Draining {
			t.Fatalf("undrain: %+v, %v", r, err)
		}
		_, c := e.agent("c")
		if got := on(c.SourceServer.ID); got != r1reg.Replicator.ID {
			t.Fatalf("back in service, r1 did not take the next server (it went to %s)", got)
		}
		// Draining r2 moves both of its servers to r1.
		if _, err := e.admin.DrainReplicator(e.ctx, r2reg.Replicator.ID, true); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{a.SourceServer.ID, b.SourceServer.ID, c.SourceServer.ID} {
			if got := on(s); got != r1reg.Replicator.ID {
				t.Fatalf("after draining r2, %s is on %s", s, got)
			}
		}
		_, err = e.userClient(api.RoleOperator).DrainReplicator(e.ctx, r1reg.Replicator.ID, true)
		wantAPIError(t, err, 403, "")
	})
}
