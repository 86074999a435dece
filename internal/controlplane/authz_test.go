package controlplane_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// who may call each route, written out by hand: v viewer, o operator, a admin (of any
// account), sys admin of the system account only, is / ir install tokens for source
// servers / replicators, ag the agent on its own server, rp the replicator on itself
// or its assigned server. A route added to the table without a line here fails the test.
var wantAccess = map[string]string{
	"GET /api/v1/whoami":                                          "v o a is ir if ag rp",
	"GET /api/v1/account":                                         "v o a",
	"GET /api/v1/accounts":                                        "sys",
	"POST /api/v1/accounts":                                       "sys",
	"PATCH /api/v1/accounts/{id}":                                 "sys",
	"GET /api/v1/sites":                                           "v o a",
	"GET /api/v1/sites/{id}":                                      "v o a",
	"POST /api/v1/sites":                                          "a",
	"DELETE /api/v1/sites/{id}":                                   "a",
	"GET /api/v1/tokens":                                          "a",
	"POST /api/v1/tokens":                                         "a",
	"DELETE /api/v1/tokens/{id}":                                  "a",
	"POST /api/v1/source-servers/register":                        "a is",
	"GET /api/v1/source-servers":                                  "v o a",
	"GET /api/v1/source-servers/{id}":                             "v o a ag rp",
	"DELETE /api/v1/source-servers/{id}":                          "a",
	"POST /api/v1/source-servers/{id}/tags":                       "o a",
	"POST /api/v1/source-servers/{id}/certificate":                "ag",
	"PUT /api/v1/source-servers/{id}/volumes":                     "ag",
	"POST /api/v1/source-servers/{id}/group-points/{point}":       "ag",
	"PATCH /api/v1/source-servers/{id}/replication-state":         "ag rp",
	"GET /api/v1/source-servers/{id}/replication-config":          "v o a ag",
	"PUT /api/v1/recovery-snapshots/{id}/lock":                    "a",
	"POST /api/v1/source-servers/{id}/replication/{action}":       "o a",
	"POST /api/v1/source-servers/{id}/recovery-snapshots/request": "o a",
	"GET /api/v1/source-servers/{id}/replication-settings":        "v o a ag rp",
	"PUT /api/v1/source-servers/{id}/replication-settings":        "a",
	"GET /api/v1/source-servers/{id}/launch-settings":             "v o a",
	"PUT /api/v1/source-servers/{id}/launch-settings":             "a",
	"GET /api/v1/source-servers/{id}/recovery-snapshots":          "v o a rp",
	"POST /api/v1/source-servers/{id}/recovery-snapshots":         "rp",
	"POST /api/v1/source-servers/{id}/recovery-snapshots/delete":  "rp",
	"GET /api/v1/recovery-snapshots/{id}":                         "v o a rp",
	"DELETE /api/v1/recovery-snapshots/{id}":                      "a rp",
	"GET /api/v1/recovery-snapshots/{id}/volumes/{name}":          "o a",
	"GET /api/v1/settings/replication":                            "v o a",
	"PUT /api/v1/settings/replication":                            "a",
	"POST /api/v1/replicators/register":                           "a ir",
	"GET /api/v1/replicators":                                     "v o a",
	"GET /api/v1/replicators/{id}":                                "v o a rp",
	"DELETE /api/v1/replicators/{id}":                             "a",
	"POST /api/v1/replicators/{id}/drain":                         "a",
	"POST /api/v1/replicators/{id}/heartbeat":                     "rp",
	"GET /api/v1/replicators/{id}/source-servers":                 "v o a rp",
	"POST /api/v1/replicators/{id}/certificate":                   "rp",
	"POST /api/v1/replicators/{id}/store-key":                     "rp",
	"POST /api/v1/jobs/recovery":                                  "o a",
	"POST /api/v1/jobs/terminate":                                 "o a",
	"GET /api/v1/jobs":                                            "v o a",
	"GET /api/v1/jobs/{id}":                                       "v o a",
	"GET /api/v1/jobs/{id}/log":                                   "v o a",
	"GET /api/v1/recovery-instances":                              "v o a",
	"GET /api/v1/recovery-instances/{id}":                         "v o a",
	"PUT /api/v1/recovery-instances/{id}/termination-protection":  "o a",
	"POST /api/v1/recovery-instances/{id}/start":                  "o a",
	"POST /api/v1/recovery-instances/{id}/reverse-replication":    "o a",
	"POST /api/v1/recovery-instances/{id}/failback":               "o a",
	"POST /api/v1/source-servers/{id}/disconnect":                 "a",
	"POST /api/v1/failback-clients/register":                      "if",
	"GET /api/v1/failback-clients":                                "v o a",
	"POST /api/v1/recovery-instances/{id}/failback-complete":      "o a",
	"GET /api/v1/instances":                                       "v o a",
	"POST /api/v1/instances":                                      "a",
	"GET /api/v1/instances/{id}":                                  "v o a",
	"DELETE /api/v1/instances/{id}":                               "a",
	"PATCH /api/v1/instances/{id}/tags":                           "a",
	"POST /api/v1/instances/{id}/start":                           "a",
	"POST /api/v1/instances/{id}/stop":                            "a",
	"POST /api/v1/consistency-groups":                             "o a",
	"GET /api/v1/consistency-groups":                              "v o a",
	"GET /api/v1/consistency-groups/{id}":                         "v o a",
	"DELETE /api/v1/consistency-groups/{id}":                      "o a",
	"POST /api/v1/consistency-groups/{id}/members":                "o a",
	"POST /api/v1/consistency-groups/{id}/members/remove":         "o a",
	"GET /api/v1/consistency-groups/{id}/points":                  "v o a",
	"POST /api/v1/plans":                                          "o a",
	"GET /api/v1/plans":                                           "v o a",
	"GET /api/v1/plans/{id}":                                      "v o a",
	"DELETE /api/v1/plans/{id}":                                   "o a",
	"GET /api/v1/plans/{id}/versions":                             "v o a",
	"GET /api/v1/plans/{id}/diff":                                 "v o a",
	"POST /api/v1/plans/{id}/runs":                                "o a",
	"GET /api/v1/plans/{id}/runs":                                 "v o a",
	"GET /api/v1/plan-runs/{id}":                                  "v o a",
	"GET /api/v1/plan-runs/{id}/report.html":                      "v o a",
	"PUT /api/v1/plan-secrets/{id}":                               "a",
	"GET /api/v1/plan-secrets":                                    "o a",
	"DELETE /api/v1/plan-secrets/{id}":                            "a",
	"GET /api/v1/audit":                                           "a",
	"GET /api/v1/events":                                          "v o a",
	"GET /metrics":                                                "v o a",
}

