package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// TestMain lets a test run this package's command line as a separate process (the test
// binary re-executed with LIFEBOAT_TEST_EXEC=1), so a test can kill it with SIGKILL.
func TestMain(m *testing.M) {
	if os.Getenv("LIFEBOAT_TEST_EXEC") == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// cliEnv is a control plane in this process and a way to run the command line against it.
type cliEnv struct {
	t         *testing.T
	cp        *controlplane.ControlPlane
	dir       string
	token     string // admin
	tokenFile string // holds token
	caPath    string
}

func startCLIEnv(t *testing.T) *cliEnv {
	t.Helper()
	dir := t.TempDir()
	cp, err := controlplane.Open(context.Background(), controlplane.Config{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		cp.Close()
	})
	tok, err := cp.CreateToken(ctx, cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
	if err != nil {
		t.Fatal(err)
	}
	return &cliEnv{t: t, cp: cp, dir: dir, token: tok.Secret, tokenFile: writeTokenFile(t, dir, tok.Secret),
		caPath: filepath.Join(dir, "data", "pki", "ca.crt")}
}

// writeTokenFile writes a token to a new private file in dir, for --token-file.
func writeTokenFile(t *testing.T, dir, token string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "token-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(token + "\n"); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// run runs the command line with the global flags for the control plane added.
func (e *cliEnv) run(args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	full := append([]string{"--server", e.cp.URL(), "--token-file", e.tokenFile, "--ca-cert", e.caPath}, args...)
	return runCLI(full...)
}

func runCLI(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// must runs a command that must succeed and returns its stdout.
func (e *cliEnv) must(args ...string) string {
	e.t.Helper()
	out, errs, code := e.run(args...)
	if code != 0 {
		e.t.Fatalf("lifeboat %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// fails runs a command that must fail with the exit code and a one-line message.
func (e *cliEnv) fails(code int, contains string, args ...string) {
	e.t.Helper()
	_, errs, got := e.run(args...)
	if got != code {
		e.t.Fatalf("lifeboat %s: exit %d, want %d (%s)", strings.Join(args, " "), got, code, errs)
	}
	if strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.HasPrefix(errs, "lifeboat: ") {
		e.t.Errorf("lifeboat %s: error is not one line: %q", strings.Join(args, " "), errs)
	}
	if !strings.Contains(errs, contains) {
		e.t.Errorf("lifeboat %s: error %q does not contain %q", strings.Join(args, " "), errs, contains)
	}
}

func TestCLIOverTheAPI(t *testing.T) {
	e := startCLIEnv(t)
	install := strings.TrimSpace(e.must("tokens", "create", "--kind", "install", "--uses", "3"))
	if !strings.HasPrefix(install, "lbi_") {
		t.Fatalf("install token %q", install)
	}
	installFile := writeTokenFile(t, e.dir, install)
	cfg := filepath.Join(e.dir, "agent", "agent.yaml")
	// agent install trusts the control plane through the token's pin alone.
	out, errs, code := runCLI("agent", "install", "--server", e.cp.URL(), "--token-file", installFile, "--config", cfg,
		"--no-service", "--machine-id", "machine-1")
	if code != 0 {
		t.Fatalf("agent install: %d %s", code, errs)
	}
	id := strings.TrimSpace(out)
	if !api.ValidID(api.PrefixSourceServer, id) {
		t.Fatalf("agent install printed %q, want a source server id", out)
	}
	fi, err := os.Stat(cfg)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config %s: %v mode %v, want 0600", cfg, err, fi.Mode())
	}
	ac, err := api.LoadAgentConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := ac.Client()
	if err != nil {
		t.Fatal(err)
	}
	who, err := agent.Whoami(context.Background())
	if err != nil || who.Kind != api.CallerSourceServer || who.ID != id {
		t.Fatalf("the installed agent is %+v, %v", who, err)
	}
	// Installing again over the config, or the same machine elsewhere, is refused.
	_, errs, code = runCLI("agent", "install", "--server", e.cp.URL(), "--token-file", installFile, "--config", cfg, "--no-service", "--machine-id", "machine-1")
	if code != 1 || !strings.Contains(errs, "--replace") {
		t.Fatalf("second install over the config: %d %q", code, errs)
	}
	_, errs, code = runCLI("agent", "install", "--server", e.cp.URL(), "--token-file", installFile, "--config", cfg+".2", "--no-service", "--machine-id", "machine-1")
	if code != 1 || !strings.Contains(errs, id) || !strings.Contains(errs, "--replace") {
		t.Fatalf("duplicate machine: %d %q", code, errs)
	}
	// A systemd unit is written unless --no-service.
	units := filepath.Join(e.dir, "units")
	if _, errs, code := runCLI("agent", "install", "--server", e.cp.URL(), "--token-file", installFile, "--config", cfg+".3",
		"--unit-dir", units, "--machine-id", "machine-2"); code != 0 {
		t.Fatalf("install with a unit: %s", errs)
	}
	unit, err := os.ReadFile(filepath.Join(units, "lifeboat-agent.service"))
	if err != nil || !strings.Contains(string(unit), "agent run --config "+cfg+".3") {
		t.Fatalf("unit: %v\n%s", err, unit)
	}

	// -o json prints the API's own JSON.
	var list api.SourceServerList
	if err := json.Unmarshal([]byte(e.must("source-servers", "list", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	admin, err := api.NewClient(api.ClientConfig{Server: e.cp.URL(), Token: e.token, CAPEM: e.cp.CACertPEM()})
	if err != nil {
		t.Fatal(err)
	}
	direct, err := admin.ListSourceServers(context.Background(), api.SourceServerFilter{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(list.Items)
	b, _ := json.Marshal(direct.Items)
	if len(list.Items) != 2 || !bytes.Equal(a, b) {
		t.Fatalf("-o json differs from the API:\n%s\n%s", a, b)
	}
	table := e.must("source-servers", "list", "--hostname", "")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "READY") {
		t.Fatalf("table:\n%s", table)
	}
	if !strings.Contains(e.must("source-servers", "describe", id), "machine-1") {
		t.Fatal("describe does not show the machine id")
	}

	// Settings: template, overrides, inheritance, launch settings.
	e.must("settings", "replication", "set", "--bandwidth-mbps", "50", "--daily-retention", "30")
	var tmpl api.ReplicationSettings
	_ = json.Unmarshal([]byte(e.must("settings", "replication", "get", "-o", "json")), &tmpl)
	if tmpl.BandwidthMbps != 50 || tmpl.PITPolicy.Rules[2].RetentionDuration != 30 {
		t.Fatalf("template after set: %+v", tmpl)
	}
	e.must("settings", "replication", "set", "--server-id", id, "--compression", "s2", "--consistency-interval", "30s")
	var ss api.ServerReplicationSettings
	_ = json.Unmarshal([]byte(e.must("settings", "replication", "get", "--server-id", id, "-o", "json")), &ss)
	if ss.Effective.Compression != "s2" || ss.Effective.ConsistencyPointIntervalSeconds != 30 || ss.Effective.BandwidthMbps != 50 {
		t.Fatalf("server settings: %+v", ss)
	}
	e.must("settings", "replication", "set", "--server-id", id, "--inherit", "compression")
	ss = api.ServerReplicationSettings{}
	_ = json.Unmarshal([]byte(e.must("settings", "replication", "get", "--server-id", id, "-o", "json")), &ss)
	if ss.Effective.Compression != "s2" || ss.Overrides.Compression != nil || ss.Overrides.ConsistencyPointIntervalSeconds == nil {
		t.Fatalf("after --inherit compression: %+v", ss)
	}
	e.must("settings", "launch", "set", id, "--cpus", "3", "--network", "user", "--port-forward", "tcp:2222:22", "--tag", "env=dr")
	var ls api.LaunchSettingsResponse
	_ = json.Unmarshal([]byte(e.must("settings", "launch", "get", id, "-o", "json")), &ls)
	if ls.Settings.CPUs != 3 || len(ls.Settings.Network.PortForwards) != 1 || ls.Settings.Tags["env"] != "dr" {
		t.Fatalf("launch settings: %+v", ls.Settings)
	}

	// Exit codes: 2 for bad usage (caught before any request), 1 for a refused operation.
	e.fails(2, "--frobnicate", "settings", "launch", "set", id, "--frobnicate")
	e.fails(2, "cpus must be 1 to 256", "settings", "launch", "set", id, "--cpus", "0")
	e.fails(2, "bandwidthMbps", "settings", "replication", "set", "--bandwidth-mbps", "-1")
	e.fails(2, "role", "tokens", "create", "--kind", "api")
	e.fails(2, "takes a source server id", "source-servers", "describe")
	e.fails(1, "not found", "source-servers", "describe", "s-00000000000000000")
	e.fails(1, "targetSite", "settings", "replication", "set", "--target-site", "nowhere")
	viewerTok := strings.TrimSpace(e.must("tokens", "create", "--kind", "api", "--role", "viewer"))
	_, errs, code = runCLI("--server", e.cp.URL(), "--token-file", writeTokenFile(t, e.dir, viewerTok), "--ca-cert", e.caPath, "tokens", "list")
	if code != 1 || !strings.Contains(errs, "admin role") {
		t.Fatalf("viewer listing tokens: %d %q", code, errs)
	}
	_, errs, code = runCLI("--server", e.cp.URL(), "--token-file", e.tokenFile, "source-servers", "list")
	if code != 1 || !strings.Contains(errs, "--ca-cert") {
		t.Fatalf("without the CA: %d %q", code, errs)
	}

	// Delete asks unless --yes; the audit log shows who did what.
	if _, errs, code := e.run("source-servers", "delete", id); code != 1 || !strings.Contains(errs, "[y/N]") || !strings.Contains(errs, "not deleted") {
		t.Fatalf("delete without an answer: %d %q", code, errs)
	}
	e.must("source-servers", "delete", id, "--yes")
	e.fails(1, "not found", "source-servers", "describe", id)
	audit := e.must("audit", "list", "--limit", "100")
	for _, action := range []string{"source-server.register", "source-server.delete", "settings.set-replication-template",
		"source-server.set-launch-settings", "token.create"} {
		if !strings.Contains(audit, action) {
			t.Errorf("audit list lacks %s:\n%s", action, audit)
		}
	}
	e.must("sites", "create", "dr", "--description", "second room")
	if !strings.Contains(e.must("sites", "list"), "second room") {
		t.Fatal("sites list does not show the new site")
	}
	e.must("sites", "delete", "dr")
	acct := strings.Fields(strings.Split(e.must("accounts", "describe"), "\n")[1])[0]
	if !strings.Contains(e.must("accounts", "set-quota", acct, "5"), " 5 ") {
		t.Fatal("set-quota did not show the new quota")
	}
}

func TestAgentInstallRefusesAServerThatDoesNotMatchThePin(t *testing.T) {
	e := startCLIEnv(t)
	install := strings.TrimSpace(e.must("tokens", "create", "--kind", "install"))
	forged := install[:strings.LastIndex(install, "_")+1] + strings.Repeat("0", 32)
	_, errs, code := runCLI("agent", "install", "--server", e.cp.URL(), "--token-file", writeTokenFile(t, e.dir, forged), "--config",
		filepath.Join(e.dir, "a.yaml"), "--no-service", "--machine-id", "m")
	if code != 1 || !strings.Contains(errs, "pin") {
		t.Fatalf("forged pin: %d %q", code, errs)
	}
	if out := e.must("source-servers", "list", "-o", "json"); strings.Contains(out, `"id"`) {
		t.Fatalf("a server was registered through a forged pin: %s", out)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "a.yaml")); err == nil {
		t.Fatal("a config was written")
	}
	_, errs, code = runCLI("agent", "install", "--server", e.cp.URL(), "--token-file", writeTokenFile(t, e.dir, "lbt_nope"), "--no-service")
	if code != 2 || !strings.Contains(errs, "install token") {
		t.Fatalf("API token to agent install: %d %q", code, errs)
	}
}

// syncBuffer is a bytes.Buffer safe to read while a command writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestUpPrintsWhatTheUserNeeds runs `lifeboat up`, follows what it prints (the printed
// agent install command must work as printed), and stops it.
func TestUpPrintsWhatTheUserNeeds(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"up", "--data", dir, "--listen", addr}, strings.NewReader(""), &out, &errb)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Stop with Ctrl-C") {
		if time.Now().After(deadline) {
			t.Fatalf("up printed no summary within 30s:\n%s\n%s", out.String(), errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	text := out.String()
	for _, want := range []string{"https://" + addr + "/", filepath.Join(dir, "admin-token"), "file://" + filepath.Join(dir, "staging"),
		"| sudo lifeboat agent install --server https://" + addr + " --token-file -"} {
		if !strings.Contains(text, want) {
			t.Errorf("up's summary lacks %q:\n%s", want, text)
		}
	}
	for path, mode := range map[string]os.FileMode{filepath.Join(dir, "admin-token"): 0o600, filepath.Join(dir, "staging"): 0o700 | os.ModeDir,
		filepath.Join(dir, "staging.key"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode() != mode {
			t.Errorf("%s: %v, mode %v, want %v", path, err, fi.Mode(), mode)
		}
	}
	// The printed install command works as printed, with its token in no process's argv.
	var stdin string
	var install []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "agent install") {
			stdin, install = parseInstallCommand(t, line)
		}
	}
	install = append(install, "--config", filepath.Join(t.TempDir(), "agent.yaml"), "--no-service", "--machine-id", "up-test")
	var iout, ierr bytes.Buffer
	if code := Main(ctx, install, strings.NewReader(stdin), &iout, &ierr); code != 0 || strings.Contains(ierr.String(), "warning") {
		t.Fatalf("the printed install command: exit %d, stderr %q", code, ierr.String())
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "admin-token"))
	ca, _ := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	c, err := api.NewClient(api.ClientConfig{Server: "https://" + addr, Token: strings.TrimSpace(string(tok)), CAPEM: ca})
	if err != nil {
		t.Fatal(err)
	}
	list, err := c.ListSourceServers(ctx, api.SourceServerFilter{})
	if err != nil || len(list.Items) != 1 || list.Items[0].MachineID != "up-test" {
		t.Fatalf("after install: %+v, %v", list, err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("up exited %d: %s", code, errb.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("up did not stop within 15s of cancellation")
	}
}
