package recovery_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// fakeCatalog is the state database of one account, as planning reads it.
type fakeCatalog struct {
	servers  map[string]db.SourceServer
	settings map[string]api.LaunchSettings
	snaps    []db.Snapshot // every PIT, newest first
	gotLimit int           // the limit ConsistentSnapshots was last asked for
}

func (f *fakeCatalog) SourceServer(id string) (db.SourceServer, error) {
	s, ok := f.servers[id]
	if !ok {
		return s, api.NotFound("source server %s was not found", id)
	}
	return s, nil
}

func (f *fakeCatalog) StagingStoreURL(s db.SourceServer) (string, error) {
	return "file:///staging/" + s.AccountID, nil
}

func (f *fakeCatalog) LaunchSettings(serverID string) (api.LaunchSettings, error) {
	return f.settings[serverID], nil
}

func (f *fakeCatalog) Snapshot(id string) (db.Snapshot, error) {
	for _, s := range f.snaps {
		if s.ID == id {
			return s, nil
		}
	}
	return db.Snapshot{}, api.NotFound("recovery snapshot %s was not found", id)
}

func (f *fakeCatalog) ConsistentSnapshots(serverID string, at *time.Time, limit int) ([]db.Snapshot, error) {
	f.gotLimit = limit
	var out []db.Snapshot
	for _, s := range f.snaps {
		if s.SourceServerID == serverID && (s.Level == consistency.Filesystem || s.Level == consistency.Crash) &&
			(at == nil || !s.Time.After(*at)) && len(out) < limit {
			out = append(out, s)
		}
	}
	return out, nil
}

// fakeStaging is the staging stores: the PITs they still hold, and errors to give.
type fakeStaging struct {
	held    map[string]bool  // PIT ids
	loadErr map[string]error // by PIT id
	openErr error
	opened  []string // the store URLs opened
}

func (f *fakeStaging) PITs(_ context.Context, accountID, url string) (recovery.PITReader, error) {
	if f.openErr != nil {
		return nil, f.openErr
	}
	f.opened = append(f.opened, url)
	return f, nil
}

func (f *fakeStaging) LoadPIT(_ context.Context, snap api.RecoverySnapshot) (store.PIT, error) {
	if err := f.loadErr[snap.ID]; err != nil {
		return store.PIT{}, err
	}
	if !f.held[snap.ID] {
		return store.PIT{}, store.ErrNotFound
	}
	return store.PIT{ID: snap.ID}, nil
}

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// twoServers is a catalog of servers s-1 (PITs p-13 newest, p-12 fuzzy, p-11, p-10)
// and s-2 (p-20), both of account a-1.
func twoServers() *fakeCatalog {
	snap := func(id, server string, level consistency.Level, age time.Duration) db.Snapshot {
		return db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: id, SourceServerID: server, Level: level, Time: t0.Add(-age)}, AccountID: "a-1"}
	}
	return &fakeCatalog{
		servers: map[string]db.SourceServer{
			"s-1": {SourceServer: api.SourceServer{ID: "s-1", AccountID: "a-1"}},
			"s-2": {SourceServer: api.SourceServer{ID: "s-2", AccountID: "a-1"}},
		},
		settings: map[string]api.LaunchSettings{},
		snaps: []db.Snapshot{snap("p-20", "s-2", consistency.Crash, time.Minute), snap("p-13", "s-1", consistency.Filesystem, time.Minute),
			snap("p-12", "s-1", consistency.None, 2*time.Minute), snap("p-11", "s-1", consistency.Crash, time.Hour),
			snap("p-10", "s-1", consistency.Filesystem, 2*time.Hour)},
	}
}

func request(drill bool, servers ...api.RecoveryServer) api.StartRecoveryRequest {
	return api.StartRecoveryRequest{SourceServers: servers, IsDrill: drill}
}

// plan resolves req and chooses its PITs.
func plan(t *testing.T, cat recovery.Catalog, st recovery.Staging, req api.StartRecoveryRequest, paths recovery.HostPaths) (*recovery.LaunchPlan, error) {
	t.Helper()
	p, err := recovery.ResolveLaunch(req, cat, paths)
	if err != nil {
		return nil, err
	}
	return p, p.ChoosePITs(context.Background(), st)
}

