// Package e2e runs Lifeboat end to end as its users do: the lifeboat binary as separate
// processes (control plane, replicator, agent) on real loop devices with real ext4.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// binary is the lifeboat binary built once for the package's tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lifeboat-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "lifeboat")
	// Static, as released: it also runs inside the test's VMs and on the rescue media.
	build := exec.Command("go", "build", "-o", binary, "github.com/lifeboat-dr/lifeboat/cmd/lifeboat")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build lifeboat: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a lifeboat process the test started.
type proc struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}

// cluster is a control plane, a replicator and (once added) an agent.
type cluster struct {
	t       *testing.T
	dir     string
	url     string
	repAddr string
	admin   *api.Client
	env     []string
	server  *proc
	rep     *proc
	agent   *proc
	agentID string
	agentSt string // the agent's state directory
	agentCf string // its config
	repNS   string // the replicator's network namespace, if any
	// advertise is the address agents reach the replicator at, when not repAddr's host.
	advertise string
	// serverArgs and serverAddr start the control plane again (restartServer).
	serverArgs []string
	serverAddr string
	restarts   int
	repExtra   []string // more arguments of the replicator (clusterOptions.repExtra)
}

// restartServer kills the control plane (SIGKILL: nothing is flushed) and starts it
// again on the same data.
func (c *cluster) restartServer() {
	c.t.Helper()
	c.server.kill()
	c.restarts++
	c.server = c.start(fmt.Sprintf("server-%d", c.restarts), c.serverArgs...)
	testutil.WaitTCP(c.t, c.serverAddr, 30*time.Second)
}

func (c *cluster) start(name string, args ...string) *proc {
	c.t.Helper()
	return c.startCmd(name, binary, args...)
}

func (c *cluster) startCmd(name, program string, args ...string) *proc {
	c.t.Helper()
	cmd := exec.Command(program, args...)
	cmd.Env = append(os.Environ(), c.env...)
	var log bytes.Buffer
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	testutil.StartProcess(c.t, cmd)
	p := &proc{cmd: cmd, log: &log, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	c.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.kill()
		}
	})
	return p
}

// clusterOptions place the parts: by default all on 127.0.0.1.
type clusterOptions struct {
	cpHost  string // address the control plane listens on
	repNS   string // network namespace the replicator runs in ("": none)
	repHost string // address the replicator listens on
	store   string // staging store directory (default DIR/staging)
	// advertise, when set, is the address agents reach the control plane and the
	// replicator at (QEMU guests: 10.0.2.2, the host's loopback seen from user-mode
	// networking); they still listen on cpHost and repHost.
	advertise string
	dir       string // the cluster's directory (default: a test temporary directory)
	// serverExtra and repExtra are more arguments of lifeboat server and replicator.
	serverExtra, repExtra []string
	// cpPort is the port the control plane listens on (0: a free one).
	cpPort int
	// front, when set, is a load balancer's host:port in front of the control plane:
	// its --url, and what clients, agents and the replicator reach it at.
	front string
}

// newCluster starts a control plane and a replicator writing to a local staging store.
func newCluster(t *testing.T) *cluster { return newClusterWith(t, clusterOptions{}) }

