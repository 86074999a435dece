package controlplane_test

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestSourceServerTags: an operator sets and removes a source server's tags (audited);
// describe and both list views show them and the list selects servers carrying all the
// tags asked for; a viewer is refused, another account's server is not found, and bad
// tags are refused.
func TestSourceServerTags(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		op, viewer := e.userClient(api.RoleOperator), e.userClient(api.RoleViewer)
		_, web := e.agent("m-web")
		_, db := e.agent("m-db")
		webID, dbID := web.SourceServer.ID, db.SourceServer.ID

		s, err := op.UpdateSourceServerTags(e.ctx, webID, api.UpdateSourceServerTagsRequest{Set: map[string]string{"app": "shop", "tier": "web", "old": "x"}})
		if err != nil || !maps.Equal(s.Tags, map[string]string{"app": "shop", "tier": "web", "old": "x"}) {
			t.Fatalf("tag web: %+v, %v", s.Tags, err)
		}
		s, err = e.admin.UpdateSourceServerTags(e.ctx, webID, api.UpdateSourceServerTagsRequest{Remove: []string{"old", "absent"}})
		if err != nil || !maps.Equal(s.Tags, map[string]string{"app": "shop", "tier": "web"}) {
			t.Fatalf("remove old: %+v, %v", s.Tags, err)
		}
		if _, err := op.UpdateSourceServerTags(e.ctx, dbID, api.UpdateSourceServerTagsRequest{Set: map[string]string{"app": "shop", "tier": "db"}}); err != nil {
			t.Fatal(err)
		}
		if got, err := viewer.SourceServer(e.ctx, webID); err != nil || got.Tags["tier"] != "web" {
			t.Fatalf("describe: %+v, %v", got.Tags, err)
		}

		for _, full := range []bool{false, true} {
			for sel, want := range map[string][]string{
				"app=shop":          {dbID, webID},
				"app=shop,tier=web": {webID},
				"tier=Web":          nil,
			} {
				tags, _ := api.ParseTagFilter(strings.Split(sel, ","))
				got, err := viewer.AllSourceServers(e.ctx, api.SourceServerFilter{Tags: tags, Full: full})
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for _, s := range got {
					ids = append(ids, s.ID)
					if !maps.Equal(s.Tags, map[string]string{"app": "shop", "tier": map[string]string{webID: "web", dbID: "db"}[s.ID]}) {
						t.Errorf("full %v: %s listed with tags %v", full, s.ID, s.Tags)
					}
				}
				if !sameIDs(ids, want) {
					t.Errorf("full %v: tag %s lists %v, want %v", full, sel, ids, want)
				}
			}
		}

		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{TargetID: webID, Action: "source-server.tag"})
		if err != nil || len(audit.Items) != 2 || audit.Items[0].TargetKind != "source-server" {
			t.Fatalf("audit: %+v, %v", audit, err)
		}

		// A viewer may not tag; another account's server is not found; bad tags are refused.
		_, err = viewer.UpdateSourceServerTags(e.ctx, webID, api.UpdateSourceServerTagsRequest{Set: map[string]string{"a": "b"}})
		wantAPIError(t, err, 403, api.CodeForbidden)
		tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
		if err != nil {
			t.Fatal(err)
		}
		foreign := recoveryServerIn(t, e, tenant.Account.ID, "m-tenant")
		_, err = op.UpdateSourceServerTags(e.ctx, foreign, api.UpdateSourceServerTagsRequest{Set: map[string]string{"a": "b"}})
		wantAPIError(t, err, 404, api.CodeNotFound)
		_, err = e.client(tenant.AdminToken).UpdateSourceServerTags(e.ctx, webID, api.UpdateSourceServerTagsRequest{Set: map[string]string{"a": "b"}})
		wantAPIError(t, err, 404, api.CodeNotFound)
		if l, err := e.client(tenant.AdminToken).AllSourceServers(e.ctx, api.SourceServerFilter{Tags: map[string]string{"app": "shop"}}); err != nil || len(l) != 0 {
			t.Errorf("the tenant's servers tagged app=shop: %+v, %v", l, err)
		}
		for name, req := range map[string]api.UpdateSourceServerTagsRequest{
			"nothing":         {},
			"a bad key":       {Set: map[string]string{`a"b`: "c"}},
			"set and removed": {Set: map[string]string{"a": "b"}, Remove: []string{"a"}},
		} {
			_, err := op.UpdateSourceServerTags(e.ctx, webID, req)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != 400 {
				t.Errorf("%s: %v, want 400", name, err)
			}
		}
		many := map[string]string{}
		for i := range 49 {
			many[strings.Repeat("k", i+1)] = "v"
		}
		_, err = op.UpdateSourceServerTags(e.ctx, webID, api.UpdateSourceServerTagsRequest{Set: many})
		if ae := wantAPIError(t, err, 400, api.CodeInvalid); !strings.Contains(ae.Message, "51 tags") {
			t.Errorf("51 tags: %q", ae.Message)
		}
		if status := e.status(e.httpClient(""), "GET", "/api/v1/source-servers?tag=novalue", e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer}), ""); status != 400 {
			t.Errorf("tag=novalue: %d, want 400", status)
		}
	})
}

func sameIDs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]bool{}
	for _, x := range a {
		seen[x] = true
	}
	for _, x := range b {
		if !seen[x] {
			return false
		}
	}
	return true
}
