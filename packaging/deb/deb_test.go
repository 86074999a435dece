package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// The version the test packages: a pre-release, so that the binary's (semver) and the
// package's (Debian: ~ sorts before the release) spellings differ.
const (
	testVersion    = "0.1.0-test.1"
	testDebVersion = "0.1.0~test.1"
)

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "give the version with -version"},
		{[]string{"-version", "latest"}, `-version "latest" is not a release version`},
		{[]string{"-version", "0.1"}, "is not a release version"},
		{[]string{"-version", "0.1.0", "-arch", "riscv64"}, "give amd64 or arm64"},
		{[]string{"-version", "0.1.0", "dist"}, "every setting is a flag"},
		{[]string{"-versoin", "0.1.0"}, "flag provided but not defined"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("deb %q: exit %d, %q; want exit 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "usage: go run ./packaging/deb -version") {
		t.Errorf("deb -h: exit %d, %q", code, stderr.String())
	}
	// A dynamically linked binary is refused, and one for another machine.
	if runtime.GOARCH == "amd64" {
		if err := checkBinary("/bin/sh", "amd64"); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
			t.Errorf("checkBinary(/bin/sh, amd64) = %v, want a refusal of a dynamic binary", err)
		}
		if err := checkBinary("/bin/sh", "arm64"); err == nil || !strings.Contains(err.Error(), "is built for EM_X86_64, not arm64") {
			t.Errorf("checkBinary(/bin/sh, arm64) = %v, want a refusal of an amd64 binary", err)
		}
	}
}

// TestDeb builds the package, checks what dpkg-deb sees in it, and installs it on this
// machine (in CI, or with LIFEBOAT_TEST_DEB=1).
func TestDeb(t *testing.T) {
	dpkgDeb := testutil.RequireCommand(t, "dpkg-deb", "dpkg")
	deb := buildDeb(t)
	if want := "lifeboat_" + testDebVersion + "_" + runtime.GOARCH + ".deb"; filepath.Base(deb) != want {
		t.Errorf("the package is %s, want %s", deb, want)
	}
	t.Run("contents", func(t *testing.T) { checkContents(t, dpkgDeb, deb) })
	t.Run("install", func(t *testing.T) { checkInstall(t, deb) })
}

