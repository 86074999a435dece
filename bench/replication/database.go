package main

// replbench database measures what a source server's death costs a real database
// (issue 15), as TestDatabaseSurvivesAgentKill (test/e2e/database_test.go) checks it,
// with the real lifeboat binary as separate processes: PostgreSQL, its data directory
// on ext4 on a loop device (direct I/O) the agent replicates, fsync on, under pgbench's
// TPC-B load (-c 4 -j 2):
//
//  1. throughput: `pgbench -T D` with no agent running, with the agent taking a
//     consistency point every 1 s, and every 10 s; the modes in rotating order for R
//     rounds, each run after a CHECKPOINT;
//  2. kills: for each interval, N times (the intervals alternating): the agent started,
//     its first PIT awaited, then SIGKILLed by its pid at a random moment one to two
//     intervals later while the load runs on; the newest PIT exported, its image copied
//     and the copy loop-mounted, PostgreSQL started on it (crash recovery), `pg_amcheck
//     --all --heapallindexed`, pgbench's invariants, and the data lost: the kill time
//     minus the newest pgbench_history.mtime (the start of the newest transaction the
//     PIT holds).
//
// One JSON line per figure; `replbench database report FILE` renders them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

type dbFlags struct {
	bin, results, out, size, intervals string
	trials, rounds, scale, clients     int
	tpsFor                             time.Duration
	quiet                              float64
}

// dbRun is one database benchmark: one volume, one PostgreSQL, one cluster.
type dbRun struct {
	f         dbFlags
	intervals []int
	sink      *sink
	u         *undo
	work      string
	pgBin     string
	usr       pgUser
	dev       *loop
	src       *pgServer
	cl        *cluster
	a         *agentProc
	rng       *rand.Rand
	data      string // what the volume holds, for the results
}

const dbPort = "5432" // only names the unix socket: PostgreSQL listens on no TCP port

func cmdDatabase(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "report" {
		return cmdDatabaseReport(args[1:])
	}
	var f dbFlags
	fs := newFlagSet("database")
	fs.StringVar(&f.bin, "lifeboat", ".cache/lifeboat-bench", "the lifeboat binary")
	fs.StringVar(&f.results, "results", "bench/out/database/results.jsonl", "JSON lines to append to")
	fs.StringVar(&f.out, "out", "bench/out/database", "work directory (its work subdirectory is emptied)")
	fs.StringVar(&f.size, "size", "2G", "size of the replicated volume")
	fs.StringVar(&f.intervals, "intervals", "1,10", "consistency-point intervals to kill the agent under, in seconds")
	fs.IntVar(&f.trials, "trials", 20, "kills per interval")
	fs.IntVar(&f.rounds, "rounds", 3, "throughput rounds (each: no agent, and each interval)")
	fs.IntVar(&f.scale, "scale", 10, "pgbench scale factor (100,000 accounts each)")
	fs.IntVar(&f.clients, "clients", 4, "pgbench clients")
	fs.DurationVar(&f.tpsFor, "tps-duration", 60*time.Second, "length of each throughput run")
	fs.Float64Var(&f.quiet, "quiet", 0.25, "before each throughput run, wait (up to 1 min) until the CPUs were less than this busy for 3 s")
	_ = fs.Parse(args)
	for _, p := range []*string{&f.bin, &f.results, &f.out} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	if os.Geteuid() != 0 {
		return errors.New("replbench database needs root (loop devices, mounts, eBPF)")
	}
	r := &dbRun{f: f, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 15))}
	for _, s := range strings.Split(f.intervals, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-intervals: %q is not a number of seconds", s)
		}
		r.intervals = append(r.intervals, n)
	}
	var err error
	if r.pgBin, r.usr, err = findPostgres(); err != nil {
		return err
	}
	if r.sink, err = openSink(f.results); err != nil {
		return err
	}
	defer r.sink.close()
	r.u = &undo{}
	defer r.u.run()
	return r.runPlan(ctx)
}

