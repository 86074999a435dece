package units

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// TestUnitsVerify renders every unit and has systemd check it as it would load it
// (systemd-analyze verify works without a running systemd). The binary is this test's
// own executable: verify checks that ExecStart names an executable file.
func TestUnitsVerify(t *testing.T) {
	analyze := testutil.RequireCommand(t, "systemd-analyze", "systemd")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range Names() {
		b, err := Render(name, Params{Binary: exe, AgentConfig: "/etc/lifeboat/agent.yaml"})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", path).CombinedOutput()
		// verify also complains about other units on the machine; only this one's lines count.
		var mine []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if strings.Contains(l, name) {
				mine = append(mine, l)
			}
		}
		if err != nil || len(mine) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s\n--- unit:\n%s", name, err, out, b)
		}
	}
}

func TestRender(t *testing.T) {
	b, err := Render(Agent, Params{Binary: "/opt/life boat/lifeboat", AgentConfig: "/etc/lifeboat/agent 100%.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	want := `ExecStart="/opt/life boat/lifeboat" agent run --config "/etc/lifeboat/agent 100%%.yaml"` + "\n"
	if !strings.Contains(string(b), want) {
		t.Errorf("agent unit lacks %q:\n%s", want, b)
	}
	b, err = Render(Server, Params{Binary: "/usr/bin/lifeboat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStart=/usr/bin/lifeboat server --data /var/lib/lifeboat $LIFEBOAT_OPTS\n",
		"User=lifeboat\n", "KillMode=process\n",
		// The settings file may set LIFEBOAT_OPTS, or not: then it is empty, without a notice.
		"Environment=LIFEBOAT_OPTS=\nEnvironmentFile=-/etc/lifeboat/server.env\n",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("server unit lacks %q", want)
		}
	}
	for _, tc := range []struct {
		name string
		p    Params
		want string
	}{
		{Server, Params{Binary: "lifeboat"}, "absolute path of the lifeboat binary"},
		{Agent, Params{Binary: "/usr/bin/lifeboat"}, "absolute path of its configuration"},
		{Agent, Params{Binary: "/usr/bin/life\nboat", AgentConfig: "/a"}, "control characters"},
		{"lifeboat-up.service", Params{Binary: "/usr/bin/lifeboat"}, "the units are " + Server},
	} {
		if _, err := Render(tc.name, tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Render(%s, %+v) = %v, want an error saying %q", tc.name, tc.p, err, tc.want)
		}
	}
}