// buildDeb builds the package of testVersion into a temporary directory.
func buildDeb(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"-version", testVersion, "-out", t.TempDir()}, &stdout, &stderr); code != 0 {
		t.Fatalf("building the .deb: exit %d\n%s", code, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// needMachineChange skips, outside CI, tests that change this machine or fetch and boot
// a Debian system, unless LIFEBOAT_TEST_DEB=1 asks for them.
func needMachineChange(t *testing.T, what string) {
	t.Helper()
	if !testutil.InCI() && os.Getenv("LIFEBOAT_TEST_DEB") != "1" {
		t.Skipf("skipped: %s; set LIFEBOAT_TEST_DEB=1 to run it on a machine you can spare (CI does)", what)
	}
}

// checkContents checks the package's control fields, maintainer scripts, files with
// their modes, and that the binary and units in it are the ones the project makes.
func checkContents(t *testing.T, dpkgDeb, deb string) {
	fields := testutil.Run(t, dpkgDeb, "--field", deb, "Package", "Version", "Architecture", "Maintainer", "Depends", "Recommends", "Section", "Description")
	for _, want := range []string{
		"Package: lifeboat\n", "Version: " + testDebVersion + "\n", "Section: admin\n", "Depends: passwd\n",
		"Maintainer: Lifeboat maintainers <", "Description: Self-hosted disaster recovery for Linux servers\n",
	} {
		if !strings.Contains(fields, want) {
			t.Errorf("control lacks %q:\n%s", want, fields)
		}
	}
	for _, p := range []string{"qemu-system-x86", "qemu-utils"} {
		if !strings.Contains(fields, "Recommends: ") || !strings.Contains(fields, p) {
			t.Errorf("Recommends lacks %s:\n%s", p, fields)
		}
	}
	if got := testutil.Run(t, dpkgDeb, "--info", deb, "conffiles"); got != "/etc/lifeboat/replicator.env\n/etc/lifeboat/server.env\n" {
		t.Errorf("conffiles: %q", got)
	}
	dir := t.TempDir()
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		got := testutil.Run(t, dpkgDeb, "--info", deb, script)
		want, _ := assets.ReadFile("files/" + script)
		if got != string(want) {
			t.Errorf("%s differs from files/%s", script, script)
		}
		path := filepath.Join(dir, script)
		if err := os.WriteFile(path, want, 0o600); err != nil {
			t.Fatal(err)
		}
		testutil.Run(t, "sh", "-n", path)
	}

	// dpkg-deb --contents lines: mode owner/group size date time ./path
	want := map[string]string{
		"./usr/bin/lifeboat":                               "-rwxr-xr-x root/root",
		"./etc/lifeboat/":                                  "drwxr-xr-x root/root",
		"./etc/lifeboat/server.env":                        "-rw------- root/root",
		"./etc/lifeboat/replicator.env":                    "-rw------- root/root",
		"./lib/systemd/system/lifeboat-server.service":     "-rw-r--r-- root/root",
		"./lib/systemd/system/lifeboat-replicator.service": "-rw-r--r-- root/root",
		"./lib/systemd/system/lifeboat-agent.service":      "-rw-r--r-- root/root",
		"./usr/share/doc/lifeboat/README.md":               "-rw-r--r-- root/root",
	}
	for _, l := range strings.Split(strings.TrimSpace(testutil.Run(t, dpkgDeb, "--contents", deb)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb --contents line %q", l)
		}
		path, got := f[len(f)-1], f[0]+" "+f[1]
		if w, ok := want[path]; ok {
			if got != w {
				t.Errorf("%s is %s, want %s", path, got, w)
			}
			delete(want, path)
		}
		if !strings.HasPrefix(f[0], "d") && !strings.Contains(path, "lifeboat") {
			t.Errorf("the package holds %s, which is not Lifeboat's", path)
		}
	}
	if len(want) > 0 {
		t.Errorf("the package lacks %v", want)
	}

	testutil.Run(t, dpkgDeb, "-x", deb, dir)
	bin := filepath.Join(dir, "usr/bin/lifeboat")
	if err := checkBinary(bin, runtime.GOARCH); err != nil {
		t.Error(err)
	}
	if out := testutil.Run(t, bin, "--version"); out != "lifeboat version "+testVersion+"\n" {
		t.Errorf("lifeboat --version: %q", out)
	}
	for _, name := range units.Names() {
		want, err := units.Render(name, units.Params{Binary: "/usr/bin/lifeboat", AgentConfig: "/etc/lifeboat/agent.yaml"})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(filepath.Join(dir, "lib/systemd/system", name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("the package's %s is not units.Render's: %v", name, err)
		}
	}
}

// checkInstall installs the package with dpkg, checks the system it leaves, runs the
// control plane as its unit does, upgrades over a changed setting, then removes and
// purges it. Whatever happens, the package is purged and the user and directories it
// made are removed at the end.
func checkInstall(t *testing.T, deb string) {
	needMachineChange(t, "installing the .deb changes this machine (a user lifeboat, /var/lib/lifeboat, /etc/lifeboat)")
	testutil.RequireRoot(t)
	dpkg := testutil.RequireCommand(t, "dpkg", "dpkg")
	analyze := testutil.RequireCommand(t, "systemd-analyze", "systemd")
	testutil.RequireCommand(t, "useradd", "passwd")

	// The test removes at the end what the package made, so it runs only where none of it was.
	var there []string
	if _, err := testutil.Output("dpkg-query", "-W", "lifeboat"); err == nil {
		there = append(there, "the lifeboat package is installed")
	}
	if _, err := user.Lookup("lifeboat"); err == nil {
		there = append(there, "a user lifeboat exists")
	}
	if _, err := user.LookupGroup("lifeboat"); err == nil {
		there = append(there, "a group lifeboat exists")
	}
	for _, p := range []string{"/var/lib/lifeboat", "/etc/lifeboat"} {
		if _, err := os.Lstat(p); err == nil {
			there = append(there, p+" exists")
		}
	}
	testutil.Need(t, len(there) == 0, "this machine has Lifeboat on it already ("+strings.Join(there, ", ")+"): the test installs and removes the package only on a machine without it")

	t.Cleanup(func() {
		if out, err := exec.Command(dpkg, "--purge", "lifeboat").CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge lifeboat: %v\n%s", err, out)
		}
		if _, err := user.Lookup("lifeboat"); err == nil {
			if out, err := exec.Command("userdel", "lifeboat").CombinedOutput(); err != nil {
				t.Errorf("userdel lifeboat: %v\n%s", err, out)
			}
		}
		if _, err := user.LookupGroup("lifeboat"); err == nil {
			if out, err := exec.Command("groupdel", "lifeboat").CombinedOutput(); err != nil {
				t.Errorf("groupdel lifeboat: %v\n%s", err, out)
			}
		}
		for _, p := range []string{"/var/lib/lifeboat", "/etc/lifeboat"} {
			if err := os.RemoveAll(p); err != nil {
				t.Errorf("remove %s: %v", p, err)
			}
		}
	})
	install := func() string {
		t.Helper()
		cmd := exec.Command(dpkg, "-i", deb)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg -i %s: %v\n%s", deb, err, out)
		}
		if bytes.Contains(bytes.ToLower(out), []byte("warning")) {
			t.Errorf("dpkg -i warned:\n%s", out)
		}
		return string(out)
	}
	// Purged before any service ran, the package leaves no state directory behind.
	install()
	testutil.Run(t, dpkg, "--purge", "lifeboat")
	if _, err := os.Lstat("/var/lib/lifeboat"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("purged before anything ran, /var/lib/lifeboat is still there: %v", err)
	}
	install()

	if out := testutil.Run(t, "/usr/bin/lifeboat", "--version"); out != "lifeboat version "+testVersion+"\n" {
		t.Errorf("/usr/bin/lifeboat --version: %q", out)
	}
	testutil.Run(t, "/usr/bin/lifeboat", "--help")

	u, err := user.Lookup("lifeboat")
	if err != nil {
		t.Fatalf("the package made no user lifeboat: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if u.HomeDir != "/var/lib/lifeboat" || uid >= 1000 || uid == 0 {
		t.Errorf("user lifeboat: %+v, want a system user at home in /var/lib/lifeboat", u)
	}
	if pw := testutil.Run(t, "getent", "passwd", "lifeboat"); !strings.HasSuffix(pw, ":/usr/sbin/nologin\n") {
		t.Errorf("user lifeboat can log in: %s", pw)
	}
	if kvm, err := user.LookupGroup("kvm"); err == nil {
		groups, _ := u.GroupIds()
		if !slices.Contains(groups, kvm.Gid) {
			t.Errorf("user lifeboat is not in the kvm group (groups %v): QEMU could not use KVM", groups)
		}
	}
	checkMode(t, "/var/lib/lifeboat", fs.ModeDir|0o700, uid)
	checkMode(t, "/etc/lifeboat/server.env", 0o600, 0)
	checkMode(t, "/etc/lifeboat/replicator.env", 0o600, 0)
	checkMode(t, "/usr/bin/lifeboat", 0o755, 0)
	if got := testutil.Run(t, "dpkg-query", "-W", "-f", "${Conffiles}", "lifeboat"); !strings.Contains(got, "/etc/lifeboat/server.env") || !strings.Contains(got, "/etc/lifeboat/replicator.env") {
		t.Errorf("dpkg records the conffiles %q", got)
	}

	for _, name := range units.Names() {
		path := "/lib/systemd/system/" + name
		out, err := exec.Command(analyze, "verify", path).CombinedOutput()
		if err != nil || strings.Contains(string(out), name) {
			t.Errorf("systemd-analyze verify %s: %v\n%s", path, err, out)
		}
	}

	runServerAsItsUnit(t, uid, gid)

	// An upgrade (here: the same version again) keeps a changed setting and the data.
	env, err := os.ReadFile("/etc/lifeboat/server.env")
	if err != nil {
		t.Fatal(err)
	}
	changed := append(env, []byte("LIFEBOAT_DB=postgres://lifeboat@db.example.com/lifeboat\n")...)
	if err := os.WriteFile("/etc/lifeboat/server.env", changed, 0o600); err != nil {
		t.Fatal(err)
	}
	install()
	if got, _ := os.ReadFile("/etc/lifeboat/server.env"); !bytes.Equal(got, changed) {
		t.Errorf("the upgrade replaced the changed /etc/lifeboat/server.env:\n%s", got)
	}
	checkMode(t, "/var/lib/lifeboat/admin-token", 0o600, uid)

	// Removing keeps the settings; purging removes them but keeps the data and its owner.
	testutil.Run(t, dpkg, "--remove", "lifeboat")
	for p, want := range map[string]bool{"/usr/bin/lifeboat": false, "/lib/systemd/system/lifeboat-server.service": false,
		"/etc/lifeboat/server.env": true, "/var/lib/lifeboat/admin-token": true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("after dpkg --remove, %s exists: %v, want %v", p, err == nil, want)
		}
	}
	out, err := exec.Command(dpkg, "--purge", "lifeboat").CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg --purge lifeboat: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "/var/lib/lifeboat (the master key, CA and database) and the user lifeboat are kept") {
		t.Errorf("purge did not say what it keeps:\n%s", out)
	}
	for p, want := range map[string]bool{"/etc/lifeboat/server.env": false, "/etc/lifeboat/replicator.env": false, "/var/lib/lifeboat/admin-token": true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("after dpkg --purge, %s exists: %v, want %v", p, err == nil, want)
		}
	}
	if _, err := user.Lookup("lifeboat"); err != nil {
		t.Errorf("purge removed the user lifeboat, who owns /var/lib/lifeboat: %v", err)
	}
}

