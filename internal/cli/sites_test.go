package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// TestSitesWithProviderAndCredentialsFile: sites create takes a provider, a libvirt
// URI and pool, and reads the credentials from a file (never argv); list shows the
// provider and URI, show says whether the site has credentials and never shows them;
// bad input is refused before the API with a usage error, an unreadable or oversized
// file with a one-line error.
func TestSitesWithProviderAndCredentialsFile(t *testing.T) {
	e := startCLIEnv(t)
	key := []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END OPENSSH PRIVATE KEY-----\n")
	keyFile := filepath.Join(e.dir, "id_ed25519")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	const uri = "qemu+ssh://lifeboat@kvm1.example.net/system"
	if out := e.must("sites", "create", "kvm", "--provider", "libvirt", "--uri", uri, "--credentials-file", keyFile); !strings.Contains(out, "kvm") {
		t.Errorf("create said %q", out)
	}
	e.must("sites", "create", "lab", "--provider", "image", "--description", "images only")
	e.must("sites", "create", "local", "--provider", "libvirt", "--uri", "qemu:///system", "--pool", "images")

	list := e.must("sites", "list")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 5 || strings.Join(strings.Fields(lines[0]), " ") != "ID DESCRIPTION CREATED PROVIDER URI" {
		t.Fatalf("sites list:\n%s", list)
	}
	for i, want := range [][]string{{"default", "qemu", "-"}, {"kvm", "libvirt", uri}, {"lab", "images only", "image", "-"}, {"local", "libvirt", "qemu:///system"}} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("sites list row %d lacks %q:\n%s", i+1, w, list)
			}
		}
	}
	show := e.must("sites", "show", "kvm")
	for _, w := range []string{"libvirt", uri, "POOL", "default", "CREDENTIALS", "set (never shown)"} {
		if !strings.Contains(show, w) {
			t.Errorf("sites show kvm lacks %q:\n%s", w, show)
		}
	}
	var s api.Site
	if err := json.Unmarshal([]byte(e.must("-o", "json", "sites", "show", "local")), &s); err != nil || s.Pool != "images" || s.HasCredentials {
		t.Errorf("sites show local as JSON: %+v, %v", s, err)
	}
	target, err := e.cp.SiteLaunchTarget(t.Context(), e.cp.SystemAccountID(), "kvm")
	if err != nil || !bytes.Equal(target.Credentials, key) {
		t.Errorf("the control plane has %q, %v; want the file's bytes", target.Credentials, err)
	}
	for what, out := range map[string]string{"list": list, "show": show, "audit": e.must("audit", "list", "--limit", "100")} {
		if strings.Contains(out, "c2VjcmV0") || strings.Contains(out, "PRIVATE KEY") {
			t.Errorf("%s shows the key:\n%s", what, out)
		}
	}

	e.fails(2, "only libvirt sites", "sites", "create", "dr", "--uri", "qemu:///system")
	e.fails(2, "needs a URI", "sites", "create", "dr", "--provider", "libvirt")
	e.fails(2, "xen", "sites", "create", "dr", "--provider", "libvirt", "--uri", "xen:///system")
	e.fails(2, "takes no credentials", "sites", "create", "dr", "--provider", "libvirt", "--uri", "qemu+tcp://kvm1/system", "--credentials-file", keyFile)
	e.fails(1, "no such file", "sites", "create", "dr", "--provider", "libvirt", "--uri", "qemu+ssh://kvm1/system", "--credentials-file", keyFile+".missing")
	big := filepath.Join(e.dir, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("a"), api.MaxSiteCredentialsBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	e.fails(1, "larger than 65536 bytes", "sites", "create", "dr", "--provider", "libvirt", "--uri", "qemu+ssh://kvm1/system", "--credentials-file", big)
	empty := filepath.Join(e.dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.fails(2, "is empty", "sites", "create", "dr", "--provider", "libvirt", "--uri", "qemu+ssh://kvm1/system", "--credentials-file", empty)
	e.fails(1, "not found", "sites", "show", "dr")
}
