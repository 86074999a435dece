package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
)

// The groups commands: usage errors exit 2 before calling anything; a group is created,
// listed, described with its members, changed, its points listed, and deleted; the
// API's refusals exit 1 with its message.
func TestGroupsCommands(t *testing.T) {
	e := startCLIEnv(t)
	a := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
	b := recoverytest.Server(t, e.cp, "m2", map[string]int64{"vda": 1 << 20})
	e.fails(2, "1 to 64 source servers", "groups", "create", "web")
	e.fails(2, "whole seconds", "groups", "create", "web", "--servers", a.ID, "--interval", "1500ms")
	e.fails(2, "lowercase letters", "groups", "create", "Web", "--servers", a.ID)
	e.fails(2, "not a source server id", "groups", "add", "web", "--servers", "bogus")
	e.fails(2, "--limit", "groups", "points", "web", "--limit", "0")

	id := strings.TrimSpace(e.must("groups", "create", "web", "--servers", a.ID, "--interval", "5s"))
	if !api.ValidID(api.PrefixGroup, id) {
		t.Fatalf("groups create printed %q", id)
	}
	e.fails(1, "group web", "groups", "create", "db", "--servers", b.ID+","+a.ID)
	e.must("groups", "add", "web", "--servers", b.ID)
	if out := e.must("groups", "list"); !strings.Contains(out, id) || !strings.Contains(out, "5s") {
		t.Fatalf("groups list: %q", out)
	}
	out := e.must("groups", "describe", "web")
	if !strings.Contains(out, "host-m1") || !strings.Contains(out, "host-m2") || !strings.Contains(out, "none yet") {
		t.Fatalf("groups describe: %q", out)
	}
	var g api.ConsistencyGroup
	if err := json.Unmarshal([]byte(e.must("-o", "json", "groups", "describe", id)), &g); err != nil || len(g.SourceServerIDs) != 2 {
		t.Fatalf("groups describe -o json: %v %+v", err, g)
	}
	e.must("groups", "remove", "web", "--servers", a.ID)
	e.fails(1, "at least one member", "groups", "remove", "web", "--servers", b.ID)
	var ps api.GroupPointList
	if err := json.Unmarshal([]byte(e.must("-o", "json", "groups", "points", "web", "--all")), &ps); err != nil || ps.Items == nil {
		t.Fatalf("groups points -o json: %v %+v", err, ps)
	}
	if out := e.must("groups", "points", "web"); !strings.Contains(out, "STATE") {
		t.Fatalf("groups points: %q", out)
	}
	e.must("groups", "delete", "web")
	e.fails(1, "was not found", "groups", "describe", "web")
}
