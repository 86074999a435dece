package cli

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
)

// source-servers tag sets and removes tags; list --tag selects servers carrying all the
// tags given and shows them; describe shows them; bad tags exit 2 before any call.
func TestSourceServersTag(t *testing.T) {
	e := startCLIEnv(t)
	web := recoverytest.Server(t, e.cp, "m-web", map[string]int64{"vda": 1 << 20})
	db := recoverytest.Server(t, e.cp, "m-db", map[string]int64{"vda": 1 << 20})
	e.fails(2, "KEY=VALUE", "source-servers", "tag", web.ID, "novalue")
	e.fails(2, "nothing to change", "source-servers", "tag", web.ID)
	e.fails(2, "takes a source server id", "source-servers", "tag")
	e.fails(2, "KEY=VALUE", "source-servers", "list", "--tag", "app")
	e.fails(1, "not found", "source-servers", "tag", "s-00000000000000000", "a=b")

	if out := e.must("source-servers", "tag", web.ID, "app=shop", "tier=web", "old=1"); !strings.Contains(out, "app=shop,old=1,tier=web") {
		t.Fatalf("tag: %q", out)
	}
	var s api.SourceServer
	if err := json.Unmarshal([]byte(e.must("-o", "json", "source-servers", "tag", web.ID, "--remove", "old")), &s); err != nil ||
		!maps.Equal(s.Tags, map[string]string{"app": "shop", "tier": "web"}) {
		t.Fatalf("tag --remove -o json: %+v, %v", s.Tags, err)
	}
	e.must("source-servers", "tag", db.ID, "app=shop", "tier=db")

	out := e.must("source-servers", "list", "--tag", "app=shop", "--tag", "tier=web")
	if !strings.Contains(out, web.ID) || strings.Contains(out, db.ID) || !strings.Contains(out, "TAGS") || !strings.Contains(out, "app=shop,tier=web") {
		t.Fatalf("list --tag app=shop --tag tier=web: %q", out)
	}
	if out := e.must("source-servers", "list", "--tag", "app=shop"); !strings.Contains(out, web.ID) || !strings.Contains(out, db.ID) {
		t.Fatalf("list --tag app=shop: %q", out)
	}
	if out := e.must("source-servers", "describe", db.ID); !strings.Contains(out, "Tags:") || !strings.Contains(out, "app=shop,tier=db") {
		t.Fatalf("describe: %q", out)
	}
}