// A reversed agent proves itself with its recovery instance's reverse key, in the body.
// So do failback clients, with the secret of their registration, in a header.
var publicRoutes = []string{"GET /api/openapi.json", "GET /api/v1/health", "GET /api/v1/ca", "POST /api/v1/source-servers/register-reversed",
	"GET /api/v1/failback-clients/self", "POST /api/v1/failback-clients/self/progress", "POST /api/v1/failback-clients/self/diff"}

// TestEveryRouteEnforcesItsRoles walks the route table (through the OpenAPI document,
// which is generated from it) and calls every route as every kind of caller. A caller
// the route allows gets past authorization (the deliberately bad body then earns a
// 400, or the event stream opens); any other gets 403, and no credentials get 401.
func TestEveryRouteEnforcesItsRoles(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		// Fixture: replicator r1 (site default) serves server A; replicator r2 (site dr)
		// serves server B; each has a snapshot.
		if _, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "dr"}); err != nil {
			t.Fatal(err)
		}
		r1, r1reg := e.replicator("r1", "default")
		r2, r2reg := e.replicator("r2", "dr")
		_, a := e.agent("machine-a")
		_, b := e.agent("machine-b")
		dr := "dr"
		if _, err := e.admin.SetServerReplicationSettings(e.ctx, b.SourceServer.ID, api.ReplicationSettingsOverrides{TargetSite: &dr}); err != nil {
			t.Fatal(err)
		}
		snapA, err := r1.CreateRecoverySnapshot(e.ctx, a.SourceServer.ID, api.CreateRecoverySnapshotRequest{Time: e.clock.Now(),
			Level: consistency.Filesystem, Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r2.CreateRecoverySnapshot(e.ctx, b.SourceServer.ID, api.CreateRecoverySnapshotRequest{Time: e.clock.Now(),
			Level: consistency.Filesystem, Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1}}}); err != nil {
			t.Fatal(err)
		}
		other, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
		if err != nil {
			t.Fatal(err)
		}

		type caller struct {
			key         string // its name in wantAccess
			token, cert string
		}
		callers := []caller{
			{key: "v", token: e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})},
			{key: "o", token: e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleOperator})},
			{key: "a", token: e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})},
			{key: "tenant-admin", token: other.AdminToken},
			{key: "is", token: e.installToken(api.ScopeSourceServer, 0)},
			{key: "ir", token: e.installToken(api.ScopeReplicator, 0)},
			{key: "if", token: e.installToken(api.ScopeFailback, 0)},
			{key: "ag", cert: a.Certificate},
			{key: "ag-other", cert: b.Certificate},
			{key: "rp", cert: r1reg.Certificate},
			{key: "rp-other", cert: r2reg.Certificate},
		}

		doc, err := e.admin.OpenAPI(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for path, item := range doc["paths"].(map[string]any) {
			for method, opAny := range item.(map[string]any) {
				key := strings.ToUpper(method) + " " + path
				seen[key] = true
				acc := opAny.(map[string]any)["x-lifeboat-access"].(map[string]any)
				if acc["public"].(bool) {
					if !slices.Contains(publicRoutes, key) {
						t.Errorf("%s is public, but the test does not expect it to be", key)
					}
					continue
				}
				want, ok := wantAccess[key]
				if !ok {
					t.Errorf("%s is not in wantAccess: say who may call it", key)
					continue
				}
				allowed := strings.Fields(want)
				// Fill {id} with the resource the allowed agent/replicator may touch.
				target := a.SourceServer.ID
				switch {
				case strings.HasPrefix(path, "/api/v1/replicators/{id}"):
					target = r1reg.Replicator.ID
				case strings.HasPrefix(path, "/api/v1/recovery-snapshots/{id}"):
					target = snapA.ID
				case strings.HasPrefix(path, "/api/v1/accounts/{id}"):
					target = e.cp.SystemAccountID()
				case strings.HasPrefix(path, "/api/v1/sites/{id}"):
					target = "default"
				case strings.HasPrefix(path, "/api/v1/tokens/{id}"):
					target = "0123456789abcdef"
				}
				url := strings.Replace(path, "{id}", target, 1)
				if got := e.status(e.httpClient(""), strings.ToUpper(method), url, "", `{"bogus":1}`); got != http.StatusUnauthorized {
					t.Errorf("%s without credentials: %d, want 401", key, got)
				}
				for _, c := range callers {
					ok := slices.Contains(allowed, c.key)
					switch c.key {
					case "a":
						ok = ok || slices.Contains(allowed, "sys")
					case "tenant-admin": // an admin, but not of the system account
						ok = slices.Contains(allowed, "a")
					case "ag-other", "rp-other": // only where no {id} names someone else's resource
						ok = slices.Contains(allowed, c.key[:2]) && !strings.Contains(path, "{id}")
					}
					got := e.status(e.httpClient(c.cert), strings.ToUpper(method), url, c.token, `{"bogus":1}`)
					switch {
					case ok && (got == http.StatusForbidden || got == http.StatusUnauthorized):
						t.Errorf("%s as %s: %d, want it allowed", key, c.key, got)
					case !ok && got != http.StatusForbidden:
						t.Errorf("%s as %s: %d, want 403", key, c.key, got)
					}
				}
			}
		}
		for key := range wantAccess {
			if !seen[key] {
				t.Errorf("wantAccess names %s, which is not a route", key)
			}
		}
	})
}
