package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// parseInstallCommand checks the agent install command `up` prints, "echo TOKEN | sudo
// lifeboat agent install …": the token is only echo's argument (echo is a shell builtin,
// so no process gets it in its argv) and no argument of sudo or lifeboat is a token. It
// returns what reaches lifeboat's stdin and lifeboat's arguments.
func parseInstallCommand(t *testing.T, line string) (stdin string, args []string) {
	t.Helper()
	left, right, ok := strings.Cut(line, "|")
	if !ok {
		t.Fatalf("the install command %q does not pipe the token in", line)
	}
	echo := strings.Fields(left)
	if len(echo) != 2 || echo[0] != "echo" {
		t.Fatalf("the install command %q does not start with echo TOKEN", line)
	}
	if _, err := pki.ParseToken(echo[1]); err != nil {
		t.Fatalf("echo's argument in %q is not a token: %v", line, err)
	}
	argv := strings.Fields(right)
	if len(argv) < 3 || argv[0] != "sudo" || argv[1] != "lifeboat" {
		t.Fatalf("the install command %q does not run sudo lifeboat", line)
	}
	for _, a := range argv {
		if _, err := pki.ParseToken(a); err == nil || strings.Contains(a, echo[1]) ||
			strings.Contains(a, "lbi_") || strings.Contains(a, "lbt_") {
			t.Fatalf("argument %q of %q is a token, which every user sees in ps", a, line)
		}
	}
	return echo[1] + "\n", argv[2:]
}