func newClusterWith(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	testutil.RequireRoot(t)
	if o.cpHost == "" {
		o.cpHost = "127.0.0.1"
	}
	if o.repHost == "" {
		o.repHost = "127.0.0.1"
	}
	dir := o.dir
	if dir == "" {
		dir = t.TempDir()
	}
	c := &cluster{t: t, dir: dir, repNS: o.repNS, advertise: o.advertise, repExtra: o.repExtra}
	port, rport := o.cpPort, testutil.FreePort(t)
	if port == 0 {
		port = testutil.FreePort(t)
	}
	c.url = fmt.Sprintf("https://%s:%d", o.cpHost, port)
	if o.front != "" {
		c.url = "https://" + o.front
		o.serverExtra = append([]string{"--url", c.url}, o.serverExtra...)
	}
	c.repAddr = fmt.Sprintf("%s:%d", o.repHost, rport)
	data := filepath.Join(dir, "cp")
	// The control plane makes its master key (DATA/staging.key) and gives the replicator
	// the key of the system account's store; the replicator holds no key file.
	args := []string{"server", "--data", data, "--listen", fmt.Sprintf("%s:%d", o.cpHost, port), "--hostname", o.cpHost, "--log-level", "debug"}
	if o.advertise != "" {
		args = append(args, "--url", fmt.Sprintf("https://%s:%d", o.advertise, port), "--hostname", o.advertise)
	}
	args = append(args, o.serverExtra...)
	c.server = c.start("server", args...)
	c.serverArgs, c.serverAddr = args, fmt.Sprintf("%s:%d", o.cpHost, port)
	testutil.WaitTCP(t, c.serverAddr, 30*time.Second)
	var token string
	for deadline := time.Now().Add(20 * time.Second); ; {
		if b, err := os.ReadFile(filepath.Join(data, "admin-token")); err == nil && len(b) > 0 {
			token = strings.TrimSpace(string(b))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the control plane wrote no admin token")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ca, err := os.ReadFile(filepath.Join(data, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	c.env = []string{"LIFEBOAT_SERVER=" + c.url, "LIFEBOAT_TOKEN=" + token, "LIFEBOAT_CA_CERT=" + filepath.Join(data, "pki", "ca.crt")}
	c.admin, err = api.NewClient(api.ClientConfig{Server: c.url, Token: token, CAPEM: ca})
	if err != nil {
		t.Fatal(err)
	}
	// The tests run with the default settings (points every second), on their own store.
	tmpl, err := c.admin.ReplicationTemplate(context.Background())
	// A load balancer may first send a call to a control plane not started yet, until its
	// health check marks that one down.
	for deadline := time.Now().Add(20 * time.Second); err != nil && o.front != "" && time.Now().Before(deadline); {
		time.Sleep(250 * time.Millisecond)
		tmpl, err = c.admin.ReplicationTemplate(context.Background())
	}
	if err != nil {
		t.Fatal(err)
	}
	if o.store == "" {
		o.store = filepath.Join(dir, "staging")
	}
	tmpl.StagingStoreURL = "file://" + o.store
	if _, err := c.admin.SetReplicationTemplate(context.Background(), tmpl); err != nil {
		t.Fatal(err)
	}
	c.startReplicator()
	return c
}

func (c *cluster) startReplicator() {
	c.t.Helper()
	ctx := context.Background()
	addr := c.repAddr
	if c.advertise != "" {
		_, port, _ := net.SplitHostPort(c.repAddr)
		addr = net.JoinHostPort(c.advertise, port)
	}
	args := []string{"replicator", "--data", filepath.Join(c.dir, "rep"), "--listen", c.repAddr, "--address", addr, "--name", "rep1", "--log-level", "debug"}
	args = append(args, c.repExtra...)
	if _, err := os.Stat(filepath.Join(c.dir, "rep", "replicator.yaml")); err != nil {
		tok, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeReplicator, Uses: 1})
		if err != nil {
			c.t.Fatal(err)
		}
		args = append(args, "--token-file", c.tokenFile("replicator.token", tok.Secret))
	}
	if c.repNS != "" {
		args = append([]string{"netns", "exec", c.repNS, binary}, args...)
		c.rep = c.startCmd("replicator", "ip", args...)
	} else {
		c.rep = c.start("replicator", args...)
	}
	testutil.WaitTCP(c.t, c.repAddr, 30*time.Second)
}

