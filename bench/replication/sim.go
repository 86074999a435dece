package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Simulated agents: each registers as a source server through the control plane's API
// (install token, its own key and CSR, as `lifeboat agent install` does), asks the
// control plane for its replicator, and opens a wire session to it with its own
// certificate, as the agent does (simagent.go: sessions after sessions, as the agent's
// replicate loop runs them). Then it writes:
//
//   - light: one batch of -blocks 64 KiB blocks every -period (random blocks of its
//     volume, half random bytes and half text, s2-compressed as the agent sends them),
//     and a consistency-point Marker every -marker (the replicator seals a PIT and
//     records it with the control plane);
//   - stream: batches of 32 blocks as fast as the session's window lets it (an initial
//     sync), for the replicator's memory with many volumes at full speed.
//
// It measures each batch's ack latency (written → acknowledged as durable), which is
// what a real agent's lag adds up from once its tracker has seen a write, the
// replicators' RSS (/proc/PID/status) and CPU, and its own CPU. A fleet (fleet.go):
// -replicators N of one site, -store s3 (versitygw), -kill-after D kills one replicator
// chosen at random and measures how its agents resume on the others; -verify runs
// `lifeboat store verify --read-data` on the staging store at the end.

type simFlags struct {
	bin, out, results, name, mode string
	agents, blocks                int
	period, marker                time.Duration
	duration, warmup              time.Duration
	volumeGiB                     int
	replicators                   int
	store, versitygw, serverArgs  string
	replicatorArgs                string
	killAfter, verifyTimeout      time.Duration
	verify, keep                  bool
	heap                          string
}

type simAgent struct {
	i       int
	id      string
	account string
	cert    tls.Certificate
	pool    *x509.CertPool
	client  *api.Client

	// The agent's goroutines' own.
	rng        *rand.ChaCha8
	pick       *rand.Rand
	wrote      chan struct{} // a write is pending
	next       time.Time     // of the writer
	nextMarker time.Time     // of the sessions
	markers    uint64
	opened     atomic.Bool
	sent       atomic.Int64
	lastErr    atomic.Value

	mu          sync.Mutex              // guards what follows (sessions, receivers, writer, measurement)
	rep         *api.ReplicatorEndpoint // the replicator the control plane last named
	known       string                  // the fingerprint of the config it named it in
	pending     []pendingWrite
	lat         []float64 // ms, written → acknowledged, in the measurement window
	latMoved    []float64 // the part of lat acknowledged after the kill, of an agent of the killed replicator
	sealLat     []float64
	acks        int64
	sessions    int // opened
	ends        int // sessions (or attempts) that ended before the run did
	unexpected  int // … not because its replicator was killed
	fullResends int // sessions, after an acknowledged one, whose Welcome asked for every block again
	movedFrom   string
	killAt      time.Time
	resumedAt   time.Time // first Ack from another replicator after the kill
}

