package main

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/replicator"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// inProcessReplicator runs the replicator's code in this process instead of the lifeboat
// binary, for heap profiles (-heap-profile): diagnosis, not measurement.
var inProcessReplicator bool

// replicatorEnv is added to the replicator's environment (-replicator-env).
var replicatorEnv []string

// cluster is a control plane and a replicator, each a lifeboat process, as test/e2e
// starts them, on 127.0.0.1.
type cluster struct {
	bin     string
	dir     string
	url     string
	repAddr string
	env     []string
	caPEM   []byte
	admin   *api.Client
	cp, rep *proc
}

// newCluster starts a control plane and a replicator in dir; settings adjusts the
// account's replication template (the staging store is dir/staging).
func newCluster(ctx context.Context, u *undo, bin, dir string, settings func(*api.ReplicationSettings)) (*cluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c := &cluster{bin: bin, dir: dir}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	rport, err := freePort()
	if err != nil {
		return nil, err
	}
	c.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	c.repAddr = fmt.Sprintf("127.0.0.1:%d", rport)
	data := filepath.Join(dir, "cp")
	c.cp, err = startProc("control plane", filepath.Join(dir, "server.log"), nil, bin, "server", "--data", data,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	u.push(c.cp.stop)
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", port), 60*time.Second); err != nil {
		return nil, fmt.Errorf("control plane: %w\n%s", err, c.cp.tail(20))
	}
	var token string
	for deadline := time.Now().Add(30 * time.Second); ; {
		if b, err := os.ReadFile(filepath.Join(data, "admin-token")); err == nil && len(b) > 0 {
			token = strings.TrimSpace(string(b))
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the control plane wrote no admin token\n%s", c.cp.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	caFile := filepath.Join(data, "pki", "ca.crt")
	if c.caPEM, err = os.ReadFile(caFile); err != nil {
		return nil, err
	}
	c.env = []string{"LIFEBOAT_SERVER=" + c.url, "LIFEBOAT_TOKEN=" + token, "LIFEBOAT_CA_CERT=" + caFile}
	if c.admin, err = api.NewClient(api.ClientConfig{Server: c.url, Token: token, CAPEM: c.caPEM}); err != nil {
		return nil, err
	}
	tmpl, err := c.admin.ReplicationTemplate(ctx)
	if err != nil {
		return nil, err
	}
	tmpl.StagingStoreURL = "file://" + filepath.Join(dir, "staging")
	if settings != nil {
		settings(&tmpl)
	}
	if _, err := c.admin.SetReplicationTemplate(ctx, tmpl); err != nil {
		return nil, err
	}
	tok, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeReplicator, Uses: 1})
	if err != nil {
		return nil, err
	}
	if inProcessReplicator {
		c.rep, err = startReplicatorHere(ctx, c, filepath.Join(dir, "rep"), tok.Secret)
	} else {
		// The install token in the environment (the last LIFEBOAT_TOKEN wins), not in argv.
		env := append(append(append([]string{}, c.env...), replicatorEnv...), "LIFEBOAT_TOKEN="+tok.Secret)
		c.rep, err = startProc("replicator", filepath.Join(dir, "replicator.log"), env, bin, "replicator",
			"--data", filepath.Join(dir, "rep"), "--listen", c.repAddr, "--address", c.repAddr, "--name", "rep1")
	}
	if err != nil {
		return nil, err
	}
	u.push(c.rep.stop)
	if err := waitTCP(ctx, c.repAddr, 60*time.Second); err != nil {
		return nil, fmt.Errorf("replicator: %w\n%s", err, c.rep.tail(20))
	}
	return c, nil
}

// setTemplate changes the account's replication template.
func (c *cluster) setTemplate(ctx context.Context, fn func(*api.ReplicationSettings)) error {
	tmpl, err := c.admin.ReplicationTemplate(ctx)
	if err != nil {
		return err
	}
	fn(&tmpl)
	_, err = c.admin.SetReplicationTemplate(ctx, tmpl)
	return err
}

// agentProc is a registered agent, running or not.
type agentProc struct {
	c      *cluster
	name   string
	id     string
	config string
	state  string
	p      *proc
}

