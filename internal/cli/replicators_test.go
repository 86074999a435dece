package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// replicators drain finds a replicator by name, says what happened to its servers, and
// list shows it draining until --undo.
func TestReplicatorsDrain(t *testing.T) {
	e := startCLIEnv(t)
	ctx := context.Background()
	tok := strings.TrimSpace(e.must("tokens", "create", "--kind", "install", "--scope", "replicator"))
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, _ := pki.NewCSR(key, "r1")
	reg, err := api.NewClient(api.ClientConfig{Server: e.cp.URL(), Token: tok, CAPEM: e.cp.CACertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := reg.RegisterReplicator(ctx, api.RegisterReplicatorRequest{CSR: string(csrPEM), Name: "r1", Site: api.DefaultSite,
		Address: "127.0.0.1:1500"}); err != nil {
		t.Fatal(err)
	}
	out, errs, code := e.run("replicators", "drain", "r1")
	if code != 0 || !strings.Contains(errs, "replicator r1 is drained") || !strings.Contains(out, "(draining)") {
		t.Fatalf("drain: exit %d\n%s%s", code, out, errs)
	}
	if list := e.must("replicators", "list"); !strings.Contains(list, "(draining)") {
		t.Fatalf("list does not show the drain:\n%s", list)
	}
	if _, errs, code := e.run("replicators", "drain", "r1", "--undo"); code != 0 || !strings.Contains(errs, "back in service") {
		t.Fatalf("undo: exit %d %s", code, errs)
	}
	if list := e.must("replicators", "list"); strings.Contains(list, "(draining)") {
		t.Fatalf("list still shows the drain:\n%s", list)
	}
	if _, errs, code := e.run("replicators", "drain", "nope"); code == 0 || !strings.Contains(errs, "no replicator is named nope") {
		t.Fatalf("an unknown replicator: exit %d %s", code, errs)
	}
}