func parseSimFlags(args []string) (simFlags, error) {
	var f simFlags
	fs := newFlagSet("sim")
	fs.StringVar(&f.bin, "lifeboat", ".cache/lifeboat-bench", "the lifeboat binary")
	fs.StringVar(&f.out, "out", "bench/out/replication", "work directory")
	fs.StringVar(&f.results, "results", "bench/out/replication/results.jsonl", "JSON lines to append to")
	fs.StringVar(&f.name, "name", "", "name of the run in the results")
	fs.StringVar(&f.mode, "mode", "light", "light or stream")
	fs.IntVar(&f.agents, "agents", 300, "simulated agents (source servers)")
	fs.IntVar(&f.blocks, "blocks", 1, "light: 64 KiB blocks per write")
	fs.DurationVar(&f.period, "period", time.Second, "light: time between writes of one agent")
	fs.DurationVar(&f.marker, "marker", 10*time.Second, "light: consistency-point interval (0: none)")
	fs.DurationVar(&f.duration, "duration", 120*time.Second, "measurement window")
	fs.DurationVar(&f.warmup, "warmup", 20*time.Second, "time after every session is open before measuring")
	fs.IntVar(&f.volumeGiB, "volume-gib", 4, "size of each simulated volume")
	fs.IntVar(&f.replicators, "replicators", 1, "replicators of the site (lifeboat processes)")
	fs.StringVar(&f.store, "store", "file", "staging store: file (a directory) or s3 (a bucket on versitygw)")
	fs.StringVar(&f.versitygw, "versitygw", "", "versitygw binary for -store s3 (default: $LIFEBOAT_TEST_VERSITYGW, PATH, .cache/bin)")
	fs.DurationVar(&f.killAfter, "kill-after", 0, "kill -9 one replicator, chosen at random, this long into the window (0: none)")
	fs.StringVar(&f.serverArgs, "server-args", "", "extra flags of lifeboat server, space-separated")
	fs.StringVar(&f.replicatorArgs, "replicator-args", "", "extra flags of lifeboat replicator, space-separated (e.g. --index-dir memory)")
	fs.BoolVar(&f.verify, "verify", false, "at the end, stop the writers and replicators and run lifeboat store verify --read-data")
	fs.DurationVar(&f.verifyTimeout, "verify-timeout", 20*time.Minute, "give up store verify after this long (recorded as not clean)")
	repEnv := fs.String("replicator-env", "", "extra environment of the replicator, comma-separated (e.g. GODEBUG=gctrace=1)")
	fs.BoolVar(&f.keep, "keep-logs", false, "copy the replicators' and control plane's logs to the output directory")
	fs.StringVar(&f.heap, "heap-profile", "", "run the replicator in this process and write its heap profile here at the end of the window (diagnosis: RSS then includes the simulator)")
	_ = fs.Parse(args)
	if f.heap != "" {
		inProcessReplicator = true
	}
	if *repEnv != "" {
		replicatorEnv = strings.Split(*repEnv, ",")
	}
	switch {
	case f.mode != "light" && f.mode != "stream":
		return f, fmt.Errorf("-mode must be light or stream")
	case f.agents < 1 || f.agents > 2000 || f.duration > time.Hour:
		return f, fmt.Errorf("-agents must be 1 to 2000 and -duration at most an hour")
	case f.replicators < 1 || f.replicators > 16:
		return f, fmt.Errorf("-replicators must be 1 to 16")
	case f.store != "file" && f.store != "s3":
		return f, fmt.Errorf("-store must be file or s3")
	case f.killAfter < 0 || f.killAfter >= f.duration:
		return f, fmt.Errorf("-kill-after must be within the window (-duration)")
	case f.killAfter > 0 && (f.replicators < 2 || f.heap != ""):
		return f, fmt.Errorf("-kill-after needs -replicators 2 or more (and no -heap-profile)")
	}
	if f.name == "" {
		f.name = fmt.Sprintf("%d agents, %s", f.agents, f.mode)
	}
	for _, p := range []*string{&f.bin, &f.out, &f.results} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return f, err
		}
		*p = abs
	}
	return f, nil
}

// fleet reports whether the run is a fleet's (phase "fleet" in the results).
func (f *simFlags) fleet() bool {
	return f.replicators > 1 || f.store != "file" || f.killAfter > 0 || f.verify
}

func cmdSim(ctx context.Context, args []string) error {
	f, err := parseSimFlags(args)
	if err != nil {
		return err
	}
	sink, err := openSink(f.results)
	if err != nil {
		return err
	}
	defer sink.close()
	u := &undo{}
	defer u.run()
	cl, err := startSimCluster(ctx, u, &f)
	if err != nil {
		return err
	}
	logf("registering %d source servers", f.agents)
	t0 := time.Now()
	agents, err := registerSims(ctx, cl, f.agents, int64(f.volumeGiB)<<30)
	if err != nil {
		return err
	}
	regTook := time.Since(t0)
	logf("registered in %s; waiting for the replicator assignment", regTook.Round(time.Millisecond))
	if err := waitAssigned(ctx, agents, 2*time.Minute); err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := &simState{}
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Go(func() { a.run(sctx, &f, st) })
		time.Sleep(20 * time.Millisecond) // stagger the handshakes
	}
	if err := waitOpened(ctx, st, agents, cl); err != nil {
		cancel()
		wg.Wait()
		return err
	}
	logf("%d sessions open; warming up %s, then measuring %s", len(agents), f.warmup, f.duration)
	sleepCtx(ctx, f.warmup)
	w := measure(ctx, cl, agents, &f, st)
	cancel()
	if !waitTimeout(&wg, time.Minute) {
		logf("some simulated agents had not stopped a minute after the window; going on")
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := w.reassignTimes(ctx, cl, agents); err != nil {
		logf("%v", err)
	}
	if f.verify {
		w.verify = verifyStore(ctx, cl, f.verifyTimeout)
	}
	sink.add(simResult(&f, agents, w, regTook))
	cl.stopAll()
	if f.keep {
		keepLogs(cl, f.out)
	}
	return nil
}