// wantAPIError fails unless err is an API error with status and a message holding want.
func wantAPIError(t *testing.T, err error, status int, want string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an API error (want %d %q)", err, status, want)
	}
	if ae.Status != status || !strings.Contains(ae.Message, want) {
		t.Fatalf("error %d %q, want %d and %q", ae.Status, ae.Message, status, want)
	}
}

func TestPlanTakesTheNewestConsistentPIT(t *testing.T) {
	cat := twoServers()
	st := &fakeStaging{held: map[string]bool{"p-13": true, "p-11": true, "p-20": true}}
	p, err := plan(t, cat, st, request(false, api.RecoveryServer{SourceServerID: "s-1"}, api.RecoveryServer{SourceServerID: "s-2"}), recovery.HostPaths{})
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{p.Servers[0].PIT.ID, p.Servers[1].PIT.ID}; got[0] != "p-13" || got[1] != "p-20" {
		t.Fatalf("PITs %v, want [p-13 p-20]", got)
	}
	if cat.gotLimit != 10 {
		t.Errorf("%d candidates asked for, want the 10 newest", cat.gotLimit)
	}
	if len(st.opened) != 2 || st.opened[0] != "file:///staging/a-1" {
		t.Errorf("stores opened: %v, want each server's, once", st.opened)
	}
}

func TestPlanRefusesAPITOfAnotherServer(t *testing.T) {
	_, err := plan(t, twoServers(), &fakeStaging{held: map[string]bool{"p-20": true}},
		request(true, api.RecoveryServer{SourceServerID: "s-1", RecoverySnapshotID: "p-20"}), recovery.HostPaths{})
	wantAPIError(t, err, http.StatusBadRequest, "recovery snapshot p-20 is a PIT of source server s-2, not of s-1")
}

func TestPlanRefusesAServerWithoutAConsistentPIT(t *testing.T) {
	cat := twoServers()
	at := t0.Add(-3 * time.Hour)
	req := request(true, api.RecoveryServer{SourceServerID: "s-1"})
	req.At = &at
	_, err := recovery.ResolveLaunch(req, cat, recovery.HostPaths{})
	wantAPIError(t, err, http.StatusConflict, "source server s-1 has no consistent PIT at or before 2025-06-01T09:00:00Z")

	cat.snaps = cat.snaps[:3] // s-1 keeps p-13, made fuzzy, and the fuzzy p-12
	cat.snaps[1].Level = consistency.None
	_, err = recovery.ResolveLaunch(request(true, api.RecoveryServer{SourceServerID: "s-1"}), cat, recovery.HostPaths{})
	wantAPIError(t, err, http.StatusConflict, "source server s-1 has no consistent PIT yet")
}