// tokenFile writes a token to a private file in the cluster's directory, for
// --token-file: a token in argv would be visible to every user of the machine.
func (c *cluster) tokenFile(name, token string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// cli runs a lifeboat command against the control plane and returns its stdout.
// masterKey is the control plane's master key file: with it alone, lifeboat store
// commands open every account's store.
func (c *cluster) masterKey() string { return filepath.Join(c.dir, "cp", "staging.key") }

func (c *cluster) cli(args ...string) string {
	c.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), c.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// installAgent registers an agent for the volume (a block device).
func (c *cluster) installAgent(volume string) { c.installAgentWith(volume) }

func (c *cluster) installAgentWith(volume string, extra ...string) {
	c.t.Helper()
	tok, err := c.admin.CreateToken(context.Background(), api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1})
	if err != nil {
		c.t.Fatal(err)
	}
	c.agentCf = filepath.Join(c.dir, "agent.yaml")
	c.agentSt = filepath.Join(c.dir, "agent-state")
	args := append([]string{"agent", "install", "--server", c.url, "--token-file", c.tokenFile("install.token", tok.Secret), "--volume", volume, "--config", c.agentCf,
		"--no-service", "--machine-id", "e2e-" + filepath.Base(c.dir)}, extra...)
	out := c.cli(args...)
	c.agentID = strings.TrimSpace(out)
	if !api.ValidID(api.PrefixSourceServer, c.agentID) {
		c.t.Fatalf("agent install printed %q, not a source server id", out)
	}
}

func (c *cluster) startAgent(extra ...string) {
	args := append([]string{"agent", "run", "--config", c.agentCf, "--state-dir", c.agentSt, "--log-level", "debug"}, extra...)
	c.agent = c.start("agent", args...)
}

// waitState waits until the server's replication is in one of states.
func (c *cluster) waitState(timeout time.Duration, states ...string) api.SourceServer {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := c.admin.SourceServer(context.Background(), c.agentID)
		if err == nil {
			for _, st := range states {
				if s.Replication.DataReplicationState == st {
					return s
				}
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("replication did not reach %v within %s: %+v (%v)\n%s", states, timeout, s.Replication, err, c.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cluster) logs() string {
	var b strings.Builder
	for _, n := range []string{"agent", "replicator"} {
		data, _ := os.ReadFile(filepath.Join(c.dir, n+".log"))
		lines := strings.Split(string(data), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "--- %s log (tail)\n%s\n", n, strings.Join(lines, "\n"))
	}
	return b.String()
}

// snapshot asks for a PIT now and waits for it.
func (c *cluster) snapshot() api.RecoverySnapshot {
	c.t.Helper()
	ctx := context.Background()
	req, err := c.admin.RequestSnapshot(ctx, c.agentID)
	if err != nil {
		c.t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		page, err := c.admin.RecoverySnapshots(ctx, c.agentID, 1, "")
		if err == nil && len(page.Items) > 0 && !page.Items[0].Time.Before(req.RequestedAt) {
			return page.Items[0]
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no PIT after the request of %s\n%s", req.RequestedAt, c.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// exportAndCheck exports a PIT, checks the image with fsck -n and compares its files
// with want (path → sha256).
func (c *cluster) exportAndCheck(pit api.RecoverySnapshot, volume string, want map[string]string) {
	c.t.Helper()
	out := filepath.Join(c.dir, "export-"+pit.ID)
	c.cli("export", c.agentID, "--pit", pit.ID, "--to", out) // through the control plane: no key file here
	img := filepath.Join(out, volume+".img")
	if o, err := exec.Command("fsck.ext4", "-n", "-f", img).CombinedOutput(); err != nil {
		c.t.Fatalf("fsck -n of the exported PIT %s: %v\n%s", pit.ID, err, o)
	}
	mnt := testutil.Mount(c.t, img, "-o", "loop,ro,noload")
	got := treeHashes(c.t, mnt)
	if len(got) != len(want) {
		c.t.Fatalf("PIT %s holds %d files, the source had %d at that moment", pit.ID, len(got), len(want))
	}
	for p, h := range want {
		if got[p] != h {
			c.t.Fatalf("PIT %s: %s differs from the source at the point (got %q)", pit.ID, p, got[p])
		}
	}
}

// treeHashes returns the sha256 of every regular file under root.
func treeHashes(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "lost+found" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		rel, _ := filepath.Rel(root, p)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeFiles writes n files of random content (sizes up to maxKiB) under dir.
func writeFiles(t *testing.T, dir string, seed uint64, n, maxKiB int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 99))
	for i := 0; i < n; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%02d", i%7))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1+rng.IntN(maxKiB<<10))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%d-%d", seed, i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type agentStatusT = agent.Status

func readStatus(dir string) (agent.Status, error) { return agent.ReadStatus(dir) }