// waitTimeout waits for wg, at most d; it reports whether wg was done.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// waitOpened waits (2 minutes at most) until every agent opened a session.
func waitOpened(ctx context.Context, st *simState, agents []*simAgent, cl *cluster) error {
	for deadline := time.Now().Add(2 * time.Minute); st.opened.Load() < int64(len(agents)); {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("only %d of %d sessions opened: %s\n%s", st.opened.Load(), len(agents), firstErr(agents), cl.rep.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func firstErr(agents []*simAgent) string {
	for _, a := range agents {
		if v, ok := a.lastErr.Load().(string); ok {
			return fmt.Sprintf("agent %d: %s", a.i, v)
		}
	}
	return "none"
}

// registerSims registers n source servers, eight at a time.
func registerSims(ctx context.Context, cl *cluster, n int, volSize int64) ([]*simAgent, error) {
	if n > api.DefaultQuotaSourceServers {
		// An account may replicate 300 servers unless a system admin raises its quota.
		who, err := cl.admin.Whoami(ctx)
		if err != nil {
			return nil, fmt.Errorf("whoami: %w", err)
		}
		if _, err := cl.admin.UpdateAccount(ctx, who.AccountID, api.UpdateAccountRequest{QuotaSourceServers: &n}); err != nil {
			return nil, fmt.Errorf("raise the account's quota to %d servers: %w", n, err)
		}
	}
	tok, err := cl.admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall, Uses: n})
	if err != nil {
		return nil, err
	}
	pt, err := pki.ParseToken(tok.Secret)
	if err != nil {
		return nil, err
	}
	reg, err := api.NewClient(api.ClientConfig{Server: cl.url, Token: tok.Secret, Pin: pt.Pin, UserAgent: "replbench-sim"})
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	agents := make([]*simAgent, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			a, err := registerSim(ctx, reg, cl, i, volSize)
			if err != nil {
				errs <- fmt.Errorf("register agent %d: %w", i, err)
				return
			}
			agents[i] = a
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return agents, nil
}

func registerSim(ctx context.Context, reg *api.Client, cl *cluster, i int, volSize int64) (*simAgent, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	host := fmt.Sprintf("sim-%04d", i)
	csr, err := pki.NewCSR(key, host)
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	resp, err := reg.RegisterSourceServer(ctx, api.RegisterSourceServerRequest{CSR: string(csr), MachineID: "replbench-" + host, Hostname: host,
		OS: "linux", Arch: runtime.GOARCH, AgentVersion: "replbench", CPUs: 2, MemoryBytes: 4 << 30,
		Volumes: []api.Volume{{Name: "vda", Path: "/dev/vda", SizeBytes: volSize}}})
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(resp.CACertificates)) {
		return nil, errors.New("no CA certificate in the registration's answer")
	}
	client, err := api.NewClient(api.ClientConfig{Server: cl.url, CAPEM: cl.caPEM, Certificate: &cert, UserAgent: "replbench-sim"})
	if err != nil {
		return nil, err
	}
	return &simAgent{i: i, id: resp.SourceServer.ID, account: resp.SourceServer.AccountID, cert: cert, pool: pool, client: client}, nil
}

// waitAssigned asks the control plane, as each agent does, for its replicator.
func waitAssigned(ctx context.Context, agents []*simAgent, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, a := range agents {
		for {
			cfg, err := a.client.ReplicationConfig(ctx, a.id)
			if err == nil && cfg.Replicator != nil {
				a.rep = cfg.Replicator
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("agent %d has no replicator after %s (err %v)", a.i, timeout, err)
			}
			time.Sleep(time.Second)
		}
	}
	return nil
}

// simBlock fills raw with a unique block: 32 KiB of random bytes, then text.
func simBlock(raw []byte, rng *rand.ChaCha8, agent int, seq uint64) {
	half := len(raw) / 2
	_, _ = rng.Read(raw[:half])
	binary.LittleEndian.PutUint64(raw, seq)
	line := fmt.Appendf(nil, "simulated agent %04d writes its block at sequence %d; the rest of this half is text. ", agent, seq)
	for off := half; off < len(raw); off += len(line) {
		copy(raw[off:], line)
	}
}
