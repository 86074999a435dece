package controlplane_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestConsistencyGroups: an operator creates, lists, describes and deletes groups, and
// adds and removes members; a server is in one group at most, a server of another
// account is not found, and bad names, intervals and member lists are refused.
func TestConsistencyGroups(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		op, viewer := e.userClient(api.RoleOperator), e.userClient(api.RoleViewer)
		var ids []string
		for _, m := range []string{"m1", "m2", "m3"} {
			_, reg := e.agent(m)
			ids = append(ids, reg.SourceServer.ID)
		}
		slices.Sort(ids)
		web, err := op.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "web", SourceServerIDs: []string{ids[1], ids[0]}})
		if err != nil || !api.ValidID(api.PrefixGroup, web.ID) || web.IntervalSeconds != 1 || !slices.Equal(web.SourceServerIDs, ids[:2]) ||
			web.AccountID != e.cp.SystemAccountID() || web.LastPoint != nil {
			t.Fatalf("create web: %+v, %v", web, err)
		}
		_, err = viewer.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "nope", SourceServerIDs: ids[2:]})
		wantAPIError(t, err, 403, api.CodeForbidden)

		// A server in another group: 409, naming that group.
		_, err = op.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "db", SourceServerIDs: []string{ids[2], ids[1]}})
		if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "group web") || !strings.Contains(ae.Message, ids[1]) {
			t.Errorf("a server in two groups: %q", ae.Message)
		}
		_, err = op.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "web", SourceServerIDs: ids[2:]})
		if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "named web") {
			t.Errorf("a second group named web: %q", ae.Message)
		}
		dbg, err := op.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "db", SourceServerIDs: ids[2:], IntervalSeconds: 60})
		if err != nil || dbg.IntervalSeconds != 60 {
			t.Fatalf("create db: %+v, %v", dbg, err)
		}
		_, err = op.AddGroupMembers(e.ctx, "db", []string{ids[0]})
		if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "group web") {
			t.Errorf("adding a member of web to db: %q", ae.Message)
		}

		// A server of another account is not found, whichever account asks.
		tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
		if err != nil {
			t.Fatal(err)
		}
		foreign := recoveryServerIn(t, e, tenant.Account.ID, "m-tenant")
		_, err = op.AddGroupMembers(e.ctx, "db", []string{foreign})
		wantAPIError(t, err, 404, api.CodeNotFound)
		ta := e.client(tenant.AdminToken)
		_, err = ta.CreateConsistencyGroup(e.ctx, api.CreateConsistencyGroupRequest{Name: "x", SourceServerIDs: []string{ids[2]}})
		wantAPIError(t, err, 404, api.CodeNotFound)
		_, err = ta.GetConsistencyGroup(e.ctx, "web")
		wantAPIError(t, err, 404, api.CodeNotFound)
		if l, err := ta.ListConsistencyGroups(e.ctx, 0, ""); err != nil || len(l.Items) != 0 {
			t.Errorf("the tenant's groups: %+v, %v", l, err)
		}

		// Bad requests.
		for name, req := range map[string]api.CreateConsistencyGroupRequest{
			"a bad name":          {Name: "Web_1", SourceServerIDs: ids[2:]},
			"a name like an id":   {Name: api.NewID(api.PrefixGroup), SourceServerIDs: ids[2:]},
			"no members":          {Name: "empty"},
			"a bad member":        {Name: "bad", SourceServerIDs: []string{"web-1"}},
			"a member twice":      {Name: "twice", SourceServerIDs: []string{ids[2], ids[2]}},
			"an interval too big": {Name: "slow", SourceServerIDs: ids[2:], IntervalSeconds: 3601},
			"a negative interval": {Name: "neg", SourceServerIDs: ids[2:], IntervalSeconds: -1},
		} {
			_, err := op.CreateConsistencyGroup(e.ctx, req)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != 400 {
				t.Errorf("%s: %v, want 400", name, err)
			}
		}
		_, err = op.RemoveGroupMembers(e.ctx, "web", []string{ids[2]})
		wantAPIError(t, err, 400, api.CodeInvalid)
		_, err = op.RemoveGroupMembers(e.ctx, "db", []string{ids[2]})
		wantAPIError(t, err, 409, api.CodeConflict)
		_, err = viewer.ListGroupPoints(e.ctx, "web", 0, "bogus", false)
		wantAPIError(t, err, 400, api.CodeInvalid)

		// Membership moves from web to db.
		if g, err := op.RemoveGroupMembers(e.ctx, web.ID, []string{ids[1]}); err != nil || !slices.Equal(g.SourceServerIDs, ids[:1]) {
			t.Fatalf("remove %s from web: %+v, %v", ids[1], g, err)
		}
		if g, err := op.AddGroupMembers(e.ctx, "db", []string{ids[1]}); err != nil || !slices.Equal(g.SourceServerIDs, ids[1:]) {
			t.Fatalf("add %s to db: %+v, %v", ids[1], g, err)
		}
		l, err := viewer.ListConsistencyGroups(e.ctx, 1, "")
		if err != nil || len(l.Items) != 1 || l.Items[0].Name != "db" || l.NextPageToken == "" {
			t.Fatalf("first page of groups: %+v, %v", l, err)
		}
		all, err := viewer.AllConsistencyGroups(e.ctx)
		if err != nil || len(all) != 2 || all[1].Name != "web" {
			t.Fatalf("all groups: %+v, %v", all, err)
		}
		if g, err := viewer.GetConsistencyGroup(e.ctx, dbg.ID); err != nil || g.Name != "db" || len(g.SourceServerIDs) != 2 {
			t.Fatalf("describe db by id: %+v, %v", g, err)
		}
		if ps, err := viewer.ListGroupPoints(e.ctx, "db", 10, "", true); err != nil || ps.Items == nil || len(ps.Items) != 0 {
			t.Fatalf("points of db: %+v, %v", ps, err)
		}

		// Deletion: the group goes, its servers stay; the actions are audited.
		err = op.DeleteConsistencyGroup(e.ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		_, err = viewer.GetConsistencyGroup(e.ctx, "web")
		wantAPIError(t, err, 404, api.CodeNotFound)
		if _, err := viewer.SourceServer(e.ctx, ids[0]); err != nil {
			t.Fatalf("a member of a deleted group: %v", err)
		}
		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{})
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, a := range audit.Items {
			if strings.HasPrefix(a.Action, "consistency-group.") {
				actions = append(actions, a.Action)
			}
		}
		slices.Sort(actions) // the test's clock stands still: entries of one instant come in any order
		want := []string{"consistency-group.add-members", "consistency-group.create", "consistency-group.create",
			"consistency-group.delete", "consistency-group.remove-members"}
		if !slices.Equal(actions, want) {
			t.Errorf("audited %v, want %v", actions, want)
		}
	})
}
