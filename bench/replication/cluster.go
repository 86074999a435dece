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

// cluster is a control plane and one or more replicators of one site, each a lifeboat
// process, as test/e2e starts them, on 127.0.0.1.
type cluster struct {
	bin     string
	dir     string
	url     string
	repAddr string // the first replicator's
	env     []string
	caPEM   []byte
	admin   *api.Client
	cp, rep *proc // rep is the first replicator
	reps    []*proc
	addrs   []string // of reps
	opts    clusterOptions
}

// clusterOptions shape a cluster beyond newCluster's defaults.
type clusterOptions struct {
	replicators    int      // at least 1
	storeURL       string   // the staging store; empty: file://DIR/staging
	storeEnv       []string // given to every process that opens the store (S3 credentials)
	serverArgs     []string // extra flags of lifeboat server
	replicatorArgs []string // … of lifeboat replicator
	settings       func(*api.ReplicationSettings)
}

// newCluster starts a control plane and a replicator in dir; settings adjusts the
// account's replication template (the staging store is dir/staging).
func newCluster(ctx context.Context, u *undo, bin, dir string, settings func(*api.ReplicationSettings)) (*cluster, error) {
	return newClusterWith(ctx, u, bin, dir, clusterOptions{replicators: 1, settings: settings})
}

// newClusterWith starts a control plane and opts.replicators replicators in dir, named
// rep1, rep2, …, and waits until the control plane sees every one live.
func newClusterWith(ctx context.Context, u *undo, bin, dir string, opts clusterOptions) (*cluster, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c := &cluster{bin: bin, dir: dir, opts: opts}
	if err := c.startControlPlane(ctx, u); err != nil {
		return nil, err
	}
	storeURL := opts.storeURL
	if storeURL == "" {
		storeURL = "file://" + filepath.Join(dir, "staging")
	}
	err := c.setTemplate(ctx, func(t *api.ReplicationSettings) {
		t.StagingStoreURL = storeURL
		if opts.settings != nil {
			opts.settings(t)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("set the replication template: %w", err)
	}
	for i := range max(opts.replicators, 1) {
		if err := c.addReplicator(ctx, u, fmt.Sprintf("rep%d", i+1)); err != nil {
			return nil, err
		}
	}
	c.rep, c.repAddr = c.reps[0], c.addrs[0]
	if len(c.reps) > 1 {
		return c, c.waitLive(ctx, len(c.reps), time.Minute)
	}
	return c, nil
}

// startControlPlane starts lifeboat server and reads its admin token and CA.
func (c *cluster) startControlPlane(ctx context.Context, u *undo) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	c.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	data := filepath.Join(c.dir, "cp")
	args := append([]string{"server", "--data", data, "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, c.opts.serverArgs...)
	c.cp, err = startProc("control plane", filepath.Join(c.dir, "server.log"), c.opts.storeEnv, c.bin, args...)
	if err != nil {
		return err
	}
	u.push(c.cp.stop)
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", port), 60*time.Second); err != nil {
		return fmt.Errorf("control plane: %w\n%s", err, c.cp.tail(20))
	}
	var token string
	for deadline := time.Now().Add(30 * time.Second); ; {
		if b, err := os.ReadFile(filepath.Join(data, "admin-token")); err == nil && len(b) > 0 {
			token = strings.TrimSpace(string(b))
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the control plane wrote no admin token\n%s", c.cp.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	caFile := filepath.Join(data, "pki", "ca.crt")
	if c.caPEM, err = os.ReadFile(caFile); err != nil {
		return err
	}
	c.env = []string{"LIFEBOAT_SERVER=" + c.url, "LIFEBOAT_TOKEN=" + token, "LIFEBOAT_CA_CERT=" + caFile}
	c.admin, err = api.NewClient(api.ClientConfig{Server: c.url, Token: token, CAPEM: c.caPEM})
	return err
}

// addReplicator registers and starts a replicator named name on a free port.
func (c *cluster) addReplicator(ctx context.Context, u *undo, name string) error {
	rport, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", rport)
	tok, err := c.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeReplicator, Uses: 1})
	if err != nil {
		return err
	}
	logPath := filepath.Join(c.dir, name+".log")
	if len(c.reps) == 0 {
		logPath = filepath.Join(c.dir, "replicator.log") // where the single-replicator benches look
	}
	var p *proc
	if inProcessReplicator && len(c.reps) == 0 {
		c.repAddr = addr
		p, err = startReplicatorHere(ctx, c, filepath.Join(c.dir, "rep"), tok.Secret)
	} else {
		// The install token in the environment (the last LIFEBOAT_TOKEN wins), not in argv.
		env := append(append(append(append([]string{}, c.env...), c.opts.storeEnv...), replicatorEnv...), "LIFEBOAT_TOKEN="+tok.Secret)
		data := filepath.Join(c.dir, "rep")
		if len(c.reps) > 0 {
			data = filepath.Join(c.dir, name)
		}
		args := append([]string{"replicator", "--data", data, "--listen", addr, "--address", addr, "--name", name}, c.opts.replicatorArgs...)
		p, err = startProc("replicator "+name, logPath, env, c.bin, args...)
	}
	if err != nil {
		return err
	}
	u.push(p.stop)
	if err := waitTCP(ctx, addr, 60*time.Second); err != nil {
		return fmt.Errorf("replicator %s: %w\n%s", name, err, p.tail(20))
	}
	c.reps, c.addrs = append(c.reps, p), append(c.addrs, addr)
	return nil
}

// waitLive waits until the control plane lists n live replicators.
func (c *cluster) waitLive(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		list, err := c.admin.Replicators(ctx)
		live := 0
		for _, r := range list.Items {
			if r.State == api.ReplicatorLive {
				live++
			}
		}
		if err == nil && live >= n {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d of %d replicators live after %s (err %v)", live, n, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
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