func TestPlanFallsBackPastRetention(t *testing.T) {
	// Retention removed p-13 from the store first: the next consistent PIT is launched,
	// never the fuzzy p-12 between them.
	st := &fakeStaging{held: map[string]bool{"p-12": true, "p-11": true, "p-10": true}}
	p, err := plan(t, twoServers(), st, request(true, api.RecoveryServer{SourceServerID: "s-1"}), recovery.HostPaths{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Servers[0].PIT.ID != "p-11" {
		t.Fatalf("PIT %s launched, want p-11", p.Servers[0].PIT.ID)
	}
	if j := p.Job(t0, "a-1", "token:t-1"); j.Servers[0].SnapshotID != "p-11" {
		t.Fatalf("the job launches %s, want p-11", j.Servers[0].SnapshotID)
	}

	// A PIT the request names is not replaced by another.
	_, err = plan(t, twoServers(), st, request(true, api.RecoveryServer{SourceServerID: "s-1", RecoverySnapshotID: "p-13"}), recovery.HostPaths{})
	wantAPIError(t, err, http.StatusConflict, "PIT p-13 of s-1 is past retention")

	_, err = plan(t, twoServers(), &fakeStaging{}, request(true, api.RecoveryServer{SourceServerID: "s-1"}), recovery.HostPaths{})
	wantAPIError(t, err, http.StatusConflict, "none of the 3 newest consistent PITs of s-1 is still in the staging store")
}

func TestPlanStagingStoreErrors(t *testing.T) {
	req := request(true, api.RecoveryServer{SourceServerID: "s-1"})
	_, err := plan(t, twoServers(), &fakeStaging{openErr: errors.New("connection refused")}, req, recovery.HostPaths{})
	wantAPIError(t, err, http.StatusServiceUnavailable, "cannot read the staging store of s-1: connection refused")

	_, err = plan(t, twoServers(), &fakeStaging{loadErr: map[string]error{"p-13": errors.New("timeout")}}, req, recovery.HostPaths{})
	wantAPIError(t, err, http.StatusServiceUnavailable, "cannot read PIT p-13 from the staging store: timeout")

	// A refusal of the store's (a manifest put back) is passed on as it is, not retried
	// with an older PIT.
	rollback := api.Conflict("the staging store's manifest of PIT p-13 is not the one recorded")
	_, err = plan(t, twoServers(), &fakeStaging{held: map[string]bool{"p-11": true}, loadErr: map[string]error{"p-13": rollback}}, req, recovery.HostPaths{})
	if err != rollback {
		t.Fatalf("error %v, want the store's refusal", err)
	}
}

func TestPlanRefusesHostPathsOutsideTheRoots(t *testing.T) {
	cat := twoServers()
	cat.settings["s-1"] = api.LaunchSettings{ImageTarget: &api.ImageTarget{Dir: "/srv/lifeboat-other", Devices: []string{"/srv/lifeboat/disk0"}}}
	st := &fakeStaging{held: map[string]bool{"p-13": true}}
	req := request(true, api.RecoveryServer{SourceServerID: "s-1"})
	tenant := recovery.HostPaths{Roots: []string{"/srv/lifeboat"}}

	_, err := plan(t, cat, st, req, tenant)
	wantAPIError(t, err, http.StatusForbidden, "path /srv/lifeboat-other is on the control plane's host, outside the directories this account may use (/srv/lifeboat)")

	cat.settings["s-1"].ImageTarget.Dir = "/srv/lifeboat/images"
	if _, err := plan(t, cat, st, req, tenant); err != nil {
		t.Fatalf("paths under the root: %v", err)
	}
	cat.settings["s-1"].ImageTarget.Dir = "/etc"
	if _, err := plan(t, cat, st, req, recovery.HostPaths{System: true}); err != nil {
		t.Fatalf("the system account: %v", err)
	}
}

func TestHostPathsCheck(t *testing.T) {
	h := recovery.HostPaths{Roots: []string{"/srv/a", "/data"}}
	for p, ok := range map[string]bool{"/srv/a": true, "/srv/a/x/y": true, "/data/d": true, "/srv/ab": false,
		"/srv/a/../b": false, "/srv": false, "relative/path": false} {
		if err := h.Check(p); (err == nil) != ok {
			t.Errorf("Check(%s) = %v, want allowed %v", p, err, ok)
		}
	}
	if err := (recovery.HostPaths{}).Check("/srv/a"); err == nil {
		t.Error("an account without roots may name a host path")
	}
}

func TestPlanJob(t *testing.T) {
	at := t0.Add(-time.Minute)
	req := request(true, api.RecoveryServer{SourceServerID: "s-1"}, api.RecoveryServer{SourceServerID: "s-2"})
	req.At, req.NetworkAccess = &at, true
	p, err := plan(t, twoServers(), &fakeStaging{held: map[string]bool{"p-13": true, "p-20": true}}, req, recovery.HostPaths{})
	if err != nil {
		t.Fatal(err)
	}
	j := p.Job(t0, "a-1", "token:t-1")
	if j.Type != api.JobLaunch || j.InitiatedBy != api.InitiatedStartDrill || !j.IsDrill || j.Status != api.JobPending ||
		j.AccountID != "a-1" || j.CreatedBy != "token:t-1" || !j.CreatedAt.Equal(t0) || !api.ValidID(api.PrefixJob, j.ID) {
		t.Fatalf("job %+v", j)
	}
	if j.Params.At == nil || !j.Params.At.Equal(at) || !j.Params.NetworkAccess || j.Params.Force {
		t.Fatalf("job params %+v", j.Params)
	}
	if len(j.Servers) != 2 || j.Servers[0].RecoveryInstanceID == j.Servers[1].RecoveryInstanceID ||
		!api.ValidID(api.PrefixRecoveryInstance, j.Servers[1].RecoveryInstanceID) || j.Servers[1].LaunchStatus != api.LaunchPending {
		t.Fatalf("job servers %+v", j.Servers)
	}
	req.IsDrill = false
	if j := (&recovery.LaunchPlan{Request: req}).Job(t0, "a-1", "u"); j.InitiatedBy != api.InitiatedStartRecovery || j.IsDrill {
		t.Fatalf("a recovery's job %+v", j)
	}
}
