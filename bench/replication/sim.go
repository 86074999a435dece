package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// Simulated agents: each registers as a source server through the control plane's API
// (install token, its own key and CSR, as `lifeboat agent install` does), asks the
// control plane for its replicator, and opens a wire session to it with its own
// certificate, as the agent does. Then it writes:
//
//   - light: one batch of -blocks 64 KiB blocks every -period (random blocks of its
//     volume, half random bytes and half text, s2-compressed as the agent sends them),
//     and a consistency-point Marker every -marker (the replicator seals a PIT and
//     records it with the control plane);
//   - stream: batches of 32 blocks as fast as the session's window lets it (an initial
//     sync), for the replicator's memory with many volumes at full speed.
//
// It measures each batch's ack latency (written → acknowledged as durable), which is
// what a real agent's lag adds up from once its tracker has seen a write, the replicator's
// RSS (/proc/PID/status) and CPU, and its own CPU.

type simFlags struct {
	bin, out, results, name, mode string
	agents, blocks                int
	period, marker                time.Duration
	duration, warmup              time.Duration
	volumeGiB                     int
}

type simAgent struct {
	i        int
	id       string
	account  string
	cert     tls.Certificate
	pool     *x509.CertPool
	client   *api.Client
	repAddr  string
	assigned wire.Assigned // the replicator it may send to

	// results (own goroutines only until the end)
	lat     []float64 // ms, in the measurement window
	sealLat []float64
	sent    int64
	errs    atomic.Int64
	lastErr atomic.Value
}