// TestTokenReachesTheServerByFileStdinAndEnvironment: an install token given in a file,
// on stdin and in LIFEBOAT_TOKEN each registers a server, an API token on stdin is
// the one used (a wrong one is refused), and none of them prints a warning.
func TestTokenReachesTheServerByFileStdinAndEnvironment(t *testing.T) {
	e := startCLIEnv(t)
	install := strings.TrimSpace(e.must("tokens", "create", "--kind", "install", "--uses", "3"))
	installArgs := func(name string, extra ...string) []string {
		return append(append([]string{"--server", e.cp.URL()}, extra...), "agent", "install", "--config",
			filepath.Join(e.dir, name+".yaml"), "--no-service", "--machine-id", "m-"+name)
	}
	for _, c := range []struct {
		name, stdin string
		extra       []string
		env         bool
	}{
		{name: "file", extra: []string{"--token-file", writeTokenFile(t, e.dir, install)}},
		{name: "stdin", stdin: install + "\nwhat follows the line stays\n", extra: []string{"--token-file", "-"}},
		{name: "env", env: true},
	} {
		if c.env {
			t.Setenv(envToken, install)
		}
		var out, errb bytes.Buffer
		code := Main(context.Background(), installArgs(c.name, c.extra...), strings.NewReader(c.stdin), &out, &errb)
		if code != 0 || strings.Contains(errb.String(), "warning") {
			t.Fatalf("install with the token by %s: exit %d, %s", c.name, code, errb.String())
		}
	}
	var list api.SourceServerList
	if err := json.Unmarshal([]byte(e.must("source-servers", "list", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, s := range list.Items {
		got[s.MachineID] = true
	}
	for _, m := range []string{"m-file", "m-stdin", "m-env"} {
		if !got[m] {
			t.Errorf("%s is not registered: %+v", m, list.Items)
		}
	}

	api := func(stdin string) (string, int) {
		var out, errb bytes.Buffer
		code := Main(context.Background(), []string{"--server", e.cp.URL(), "--ca-cert", e.caPath, "--token-file", "-", "tokens", "list"},
			strings.NewReader(stdin), &out, &errb)
		return errb.String(), code
	}
	if errs, code := api(e.token + "\n"); code != 0 || errs != "" {
		t.Fatalf("admin token on stdin: exit %d, %q", code, errs)
	}
	if errs, code := api("lbt_" + strings.Repeat("0", 16) + "_" + strings.Repeat("0", 32) + "\n"); code != 1 {
		t.Fatalf("a wrong token on stdin: exit %d, %q; want it refused", code, errs)
	}
}

// TestTokenOnTheCommandLineWarns: --token still works but warns in one line that every
// user can read it and what to use instead; --token and --token-file together are a
// usage error; --help does not show the token of LIFEBOAT_TOKEN.
func TestTokenOnTheCommandLineWarns(t *testing.T) {
	e := startCLIEnv(t)
	_, errs, code := runCLI("--server", e.cp.URL(), "--ca-cert", e.caPath, "--token", e.token, "source-servers", "list")
	if code != 0 {
		t.Fatalf("--token: exit %d, %s", code, errs)
	}
	if strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "warning: --token shows the secret to every user of this machine (ps, /proc/PID/cmdline)") ||
		!strings.Contains(errs, "--token-file") {
		t.Fatalf("--token did not warn in one line: %q", errs)
	}
	_, errs, code = runCLI("--server", e.cp.URL(), "--token", e.token, "--token-file", e.tokenFile, "source-servers", "list")
	if code != 2 || !strings.Contains(errs, "not both") {
		t.Fatalf("--token with --token-file: exit %d, %q", code, errs)
	}
	t.Setenv(envToken, e.token)
	for _, args := range [][]string{{"--help"}, {"agent", "install", "--help"}} {
		if out, errs, _ := runCLI(args...); strings.Contains(out+errs, e.token) {
			t.Fatalf("lifeboat %s shows the token of %s:\n%s%s", strings.Join(args, " "), envToken, out, errs)
		}
	}
}

// TestTokenFileContent: a token file holds one token on one line; an empty file, two
// words or a file over 4 KiB are refused, and a file others can read gets a warning.
func TestTokenFileContent(t *testing.T) {
	dir := t.TempDir()
	g := &globals{stdin: strings.NewReader(""), stdout: io.Discard}
	write := func(content string, mode os.FileMode) string {
		p := filepath.Join(dir, fmt.Sprintf("t%d", len(content)))
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for content, want := range map[string]string{
		"  lbt_x_y \n":                   "lbt_x_y",
		"\n":                             "holds no secret",
		"lbt_a\nlbt_b\n":                 "more than one word",
		strings.Repeat("a", 4097):        "larger than 4096 bytes",
		strings.Repeat("a", 4096) + "\n": "larger than 4096 bytes",
	} {
		var errb bytes.Buffer
		g.stderr, g.tokenFile, g.token = &errb, write(content, 0o600), ""
		err := g.resolveToken(false)
		if got := g.token; (err == nil && got != want) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("token file %.20q: token %q, error %v; want %q", content, got, err, want)
		}
		if errb.Len() != 0 {
			t.Errorf("token file %.20q (mode 0600): stderr %q", content, errb.String())
		}
	}
	var errb bytes.Buffer
	g.stderr, g.tokenFile = &errb, write("lbt_loose", 0o644)
	if err := g.resolveToken(false); err != nil || g.token != "lbt_loose" || !strings.Contains(errb.String(), "chmod 600") {
		t.Fatalf("a token file others can read: %v, %q, stderr %q", err, g.token, errb.String())
	}
}

// TestReadLineStopsAtTheLine: reading a token from stdin takes one line and leaves the
// rest for the command, and refuses a line over the bound.
func TestReadLineStopsAtTheLine(t *testing.T) {
	r := strings.NewReader("lbi_tok\nyes\n")
	line, err := readLine(r, 64)
	if err != nil || string(line) != "lbi_tok" {
		t.Fatalf("readLine: %q, %v", line, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "yes\n" {
		t.Fatalf("readLine left %q, want %q", rest, "yes\n")
	}
	if _, err := readLine(strings.NewReader(strings.Repeat("x", 65)), 64); err == nil {
		t.Fatal("a 65-byte line was read with a 64-byte bound")
	}
	if _, err := readLine(iotestZeroReader{}, 64); err != io.ErrNoProgress {
		t.Fatalf("a reader that returns nothing forever: %v, want io.ErrNoProgress", err)
	}
}

// iotestZeroReader returns no data and no error, forever.
type iotestZeroReader struct{}

func (iotestZeroReader) Read([]byte) (int, error) { return 0, nil }

// FuzzReadLine: whatever stdin holds, readLine returns at most the bound, never a
// newline, and consumes exactly the first line and its newline.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte("lbi_x\nrest"), 8)
	f.Add([]byte(""), 0)
	f.Add([]byte("\n\n"), 1)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		if max < 0 || max > 1<<16 {
			return
		}
		r := bytes.NewReader(in)
		line, err := readLine(r, max)
		if err != nil {
			if i := bytes.IndexByte(in, '\n'); i >= 0 && i <= max || i < 0 && len(in) <= max {
				t.Fatalf("readLine(%q, %d) failed on a line within the bound: %v", in, max, err)
			}
			return
		}
		if len(line) > max || bytes.IndexByte(line, '\n') >= 0 {
			t.Fatalf("readLine(%q, %d) = %q", in, max, line)
		}
		consumed := len(in) - r.Len()
		if want := len(line) + 1; consumed != want && !(consumed == len(in) && consumed == len(line)) {
			t.Fatalf("readLine(%q, %d) consumed %d bytes for line %q", in, max, consumed, line)
		}
	})
}

// openPTY opens a pseudo-terminal pair: what the test writes to master, a program reading
// slave reads as typed on a terminal, and what the terminal echoes is read from master.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	testutil.Need(t, err == nil, fmt.Sprintf("a pseudo-terminal (/dev/ptmx: %v)", err))
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("find the pseudo-terminal's number: %v", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

// TestAgentInstallAsksForTheTokenWithoutEcho: on a terminal, agent install without a
// token asks for it, and what is typed is not echoed; off a terminal it says how to give
// one instead of waiting.
func TestAgentInstallAsksForTheTokenWithoutEcho(t *testing.T) {
	e := startCLIEnv(t)
	install := strings.TrimSpace(e.must("tokens", "create", "--kind", "install"))
	args := []string{"--server", e.cp.URL(), "agent", "install", "--config", filepath.Join(e.dir, "a.yaml"), "--no-service", "--machine-id", "m-tty"}

	var out, errb bytes.Buffer
	if code := Main(context.Background(), args, strings.NewReader(""), &out, &errb); code != 2 || !strings.Contains(errb.String(), "--token-file") {
		t.Fatalf("no token, stdin not a terminal: exit %d, %q", code, errb.String())
	}

	master, slave := openPTY(t)
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- Main(context.Background(), args, slave, io.Discard, &stderr) }()
	// Type the token once the terminal stops echoing: before that, what is typed is echoed
	// by the terminal whatever the program does.
	deadline := time.Now().Add(20 * time.Second)
	for {
		tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(stderr.String(), "install token") && tio.Lflag&unix.ECHO == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent install did not ask for the token with echo off within 20s: %q", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := master.WriteString(install + "\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("agent install with the token typed: exit %d, %s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent install did not finish within 30s of the token being typed")
	}
	slave.Close()
	echoed := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(master); echoed <- b }() // ends with EIO once the slave is closed
	select {
	case b := <-echoed:
		if bytes.Contains(b, []byte(install)) || bytes.Contains(b, []byte("lbi_")) {
			t.Fatalf("the terminal echoed the token: %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading what the terminal echoed did not end within 10s")
	}
	if !strings.Contains(e.must("source-servers", "list", "-o", "json"), `"m-tty"`) {
		t.Fatal("the server installed with the typed token is not registered")
	}
}

// TestServerDatabaseURL: a --db URL with a password works but warns, and the password
// is not printed; LIFEBOAT_DB gives the URL without a warning.
func TestServerDatabaseURL(t *testing.T) {
	const password = "hunter2-Zq8" // port 1: nothing listens, the connection is refused
	args := []string{"server", "--data", t.TempDir(), "--listen", "127.0.0.1:0"}
	run := func(args ...string) (string, int) { // a server that starts is stopped after 20 s
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var errb bytes.Buffer
		code := Main(ctx, args, strings.NewReader(""), io.Discard, &errb)
		return errb.String(), code
	}
	errs, code := run(append(args, "--db", "postgres://lb:"+password+"@127.0.0.1:1/lifeboat?sslmode=disable&connect_timeout=5")...)
	if code != 1 || !strings.Contains(errs, "warning: --db with a password shows the secret") || !strings.Contains(errs, "PGPASSWORD") ||
		!strings.Contains(errs, "PostgreSQL") {
		t.Fatalf("--db with a password: exit %d, %q", code, errs)
	}
	if strings.Contains(errs, password) {
		t.Fatalf("the password is printed: %q", errs)
	}
	t.Setenv(envDB, "postgres://lb@127.0.0.1:1/lifeboat?sslmode=disable&connect_timeout=5")
	errs, code = run(args...)
	if code != 1 || strings.Contains(errs, "warning") || !strings.Contains(errs, "PostgreSQL") {
		t.Fatalf("%s: exit %d, %q; want the PostgreSQL server refused, without a warning", envDB, code, errs)
	}
}

// TestSecretFilesAreMadePrivateAtStart: the agent's configuration, the replicator's data
// directory and credentials, and the admin token that an older version or a copy left
// readable by others are made private when the command starts, with a warning.
func TestSecretFilesAreMadePrivateAtStart(t *testing.T) {
	e := startCLIEnv(t)
	dir := t.TempDir()
	agentConf, repData := filepath.Join(dir, "agent.yaml"), filepath.Join(dir, "rep")
	repCreds := filepath.Join(repData, "replicator.yaml")
	adminToken := adminTokenFile(e.cp.DataDir())
	if err := os.Mkdir(repData, 0o755); err != nil {
		t.Fatal(err)
	}
	for p, content := range map[string]string{agentConf: "key: [", repCreds: "key: [", adminToken: e.token + "\n"} {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Both fail on the damaged files, after making them private.
	_, errs, code := runCLI("agent", "run", "--config", agentConf, "--state-dir", filepath.Join(dir, "state"))
	if code != 1 || !strings.Contains(errs, "made private") {
		t.Errorf("agent run: exit %d, %q", code, errs)
	}
	_, errs, code = runCLI("--server", e.cp.URL(), "replicator", "--data", repData, "--listen", "127.0.0.1:0")
	if code != 1 || strings.Count(errs, "made private") != 2 {
		t.Errorf("replicator: exit %d, %q", code, errs)
	}
	var logs bytes.Buffer
	if _, err := prepareEnv(context.Background(), e.cp, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "made private") {
		t.Errorf("up and server: no warning about the admin token: %q", logs.String())
	}
	for p, want := range map[string]os.FileMode{agentConf: 0o600, repData: 0o700, repCreds: 0o600, adminToken: 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v, want %04o", p, err, fi.Mode(), want)
		}
	}
}