func (r *dbRun) runPlan(ctx context.Context) error {
	for _, s := range []struct {
		name    string
		timeout time.Duration
		fn      func(context.Context) error
	}{
		{"volume and database", 15 * time.Minute, r.setup},
		{"protect", 10 * time.Minute, r.protect},
		{"throughput", time.Duration(r.f.rounds*(1+len(r.intervals)))*(r.f.tpsFor+4*time.Minute) + 10*time.Minute, r.throughput},
		{"kills", time.Duration(r.f.trials*len(r.intervals))*5*time.Minute + 10*time.Minute, r.kills},
	} {
		logf("== %s", s.name)
		sctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := s.fn(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// setup makes the volume (ext4 on a loop device with direct I/O), PostgreSQL on it
// with the amcheck extension (in every database pg_amcheck --all visits), and
// pgbench's tables.
func (r *dbRun) setup(ctx context.Context) error {
	r.work = filepath.Join(r.f.out, "work")
	if err := os.RemoveAll(r.work); err != nil {
		return err
	}
	if err := os.MkdirAll(r.work, 0o755); err != nil {
		return err
	}
	size, err := parseSize(r.f.size)
	if err != nil {
		return err
	}
	img := filepath.Join(r.work, "volume.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(img, size); err != nil {
		return err
	}
	if r.dev, err = attachLoop(ctx, r.u, img); err != nil {
		return err
	}
	if _, err := run(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", r.dev.dev); err != nil {
		return err
	}
	dir, err := dbTempDir(r.u, "replbench-mnt-")
	if err != nil {
		return err
	}
	if _, err := mountDir(ctx, r.u, r.dev.dev, dir); err != nil {
		return err
	}
	if r.src, err = newPGServer(r.u, r.pgBin, r.usr, filepath.Join(dir, "pgdata"), filepath.Join(r.work, "postgres.log")); err != nil {
		return err
	}
	if err := r.src.initdb(ctx); err != nil {
		return err
	}
	if _, err := r.src.start(ctx, r.u); err != nil {
		return err
	}
	for _, db := range []string{"template1", "postgres"} {
		if _, err := r.src.run(ctx, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", "CREATE EXTENSION amcheck"); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if _, err := r.src.run(ctx, "pgbench", "-i", "-q", "-s", strconv.Itoa(r.f.scale)); err != nil {
		return err
	}
	logf("pgbench -i -s %d took %s", r.f.scale, time.Since(t0).Round(time.Millisecond))
	r.data = fmt.Sprintf("PostgreSQL %s, pgbench scale %d, %d clients, on ext4 on a %s loop device (direct I/O)",
		filepath.Base(filepath.Dir(r.pgBin)), r.f.scale, r.f.clients, sizeLabel(size))
	return nil
}

// protect starts the control plane and the replicator and registers the agent (not
// started: every mode and trial starts it).
func (r *dbRun) protect(ctx context.Context) error {
	var err error
	r.cl, err = newCluster(ctx, r.u, r.f.bin, filepath.Join(r.work, "cluster"), nil)
	if err != nil {
		return err
	}
	r.a, err = r.cl.installAgent(ctx, "db", r.dev.dev)
	return err
}

// startAgent sets the interval, starts the agent and waits for its first PIT.
func (r *dbRun) startAgent(ctx context.Context, interval int) (api.RecoverySnapshot, error) {
	if err := r.cl.setTemplate(ctx, func(s *api.ReplicationSettings) { s.ConsistencyPointIntervalSeconds = interval }); err != nil {
		return api.RecoverySnapshot{}, err
	}
	started := time.Now()
	if err := r.a.start(r.u); err != nil {
		return api.RecoverySnapshot{}, err
	}
	pit, _, err := r.a.waitPIT(ctx, started, 3*time.Minute+time.Duration(interval)*time.Second)
	return pit, err
}

// ---- throughput

type dbMode struct {
	name     string
	interval int // 0: no agent
}

func (r *dbRun) modes() []dbMode {
	ms := []dbMode{{name: "no agent"}}
	for _, iv := range r.intervals {
		ms = append(ms, dbMode{name: fmt.Sprintf("%d s points", iv), interval: iv})
	}
	return ms
}

// throughput runs pgbench for tpsFor in every mode, rotating the order each round.
func (r *dbRun) throughput(ctx context.Context) error {
	ms := r.modes()
	for round := 1; round <= r.f.rounds; round++ {
		for k := range ms {
			m := ms[(k+round-1)%len(ms)]
			if err := r.tpsRun(ctx, m, round); err != nil {
				return err
			}
		}
	}
	r.a.stop()
	return nil
}

var (
	dbTPSRe     = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	dbLatencyRe = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
)

func (r *dbRun) tpsRun(ctx context.Context, m dbMode, round int) error {
	r.a.stop()
	if m.interval > 0 {
		if _, err := r.startAgent(ctx, m.interval); err != nil {
			return err
		}
	}
	if _, err := r.src.sql(ctx, "CHECKPOINT"); err != nil {
		return err
	}
	waitQuiet(ctx, r.f.quiet, time.Minute)
	load := startLoad()
	cpu0 := time.Duration(0)
	if m.interval > 0 {
		cpu0 = cpuTime(r.a.p.pid())
	}
	from := time.Now()
	out, err := r.src.run(ctx, "pgbench", "-n", "-c", strconv.Itoa(r.f.clients), "-j", "2", "-T", strconv.Itoa(int(r.f.tpsFor.Seconds())))
	to := time.Now()
	if err != nil {
		return err
	}
	tps, lat := dbMatch(dbTPSRe, out), dbMatch(dbLatencyRe, out)
	if math.IsNaN(tps) {
		return fmt.Errorf("no tps in pgbench's output:\n%s", out)
	}
	extra := map[string]float64{"tps": tps, "latencyMs": lat}
	if m.interval > 0 {
		if !r.a.p.running() {
			return fmt.Errorf("the agent exited during the run\n%s", r.a.p.tail(30))
		}
		extra["interval"] = float64(m.interval)
		extra["agentCpuSeconds"] = (cpuTime(r.a.p.pid()) - cpu0).Seconds()
		freezes, other, err := pitFreezes(ctx, r.cl, r.a.id, from, to)
		if err != nil {
			return err
		}
		extra["pits"], extra["unfrozenPits"] = float64(len(freezes)), float64(other)
		extra["freezeP50Ms"], extra["freezeP99Ms"] = pct(freezes, 50), pct(freezes, 99)
	}
	r.sink.add(result{Phase: "db-tps", Name: m.name, Cmd: fmt.Sprintf("pgbench -n -c %d -j 2 -T %d", r.f.clients, int(r.f.tpsFor.Seconds())),
		Data: r.data, Rep: round, Seconds: to.Sub(from).Seconds(), Extra: extra, Load: load})
	return nil
}

func dbMatch(re *regexp.Regexp, s string) float64 {
	m := re.FindStringSubmatch(s)
	if m == nil {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// ---- kills

// kills runs the trials under one pgbench that runs throughout.
func (r *dbRun) kills(ctx context.Context) error {
	load, err := r.src.background(r.u, filepath.Join(r.work, "pgbench-load.log"),
		"pgbench", "-n", "-c", strconv.Itoa(r.f.clients), "-j", "2", "-T", "86400")
	if err != nil {
		return err
	}
	defer load.kill()
	for i := 1; i <= r.f.trials; i++ {
		for k := range r.intervals {
			iv := r.intervals[(k+i-1)%len(r.intervals)]
			if err := r.trial(ctx, iv, i, load); err != nil {
				return fmt.Errorf("trial %d at %d s points: %w", i, iv, err)
			}
		}
	}
	return nil
}

// trial starts the agent, kills it by its pid one to two intervals after its first
// PIT, and checks the newest PIT.
func (r *dbRun) trial(ctx context.Context, interval, n int, load *pgProc) error {
	first, err := r.startAgent(ctx, interval)
	if err != nil {
		return err
	}
	delay := time.Duration(float64(interval) * float64(time.Second) * (1 + r.rng.Float64()))
	sleepCtx(ctx, delay)
	if !load.running() {
		return fmt.Errorf("pgbench stopped: the load is gone\n%s", dbLogTail(load.log, 20))
	}
	load0 := loadAvg()
	killed := time.Now()
	_ = r.a.p.cmd.Process.Signal(syscall.SIGKILL)
	<-r.a.p.done
	// A point whose Marker was sent before the kill may still be sealed.
	sleepCtx(ctx, 2*time.Second)
	pit, fuzzy, err := newestConsistent(ctx, r.cl.admin, r.a.id)
	if err != nil {
		return err
	}
	if pit.Time.After(killed) {
		return fmt.Errorf("the newest PIT %s (%s) is after the kill (%s)", pit.ID, pit.Time, killed)
	}
	extra, err := r.check(ctx, pit)
	if err != nil {
		return fmt.Errorf("PIT %s: %w", pit.ID, err)
	}
	newest := time.Unix(0, int64(extra["newestTxn"]*1e9))
	lost := killed.Sub(newest)
	delete(extra, "newestTxn")
	extra["interval"] = float64(interval)
	extra["killAfterPointSeconds"] = killed.Sub(pit.Time).Seconds()
	extra["pointAfterNewestTxnSeconds"] = pit.Time.Sub(newest).Seconds()
	extra["killDelaySeconds"] = delay.Seconds()
	extra["newerUnfrozenPits"] = float64(fuzzy)
	extra["sinceFirstPIT"] = pit.Time.Sub(first.Time).Seconds()
	r.sink.add(result{Phase: "db-kill", Name: fmt.Sprintf("%d s points", interval), Data: r.data, Rep: n, Seconds: lost.Seconds(),
		Extra: extra, Load: load0, Note: "seconds: data lost (kill time - newest pgbench_history.mtime in the PIT)"})
	return nil
}

// newestConsistent is the newest filesystem-consistent PIT, the one a recovery takes
// (a point whose freeze outlasted its bound is recorded at level none, and skipped),
// and how many newer PITs were not.
func newestConsistent(ctx context.Context, admin *api.Client, server string) (api.RecoverySnapshot, int, error) {
	page, err := admin.RecoverySnapshots(ctx, server, 200, "")
	if err != nil {
		return api.RecoverySnapshot{}, 0, fmt.Errorf("recovery snapshots after the kill: %w", err)
	}
	for i, p := range page.Items {
		if p.Level == consistency.Filesystem {
			return p, i, nil
		}
	}
	return api.RecoverySnapshot{}, 0, fmt.Errorf("none of the %d newest PITs is filesystem-consistent", len(page.Items))
}

// check exports the PIT, copies its image, loop-mounts the copy and runs PostgreSQL on
// it: crash recovery, pg_amcheck, pgbench's invariants; it returns the figures, with
// newestTxn (Unix seconds).
func (r *dbRun) check(ctx context.Context, pit api.RecoverySnapshot) (map[string]float64, error) {
	tu := &undo{}
	defer tu.run()
	dir := filepath.Join(r.work, "check-"+pit.ID)
	tu.push(func() { _ = os.RemoveAll(dir) })
	t0 := time.Now()
	if _, err := r.cl.cli(ctx, "export", r.a.id, "--pit", pit.ID, "--to", filepath.Join(dir, "export")); err != nil {
		return nil, err
	}
	img := filepath.Join(dir, "export", filepath.Base(r.dev.dev)+".img")
	exported := time.Now()
	if _, err := run(ctx, "fsck.ext4", "-n", "-f", img); err != nil {
		return nil, err
	}
	cp := filepath.Join(dir, "copy.img")
	if _, err := run(ctx, "cp", "--sparse=always", img, cp); err != nil {
		return nil, err
	}
	mdir, err := dbTempDir(tu, "replbench-pit-")
	if err != nil {
		return nil, err
	}
	if _, err := mountDir(ctx, tu, cp, mdir, "-o", "loop"); err != nil {
		return nil, err
	}
	db, err := newPGServer(tu, r.pgBin, r.usr, filepath.Join(mdir, "pgdata"), filepath.Join(dir, "postgres.log"))
	if err != nil {
		return nil, err
	}
	// The source's postmaster still runs with the pid this lock file names; on a
	// recovery machine it would not exist.
	if err := os.Remove(filepath.Join(db.data, "postmaster.pid")); err != nil {
		return nil, fmt.Errorf("the PIT holds no postmaster.pid: %w", err)
	}
	recovery, err := db.start(ctx, tu)
	if err != nil {
		return nil, err
	}
	if b, _ := os.ReadFile(db.log); !strings.Contains(string(b), "database system was not properly shut down") {
		return nil, fmt.Errorf("PostgreSQL found the database shut down cleanly: no crash recovery\n%s", dbLogTail(db.log, 20))
	}
	return r.checkDB(ctx, db, map[string]float64{"exportSeconds": exported.Sub(t0).Seconds(), "recoverySeconds": recovery.Seconds()})
}

func (r *dbRun) checkDB(ctx context.Context, db *pgServer, extra map[string]float64) (map[string]float64, error) {
	t0 := time.Now()
	out, err := db.run(ctx, "pg_amcheck", "--all", "--heapallindexed")
	if err != nil || strings.TrimSpace(out) != "" {
		return nil, fmt.Errorf("pg_amcheck --all --heapallindexed: %v\n%s", err, out)
	}
	extra["amcheckSeconds"] = time.Since(t0).Seconds()
	st, err := db.state(ctx)
	if err != nil {
		return nil, err
	}
	if st.accounts != st.branches || st.accounts != st.tellers || st.accounts != st.history {
		return nil, fmt.Errorf("pgbench's invariants broken: sum(abalance) %s, sum(bbalance) %s, sum(tbalance) %s, sum(delta) %s",
			st.accounts, st.branches, st.tellers, st.history)
	}
	if st.rows == 0 {
		return nil, errors.New("pgbench_history is empty")
	}
	extra["transactions"] = float64(st.rows)
	extra["newestTxn"] = st.newest
	return extra, nil
}

// ---- PostgreSQL

// pgUser is the postgres system user: PostgreSQL refuses to run as root.
type pgUser struct{ uid, gid uint32 }

// findPostgres finds the newest PostgreSQL with pgbench and pg_amcheck (Debian:
// /usr/lib/postgresql/VERSION/bin) and the postgres user.
func findPostgres() (string, pgUser, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	ver := func(d string) int { v, _ := strconv.Atoi(filepath.Base(filepath.Dir(d))); return v }
	sort.Slice(dirs, func(i, j int) bool { return ver(dirs[i]) > ver(dirs[j]) })
	bin := ""
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_amcheck")); err == nil {
			bin = d
			break
		}
	}
	if bin == "" {
		return "", pgUser{}, errors.New("PostgreSQL 14 or later with pgbench and pg_amcheck is not installed (apt-get install postgresql)")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return "", pgUser{}, fmt.Errorf("no postgres user: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return bin, pgUser{uint32(uid), uint32(gid)}, nil
}

// tempDir makes a directory under /tmp the postgres user can enter (a mount point, a
// socket directory), removed by u.
func dbTempDir(u *undo, pattern string) (string, error) {
	d, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	u.push(func() { _ = os.RemoveAll(d) })
	return d, os.Chmod(d, 0o755)
}

// pgServer is a PostgreSQL data directory, and its server once started.
type pgServer struct {
	bin, data, sock, log string
	usr                  pgUser
	p                    *pgProc
}

// pgProc is a PostgreSQL program this program started as the postgres user.
type pgProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func (p *pgProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *pgProc) kill() {
	if p.running() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func newPGServer(u *undo, bin string, usr pgUser, data, logPath string) (*pgServer, error) {
	sock, err := dbTempDir(u, "replbench-pgsock-")
	if err != nil {
		return nil, err
	}
	if err := os.Chown(sock, int(usr.uid), int(usr.gid)); err != nil {
		return nil, err
	}
	return &pgServer{bin: bin, data: data, sock: sock, log: logPath, usr: usr}, nil
}

// command is a PostgreSQL program run as the postgres user, talking to this server.
func (s *pgServer) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "PGHOST="+s.sock, "PGPORT="+dbPort, "PGUSER=postgres", "PGDATABASE=postgres")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: s.usr.uid, Gid: s.usr.gid}, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// run runs a PostgreSQL program to its end (bounded by ctx) and returns its stdout.
func (s *pgServer) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := s.command(ctx, name, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v: %s%s", name, strings.Join(args, " "), err, lastLines(stdout.String(), 10), lastLines(stderr.String(), 10))
	}
	return stdout.String(), nil
}

func (s *pgServer) sql(ctx context.Context, query string) (string, error) {
	out, err := s.run(ctx, "psql", "-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-c", query)
	return strings.TrimSpace(out), err
}

// background starts a PostgreSQL program with its output in logPath; u kills it by
// its pid.
func (s *pgServer) background(u *undo, logPath, name string, args ...string) (*pgProc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := s.command(context.Background(), name, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &pgProc{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); lf.Close(); close(p.done) }()
	u.push(p.kill)
	return p, nil
}

// initdb makes the data directory: fsync on (the default), as a database on a real
// server runs; PostgreSQL's default checkpoint settings.
func (s *pgServer) initdb(ctx context.Context) error {
	if err := os.MkdirAll(s.data, 0o700); err != nil {
		return err
	}
	if err := os.Chown(s.data, int(s.usr.uid), int(s.usr.gid)); err != nil {
		return err
	}
	if _, err := s.run(ctx, "initdb", "-D", s.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"); err != nil {
		return err
	}
	conf := "\nlisten_addresses = ''\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\nshared_buffers = 128MB\ntimezone = 'UTC'\nlog_timezone = 'UTC'\n"
	f, err := os.OpenFile(filepath.Join(s.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// start runs the postmaster (a child of this program: its pid is known) and waits
// until it accepts connections — on a PIT, until crash recovery completed; it returns
// how long that took. u stops it (pg_ctl stop -m immediate).
func (s *pgServer) start(ctx context.Context, u *undo) (time.Duration, error) {
	t0 := time.Now()
	p, err := s.background(u, s.log, "postgres", "-D", s.data, "-k", s.sock, "-p", dbPort)
	if err != nil {
		return 0, err
	}
	s.p = p
	u.push(s.stop) // runs before the kill background pushed
	for deadline := time.Now().Add(3 * time.Minute); ; {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.command(cctx, "pg_isready", "-q").Run()
		cancel()
		if err == nil {
			return time.Since(t0), nil
		}
		if !p.running() {
			return 0, fmt.Errorf("postgres exited before it accepted connections\n%s", dbLogTail(s.log, 20))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("postgres did not accept connections within 3 min\n%s", dbLogTail(s.log, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop shuts the server down at once (no checkpoint) by the pid in postmaster.pid,
// this program's child; SIGKILL to that pid if it does not go.
func (s *pgServer) stop() {
	if s.p == nil || !s.p.running() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if _, err := s.run(ctx, "pg_ctl", "stop", "-D", s.data, "-m", "immediate", "-w", "-t", "30"); err != nil {
		logf("pg_ctl stop (pid %d): %v", s.p.cmd.Process.Pid, err)
	}
	select {
	case <-s.p.done:
	case <-time.After(10 * time.Second):
		s.p.kill()
	}
}

// dbState is what a database says of pgbench's tables.
type dbState struct {
	accounts, branches, tellers, history string // sums of the balances and of the deltas
	rows                                 int64
	newest                               float64 // max(mtime), Unix seconds
}

func (s *pgServer) state(ctx context.Context) (dbState, error) {
	out, err := s.sql(ctx, `SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches),
		(SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
		(SELECT count(*) FROM pgbench_history),
		(SELECT coalesce(extract(epoch FROM max(mtime) AT TIME ZONE 'UTC'), 0) FROM pgbench_history)`)
	if err != nil {
		return dbState{}, err
	}
	f := strings.Split(out, "|")
	if len(f) != 6 {
		return dbState{}, fmt.Errorf("unexpected answer %q", out)
	}
	st := dbState{accounts: f[0], branches: f[1], tellers: f[2], history: f[3]}
	st.rows, _ = strconv.ParseInt(f[4], 10, 64)
	if st.newest, err = strconv.ParseFloat(f[5], 64); err != nil {
		return dbState{}, fmt.Errorf("max(mtime) %q: %w", f[5], err)
	}
	return st, nil
}

func dbLogTail(path string, n int) string {
	b, _ := os.ReadFile(path)
	return lastLines(string(b), n)
}

// ---- report

func cmdDatabaseReport(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: replbench database report results.jsonl")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var rs []result
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var x result
		if err := json.Unmarshal([]byte(line), &x); err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		rs = append(rs, x)
	}
	writeDatabaseReport(os.Stdout, rs)
	return nil
}

// dbGoal is issue 15's goal for the data lost at 1 s points (p99).
const dbGoal = 1.5

func writeDatabaseReport(w io.Writer, rs []result) {
	var names []string
	kills := map[string][]result{}
	tps := map[string][]result{}
	for _, x := range rs {
		switch x.Phase {
		case "db-kill":
			if _, ok := kills[x.Name]; !ok {
				names = append(names, x.Name)
			}
			kills[x.Name] = append(kills[x.Name], x)
		case "db-tps":
			tps[x.Name] = append(tps[x.Name], x)
		}
	}
	sort.Slice(names, func(i, j int) bool {
		return get(kills[names[i]][0].Extra, "interval") < get(kills[names[j]][0].Extra, "interval")
	})
	fmt.Fprintln(w, "p99 is the nearest rank: with 20 kills, the largest.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| data lost when the source dies (kill − newest transaction in the PIT) | kills | p50 | p99 | max | kill after the PIT's point, p50 / max | goal (p99 ≤ 1.5 s at 1 s points) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|")
	for _, n := range names {
		lost, after := dbValues(kills[n], func(x result) float64 { return x.Seconds }), dbValues(kills[n], func(x result) float64 { return get(x.Extra, "killAfterPointSeconds") })
		goal := ""
		if get(kills[n][0].Extra, "interval") == 1 {
			goal = metText(pct(lost, 99) <= dbGoal)
		}
		fmt.Fprintf(w, "| %s | %d | %s s | %s s | %s s | %s / %s s | %s |\n", n, len(lost), fx(pct(lost, 50), 2), fx(pct(lost, 99), 2), fx(dbMax(lost), 2),
			fx(pct(after, 50), 2), fx(dbMax(after), 2), goal)
	}
	fmt.Fprintln(w)
	writeTPSReport(w, tps)
	writeCheckReport(w, kills, names)
}

func writeTPSReport(w io.Writer, tps map[string][]result) {
	base := median(dbValues(tps["no agent"], func(x result) float64 { return get(x.Extra, "tps") }))
	var names []string
	for n := range tps {
		names = append(names, n)
	}
	iv := func(n string) float64 { return tps[n][0].Extra["interval"] } // no agent: absent, 0: first
	sort.Slice(names, func(i, j int) bool { return iv(names[i]) < iv(names[j]) })
	fmt.Fprintln(w, "| pgbench throughput on the volume | runs | tps, median (range) | / no agent | latency, median | PITs per run | freeze p50 / p99 | agent CPU |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, n := range names {
		xs := tps[n]
		t := dbValues(xs, func(x result) float64 { return get(x.Extra, "tps") })
		ex := func(k string) float64 { return median(dbValues(xs, func(x result) float64 { return get(x.Extra, k) })) }
		pits, freeze, cpu := "", "", ""
		if get(xs[0].Extra, "interval") > 0 {
			pits = fx(ex("pits"), 0)
			freeze = fmt.Sprintf("%s / %s ms", fx(ex("freezeP50Ms"), 0), fx(ex("freezeP99Ms"), 0))
			cpu = fmt.Sprintf("%s%% of a CPU", fx(100*ex("agentCpuSeconds")/xs[0].Seconds, 1))
		}
		fmt.Fprintf(w, "| %s | %d | %s (%s–%s) | %s× | %s ms | %s | %s | %s |\n", n, len(xs), fx(median(t), 0), fx(dbMin(t), 0), fx(dbMax(t), 0),
			fx(median(t)/base, 3), fx(ex("latencyMs"), 2), pits, freeze, cpu)
	}
	fmt.Fprintln(w)
}

func writeCheckReport(w io.Writer, kills map[string][]result, names []string) {
	for _, n := range names {
		xs := kills[n]
		ex := func(k string) []float64 { return dbValues(xs, func(x result) float64 { return get(x.Extra, k) }) }
		fmt.Fprintf(w, "%s: %d kills, every PIT recovered (crash recovery p50 %s s, max %s s), passed pg_amcheck --all --heapallindexed (p50 %s s) "+
			"and pgbench's invariants; %s kills found newer PITs at level none (a freeze past its 200 ms bound), skipped; the PIT's point came p50 %s s (max %s s) after its newest transaction; export p50 %s s.\n\n",
			n, len(xs), fx(median(ex("recoverySeconds")), 2), fx(dbMax(ex("recoverySeconds")), 2), fx(median(ex("amcheckSeconds")), 2),
			fx(float64(countPositive(ex("newerUnfrozenPits"))), 0), fx(median(ex("pointAfterNewestTxnSeconds")), 3), fx(dbMax(ex("pointAfterNewestTxnSeconds")), 3), fx(median(ex("exportSeconds")), 2))
	}
}

func countPositive(xs []float64) int {
	n := 0
	for _, x := range xs {
		if x > 0 {
			n++
		}
	}
	return n
}

func dbValues(xs []result, f func(result) float64) []float64 {
	out := make([]float64, 0, len(xs))
	for _, x := range xs {
		out = append(out, f(x))
	}
	return out
}

func dbMax(xs []float64) float64 {
	m := math.NaN()
	for _, x := range xs {
		if math.IsNaN(m) || x > m {
			m = x
		}
	}
	return m
}

func dbMin(xs []float64) float64 {
	m := math.NaN()
	for _, x := range xs {
		if math.IsNaN(m) || x < m {
			m = x
		}
	}
	return m
}