// installAgent registers a source server for the volumes with `lifeboat agent install`.
func (c *cluster) installAgent(ctx context.Context, name string, volumes ...string) (*agentProc, error) {
	tok, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1})
	if err != nil {
		return nil, err
	}
	a := &agentProc{c: c, name: name, config: filepath.Join(c.dir, name+".yaml"), state: filepath.Join(c.dir, name+"-state")}
	tokenFile := filepath.Join(c.dir, name+".token") // tokens never in argv, not even env's
	if err := os.WriteFile(tokenFile, []byte(tok.Secret+"\n"), 0o600); err != nil {
		return nil, err
	}
	args := []string{"agent", "install", "--server", c.url, "--token-file", tokenFile, "--config", a.config, "--no-service", "--machine-id", "bench-" + name}
	for _, v := range volumes {
		args = append(args, "--volume", v)
	}
	out, err := run(ctx, c.bin, args...)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	a.id = strings.TrimSpace(lines[len(lines)-1])
	if !api.ValidID(api.PrefixSourceServer, a.id) {
		return nil, fmt.Errorf("agent install printed %q, not a source server id", out)
	}
	return a, nil
}

// start runs `lifeboat agent run`; it returns when the process started.
func (a *agentProc) start(u *undo) error {
	p, err := startProc("agent "+a.name, filepath.Join(a.c.dir, a.name+".log"), nil, a.c.bin, "agent", "run",
		"--config", a.config, "--state-dir", a.state, "--log-level", "debug")
	if err != nil {
		return err
	}
	a.p = p
	u.push(p.stop)
	return nil
}

func (a *agentProc) stop() {
	if a.p != nil {
		a.p.stop()
	}
}

func (a *agentProc) status() (agent.Status, error) { return agent.ReadStatus(a.state) }

// waitPIT polls the recovery snapshots every 50 ms until one whose consistency point is
// at or after since is listed; it returns it and when it was seen.
func (a *agentProc) waitPIT(ctx context.Context, since time.Time, timeout time.Duration) (api.RecoverySnapshot, time.Time, error) {
	since = since.Truncate(time.Millisecond) // the control plane keeps milliseconds
	deadline := time.Now().Add(timeout)
	for {
		page, err := a.c.admin.RecoverySnapshots(ctx, a.id, 1, "")
		now := time.Now()
		if err == nil && len(page.Items) > 0 && !page.Items[0].Time.Before(since) {
			return page.Items[0], now, nil
		}
		if a.p != nil && !a.p.running() {
			return api.RecoverySnapshot{}, now, fmt.Errorf("the agent exited\n%s", a.p.tail(30))
		}
		if now.After(deadline) || ctx.Err() != nil {
			tail := ""
			if a.p != nil {
				tail = a.p.tail(30)
			}
			return api.RecoverySnapshot{}, now, fmt.Errorf("no PIT at or after %s within %s (%v)\n%s\n--- replicator\n%s", since.Format(time.StampMilli),
				timeout, errTimeout, tail, a.c.rep.tail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitState polls the agent's status file until its state is one of states.
func (a *agentProc) waitState(ctx context.Context, timeout time.Duration, ok func(agent.Status) bool) (agent.Status, error) {
	deadline := time.Now().Add(timeout)
	for {
		s, err := a.status()
		if err == nil && ok(s) {
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return s, fmt.Errorf("agent %s: the awaited state did not come within %s (state %q, err %v)\n%s", a.name, timeout, s.State, err, a.p.tail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// statusAfter waits for a status written after t (the agent writes it every 2 s).
func (a *agentProc) statusAfter(ctx context.Context, t time.Time) (agent.Status, error) {
	return a.waitState(ctx, 30*time.Second, func(s agent.Status) bool { return s.UpdatedAt.After(t) })
}

// startReplicatorHere registers and runs a replicator in this process, as `lifeboat
// replicator` does.
func startReplicatorHere(ctx context.Context, c *cluster, data, token string) (*proc, error) {
	creds, err := replicator.LoadOrRegister(ctx, filepath.Join(data, "replicator.yaml"), replicator.RegisterOptions{
		Server: c.url, Token: token, Name: "rep1", Site: api.DefaultSite, Address: c.repAddr})
	if err != nil {
		return nil, err
	}
	client, err := creds.Client()
	if err != nil {
		return nil, err
	}
	cert, err := creds.TLSCertificate()
	if err != nil {
		return nil, err
	}
	pool, err := creds.CAPool()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(c.dir, "replicator.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	rep, err := replicator.New(replicator.Config{ID: creds.ID, ControlPlane: client, TLS: wire.ServerTLSConfig(cert, pool, creds.AccountID),
		Listen: c.repAddr, Logger: slog.New(slog.NewTextHandler(lf, nil))})
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := rep.Listen(); err != nil {
		lf.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	p := &proc{name: "replicator (in process)", done: make(chan struct{}), log: logPath, inproc: cancel}
	go func() {
		_ = rep.Run(rctx)
		lf.Close()
		client.Close()
		close(p.done)
	}()
	return p, nil
}

func logf(format string, args ...any) { log.Printf(format, args...) }
