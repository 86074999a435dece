package controlplane_test

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
)

// recordPITs records PITs of server directly in the database, one a second ending at
// end, every fifth of level none and the others crash; it returns their times.
func recordPITs(t *testing.T, e *env, server api.SourceServer, n int, end time.Time) []time.Time {
	t.Helper()
	var times []time.Time
	err := e.cp.DB().Update(e.ctx, func(tx *db.Tx) error {
		for i := range n {
			at := end.Add(-time.Duration(n-1-i) * time.Second)
			level := consistency.Crash
			if i%5 == 4 {
				level = consistency.None
			}
			times = append(times, at)
			err := tx.CreateSnapshot(db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: fmt.Sprintf("pit-%017d", i+1),
				SourceServerID: server.ID, Time: at, Level: level, Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1 << 20}},
				CreatedAt: at}, AccountID: server.AccountID})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return times
}

// get sends a GET with a bearer token and returns the answer's status and body.
func (e *env) get(path, token string) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest("GET", e.cp.URL()+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := e.httpClient("").Do(req)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The PIT listing narrows to a time range (after inclusive, before exclusive) and a
// level, page by page; bad parameters are refused saying what is expected.
func TestSnapshotListingByTimeAndLevel(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		_, reg := e.agent("m1")
		times := recordPITs(t, e, reg.SourceServer, 20, e.clock.Now())
		viewerToken := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
		viewer := e.client(viewerToken)
		none := consistency.None
		ids := func(q api.SnapshotQuery) []string {
			t.Helper()
			var out []string
			_, err := api.EachPage(e.ctx, "", viewer.FindRecoverySnapshotPages(reg.SourceServer.ID, q), func(p api.RecoverySnapshot) (bool, error) {
				out = append(out, strings.TrimLeft(strings.TrimPrefix(p.ID, "pit-"), "0"))
				return false, nil
			})
			if err != nil {
				t.Fatalf("%+v: %v", q, err)
			}
			return out
		}
		for _, c := range []struct {
			q    api.SnapshotQuery
			want string
		}{
			{api.SnapshotQuery{After: times[16], Limit: 2}, "[20 19 18 17]"},
			{api.SnapshotQuery{After: times[2], Before: times[5], Limit: 1}, "[5 4 3]"},
			{api.SnapshotQuery{Level: &none, Limit: 3}, "[20 15 10 5]"},
			{api.SnapshotQuery{Level: &none, Before: times[14]}, "[10 5]"},
		} {
			if got := fmt.Sprint(ids(c.q)); got != c.want {
				t.Errorf("%+v listed %s, want %s", c.q, got, c.want)
			}
		}
		path := "/api/v1/source-servers/" + reg.SourceServer.ID + "/recovery-snapshots?"
		for q, say := range map[string]string{
			"after=yesterday":             "after must be an RFC 3339 time",
			"before=2025-13-01T00:00:00Z": "before must be an RFC 3339 time",
			"level=fuzzy":                 "level must be filesystem, crash or none",
			"after=" + url.QueryEscape(times[5].Format(time.RFC3339Nano)) + "&before=" + url.QueryEscape(times[5].Format(time.RFC3339Nano)): "after is inclusive, before exclusive",
		} {
			if code, body := e.get(path+q, viewerToken); code != 400 || !strings.Contains(body, say) {
				t.Errorf("%s: %d %s, want 400 saying %q", q, code, body, say)
			}
		}
	})
}

// A drill's job records, per server, the PIT it launches, that PIT's time and its RPO:
// how much older it is than the newest data the replica held (the agent's lastDataAt),
// in the job and in its USING_PREVIOUS_SNAPSHOT entry. An agent that reports only its
// lag gives the control plane lastDataAt as the report's receipt minus the lag.
func TestRecoveryJobRecordsItsRPO(t *testing.T) {
	e := start(t, db.SQLite)
	repo := recoverytest.Store(t, e.cp)
	agent, reg := e.agent("m1")
	srv := reg.SourceServer
	now := e.clock.Now()
	p, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Filesystem, now.Add(-10*time.Second),
		recoverytest.Volume{Name: "vda", Image: image(t, 1<<20, 1)})
	lag := 4.0
	st, err := agent.UpdateReplicationState(e.ctx, srv.ID, api.ReplicationStateUpdate{LagSeconds: &lag})
	if err != nil || st.LastDataAt == nil || !st.LastDataAt.Equal(now.Add(-4*time.Second)) {
		t.Fatalf("a report of a 4 s lag at %s gave lastDataAt %v (%v)", now, st.LastDataAt, err)
	}
	st, err = agent.UpdateReplicationState(e.ctx, srv.ID, api.ReplicationStateUpdate{LagSeconds: &lag, LastDataAt: ptr(now.Add(-2500 * time.Millisecond))})
	if err != nil || st.LastDataAt == nil || !st.LastDataAt.Equal(now.Add(-2500*time.Millisecond)) {
		t.Fatalf("lastDataAt reported as %s reads %v (%v)", now.Add(-2500*time.Millisecond), st.LastDataAt, err)
	}
	imageSettings(t, e, srv.ID)
	op := e.userClient(api.RoleOperator)
	job, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}, IsDrill: true})
	if err != nil {
		t.Fatal(err)
	}
	job = recoverytest.WaitJob(t, op, job.ID, time.Minute)
	js := job.Servers[0]
	if js.SnapshotID != p.ID || js.LaunchStatus != api.LaunchLaunched || js.RPOSeconds == nil || *js.RPOSeconds != 7.5 ||
		js.SnapshotTime == nil || !js.SnapshotTime.Equal(p.Time.Truncate(time.Millisecond)) {
		t.Fatalf("the drill's server: %+v (rpo %v, pit time %v), want PIT %s of %s with an RPO of 7.5 s", js, js.RPOSeconds, js.SnapshotTime, p.ID, p.Time)
	}
	log, err := op.JobLog(e.ctx, job.ID, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range log.Items {
		if ev.Type != api.EventUsingPreviousSnapshot {
			continue
		}
		found = true
		if !strings.Contains(ev.Message, p.ID) || !strings.Contains(ev.Message, "RPO 7.5s") || ev.Detail["rpoSeconds"] != 7.5 {
			t.Errorf("%s: %q %v does not give the RPO of 7.5 s", ev.Type, ev.Message, ev.Detail)
		}
	}
	if !found {
		t.Fatalf("no %s entry in %+v", api.EventUsingPreviousSnapshot, log.Items)
	}
}