func cmdSim(ctx context.Context, args []string) error {
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
	repEnv := fs.String("replicator-env", "", "extra environment of the replicator, comma-separated (e.g. GODEBUG=gctrace=1)")
	keep := fs.Bool("keep-logs", false, "copy the replicator's log to the output directory")
	heap := fs.String("heap-profile", "", "run the replicator in this process and write its heap profile here at the end of the window (diagnosis: RSS then includes the simulator)")
	_ = fs.Parse(args)
	if *heap != "" {
		inProcessReplicator = true
	}
	if *repEnv != "" {
		replicatorEnv = strings.Split(*repEnv, ",")
	}
	if f.mode != "light" && f.mode != "stream" {
		return fmt.Errorf("-mode must be light or stream")
	}
	if f.agents < 1 || f.agents > 2000 || f.duration > time.Hour {
		return fmt.Errorf("-agents must be 1 to 2000 and -duration at most an hour")
	}
	if f.name == "" {
		f.name = fmt.Sprintf("%d agents, %s", f.agents, f.mode)
	}
	for _, p := range []*string{&f.bin, &f.out, &f.results} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	sink, err := openSink(f.results)
	if err != nil {
		return err
	}
	defer sink.close()
	u := &undo{}
	defer u.run()
	dir := filepath.Join(f.out, fmt.Sprintf("sim-%d-%s", f.agents, f.mode))
	_ = os.RemoveAll(dir)
	u.push(func() { _ = os.RemoveAll(dir) })
	cl, err := newCluster(ctx, u, f.bin, dir, nil)
	if err != nil {
		return err
	}
	repPID := cl.rep.pid()
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
	var measuring atomic.Bool
	var wg sync.WaitGroup
	var opened atomic.Int64
	for _, a := range agents {
		wg.Go(func() {
			err := a.session(sctx, &f, &measuring, &opened)
			if err != nil && sctx.Err() == nil {
				a.errs.Add(1)
				a.lastErr.Store(err.Error())
			}
		})
		time.Sleep(20 * time.Millisecond) // stagger the handshakes
	}
	for deadline := time.Now().Add(2 * time.Minute); opened.Load() < int64(len(agents)); {
		if time.Now().After(deadline) || ctx.Err() != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("only %d of %d sessions opened: %s\n%s", opened.Load(), len(agents), firstErr(agents), cl.rep.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	logf("%d sessions open; warming up %s, then measuring %s", len(agents), f.warmup, f.duration)
	sleepCtx(ctx, f.warmup)
	load := loadAvg()
	repCPU0, selfCPU0 := cpuTime(repPID), cpuTime(os.Getpid())
	measuring.Store(true)
	mStart := time.Now()
	var rssMax int64
	var rss []float64
	tick := time.NewTicker(time.Second)
	for time.Since(mStart) < f.duration && ctx.Err() == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
		r := memKiB(repPID, "VmRSS")
		if *heap != "" && r > rssMax*6/5 {
			// The heap at the highest RSS so far (as of the last GC).
			if hf, err := os.Create(*heap + ".peak"); err == nil {
				_ = pprof.WriteHeapProfile(hf)
				hf.Close()
			}
		}
		rssMax = max(rssMax, r)
		rss = append(rss, float64(r)/1024)
	}
	tick.Stop()
	if *heap != "" {
		runtime.GC()
		if hf, err := os.Create(*heap); err == nil {
			_ = pprof.WriteHeapProfile(hf)
			hf.Close()
		}
	}
	measuring.Store(false)
	wall := time.Since(mStart).Seconds()
	repCPU, selfCPU := cpuTime(repPID)-repCPU0, cpuTime(os.Getpid())-selfCPU0
	hwm := memKiB(repPID, "VmHWM")
	cancel()
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	var all, perAgentP99, seals []float64
	var sent int64
	failed := 0
	for _, a := range agents {
		all = append(all, a.lat...)
		seals = append(seals, a.sealLat...)
		if len(a.lat) > 0 {
			perAgentP99 = append(perAgentP99, pct(a.lat, 99))
		}
		sent += a.sent
		if a.errs.Load() > 0 {
			failed++
		}
	}
	ex := map[string]float64{
		"agents": float64(len(agents)), "failedAgents": float64(failed),
		"ackP50Ms": pct(all, 50), "ackP99Ms": pct(all, 99), "ackMaxMs": pct(all, 100), "acks": float64(len(all)),
		"worstAgentP99Ms": pct(perAgentP99, 100),
		"sealP50Ms":       pct(seals, 50), "sealP99Ms": pct(seals, 99), "seals": float64(len(seals)),
		"replicatorRSSMaxMiB": float64(rssMax) / 1024, "replicatorRSSP50MiB": pct(rss, 50), "replicatorHWMMiB": float64(hwm) / 1024,
		"replicatorCPUPercent": 100 * repCPU.Seconds() / wall, "simCPUPercent": 100 * selfCPU.Seconds() / wall,
		"MBps": float64(sent) / wall / 1e6, "registerSeconds": regTook.Seconds(),
	}
	note := fmt.Sprintf("each agent: one %d-block batch (%d KiB) every %s, a Marker every %s", f.blocks, f.blocks*64, f.period, f.marker)
	if f.mode == "stream" {
		note = "each agent streams 32-block batches as fast as its window (64 MiB) allows, as in an initial sync"
	}
	if failed > 0 {
		note += "; errors: " + firstErr(agents)
	}
	sink.add(result{Phase: "sim", Name: f.name, Data: fmt.Sprintf("%d simulated agents, one %d GiB volume each", len(agents), f.volumeGiB),
		Seconds: wall, Load: load, Extra: ex, Note: note})
	cl.rep.stop()
	cl.cp.stop()
	if *keep {
		if b, err := os.ReadFile(cl.rep.log); err == nil {
			_ = os.WriteFile(filepath.Join(f.out, filepath.Base(dir)+"-replicator.log"), b, 0o644)
		}
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
				a.repAddr = cfg.Replicator.Address
				a.assigned = wire.Assigned{Account: a.account, ID: cfg.Replicator.ID, Serials: cfg.Replicator.CertificateSerials}
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

// session runs one agent's session until ctx ends.
func (a *simAgent) session(ctx context.Context, f *simFlags, measuring *atomic.Bool, opened *atomic.Int64) error {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := wire.Dial(dctx, a.repAddr, wire.ClientTLSConfig(a.cert, a.pool, "", a.assigned))
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close()
	size := uint64(f.volumeGiB) << 30
	hello := &wire.Hello{Version: wire.Version, SourceServerID: a.id, AgentVersion: "replbench", Tracker: "ebpf", TrackerGeneration: 1,
		Volumes: []wire.Volume{{Name: "vda", SizeBytes: size, BlockSize: 512}}}
	welcome, _, err := wire.Open(conn, hello, 60*time.Second)
	if err != nil {
		return err
	}
	opened.Add(1)
	bs := int(welcome.BlockSize)
	nblocks := size / uint64(bs)
	win := wire.NewWindow(welcome.WindowBytes)

	// Sent times by sequence, for the receiver.
	var mu sync.Mutex
	sentAt := map[uint64]time.Time{}
	markerAt := map[uint64]time.Time{}
	recvErr := make(chan error, 1)
	recvDone := make(chan struct{})
	defer func() {
		conn.Close()
		<-recvDone
	}()
	go func() {
		defer close(recvDone)
		for {
			m, err := conn.ReadMsg()
			if err != nil {
				recvErr <- err
				return
			}
			now := time.Now()
			switch m := m.(type) {
			case *wire.Ack:
				if err := win.Ack(m.Seq); err != nil {
					recvErr <- err
					return
				}
				mu.Lock()
				for seq, t := range sentAt {
					if seq <= m.Seq {
						if measuring.Load() {
							a.lat = append(a.lat, float64(now.Sub(t).Microseconds())/1000)
						}
						delete(sentAt, seq)
					}
				}
				mu.Unlock()
			case *wire.Sealed:
				mu.Lock()
				if t, ok := markerAt[m.MarkerID]; ok && measuring.Load() {
					a.sealLat = append(a.sealLat, float64(now.Sub(t).Microseconds())/1000)
				}
				delete(markerAt, m.MarkerID)
				mu.Unlock()
				if m.Code != "" {
					recvErr <- fmt.Errorf("sealing failed: %s %s", m.Code, m.Message)
					return
				}
			case *wire.Error:
				recvErr <- m
				return
			}
		}
	}()

	rng := rand.NewChaCha8(seedBytes(uint64(a.i) + 1))
	pick := rand.New(rand.NewPCG(uint64(a.i), 7))
	batch := wire.NewBatch(int(welcome.MaxBatchBytes))
	enc, err := wire.NewEncoder("s2")
	if err != nil {
		return err
	}
	defer enc.Close()
	raw := make([]byte, bs)
	var seq, markerID uint64
	perBatch := f.blocks
	if f.mode == "stream" {
		perBatch = 32
	}
	// light: a random phase, then one write per period.
	next := time.Now().Add(time.Duration(pick.Int64N(int64(f.period))))
	nextMarker := next.Add(time.Duration(pick.Int64N(int64(max(f.marker, time.Second)))))
	send := func(msg wire.Msg, n int) error {
		if err := win.Send(ctx, seq, n); err != nil {
			return err
		}
		if err := conn.WriteMsg(msg); err != nil {
			return err
		}
		return conn.Flush()
	}
	for ctx.Err() == nil {
		if f.mode == "light" {
			d := time.Until(next)
			if f.marker > 0 && nextMarker.Before(next) {
				d = time.Until(nextMarker)
			}
			select {
			case <-ctx.Done():
				continue
			case err := <-recvErr:
				return err
			case <-time.After(max(d, 0)):
			}
			now := time.Now()
			if f.marker > 0 && !now.Before(nextMarker) {
				nextMarker = nextMarker.Add(f.marker)
				seq++
				markerID++
				mk := &wire.Marker{Seq: seq, ID: markerID, TimeUnixNano: now.UnixNano(), Level: consistency.Crash, VolumeSizes: []uint64{size}}
				mu.Lock()
				markerAt[markerID] = now
				mu.Unlock()
				if err := send(mk, mk.PayloadLen()); err != nil {
					return err
				}
				continue
			}
			next = next.Add(f.period)
		} else {
			select {
			case err := <-recvErr:
				return err
			default:
			}
		}
		seq++
		batch.Reset(seq, 0)
		for range perBatch {
			simBlock(raw, rng, a.i, seq)
			block := pick.Uint64N(nblocks)
			if _, err := enc.Encode(batch, block, wire.Hash(raw), raw); err != nil {
				return err
			}
		}
		mu.Lock()
		sentAt[seq] = time.Now()
		mu.Unlock()
		if err := send(batch, batch.PayloadLen()); err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		if measuring.Load() {
			a.sent += int64(perBatch * bs)
		}
	}
	_ = conn.WriteMsg(&wire.Goodbye{})
	_ = conn.Flush()
	return nil
}