// runServerAsItsUnit starts the control plane with the installed unit's ExecStart, as
// the user lifeboat with its umask (the settings file adds no option by default), and
// checks that root's CLI on the machine then reaches it with no flag but --server: the
// admin token and the CA are where sudo lifeboat looks for them.
func runServerAsItsUnit(t *testing.T, uid, gid int) {
	unit, err := os.ReadFile("/lib/systemd/system/" + units.Server)
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, l := range strings.Split(string(unit), "\n") {
		if line, ok := strings.CutPrefix(l, "ExecStart="); ok {
			args = strings.Fields(line)
		}
	}
	port := testutil.FreePort(t)
	if n := len(args); n < 2 || args[n-1] != "$LIFEBOAT_OPTS" {
		t.Fatalf("ExecStart of %s is %q, want a command line ending in $LIFEBOAT_OPTS", units.Server, args)
	}
	args = append(args[:len(args)-1], "--listen", fmt.Sprintf("127.0.0.1:%d", port))
	var log bytes.Buffer
	cmd := exec.Command("/bin/sh", append([]string{"-c", `umask 077 && exec "$0" "$@"`}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/var/lib/lifeboat", "USER=lifeboat"}
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	testutil.StartProcess(t, cmd)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lifeboat server:\n%s", log.String())
		}
	})
	testutil.WaitTCP(t, fmt.Sprintf("127.0.0.1:%d", port), time.Minute)
	checkMode(t, "/var/lib/lifeboat/admin-token", 0o600, uid)
	out, err := testutil.Output("/usr/bin/lifeboat", "source-servers", "list", "--server", fmt.Sprintf("https://127.0.0.1:%d", port))
	if err != nil {
		t.Errorf("root's lifeboat source-servers list against the packaged control plane: %v\n%s", err, out)
	}
}

func checkMode(t *testing.T, path string, mode fs.FileMode, uid int) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	owner := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner = int(st.Uid)
	}
	if fi.Mode() != mode || owner != uid {
		t.Errorf("%s: mode %v owner %d, want %v owner %d", path, fi.Mode(), owner, mode, uid)
	}
}
