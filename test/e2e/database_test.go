package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// Issue 15: what a source server's death costs a real database. PostgreSQL runs on the
// replicated ext4 under pgbench's TPC-B load while the agent takes a consistency point
// every second; the agent is SIGKILLed at a random moment (the source is gone: nothing
// after that reaches the replica), and the newest PIT must hold a database that
// recovers, passes pg_amcheck and keeps pgbench's invariants, and loses little: the
// kill time minus the newest transaction in pgbench_history. bench/database/run.sh
// (replbench database) measures the same at 1 s and 10 s points, with percentiles.

const (
	dbTrials   = 6
	dbMaxLoss  = 3 * time.Second // with 1 s points the loss is ~1 s; this is no benchmark
	dbScale    = "2"             // pgbench scale: 200,000 accounts, ~30 MB
	dbPort     = "5432"          // only names the unix socket: no TCP
	dbVolume   = 1 << 30
	dbStartMax = 2 * time.Minute
)

// pgBinDir is the newest PostgreSQL installed with pgbench and pg_amcheck
// (Debian: /usr/lib/postgresql/VERSION/bin).
func pgBinDir(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_amcheck")); err == nil {
			return d
		}
	}
	testutil.Need(t, false, "PostgreSQL 14 or later with pgbench and pg_amcheck is not installed (apt-get install postgresql)")
	return ""
}

func pgVersion(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// pgUser is the postgres system user: the database refuses to run as root.
type pgUser struct{ uid, gid uint32 }

func lookupPostgres(t *testing.T) pgUser {
	t.Helper()
	u, err := user.Lookup("postgres")
	testutil.Need(t, err == nil, "there is no postgres user (apt-get install postgresql)")
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return pgUser{uint32(uid), uint32(gid)}
}

// pg is a PostgreSQL data directory, and its server once started.
type pg struct {
	t    *testing.T
	bin  string
	usr  pgUser
	data string // the data directory
	sock string // the unix socket's directory
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	// startedAt is when the server was started.
	startedAt time.Time
}

// command is a PostgreSQL program run as the postgres user.
func (p *pg) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, name), args...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "PGHOST="+p.sock, "PGPORT="+dbPort, "PGUSER=postgres", "PGDATABASE=postgres")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: p.usr.uid, Gid: p.usr.gid}}
	return cmd
}

// run runs a PostgreSQL program (bounded by timeout) and returns its stdout; a failure
// fails the test with its output.
func (p *pg) run(timeout time.Duration, name string, args ...string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := p.command(ctx, name, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		p.t.Fatalf("%s %s: %v\n%s%s\n--- server log (tail)\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String(), p.logTail())
	}
	return stdout.String()
}

func (p *pg) sql(query string) string {
	p.t.Helper()
	return strings.TrimSpace(p.run(time.Minute, "psql", "-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-c", query))
}

func (p *pg) logTail() string { return lastLinesOf(p.log, 30) }

func lastLinesOf(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// newPG makes a socket directory the postgres user can use, removed when the test ends.
func newPG(t *testing.T, bin string, usr pgUser, data string) *pg {
	t.Helper()
	sock, err := os.MkdirTemp("", "lifeboat-pgsock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	if err := os.Chown(sock, int(usr.uid), int(usr.gid)); err != nil {
		t.Fatal(err)
	}
	return &pg{t: t, bin: bin, usr: usr, data: data, sock: sock, log: filepath.Join(t.TempDir(), "postgres.log")}
}

// initdb makes the data directory (fsync on, as a database on a real server runs) with
// a configuration that keeps the WAL small on the test's volume.
func (p *pg) initdb() {
	p.t.Helper()
	if err := os.MkdirAll(p.data, 0o700); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Chown(p.data, int(p.usr.uid), int(p.usr.gid)); err != nil {
		p.t.Fatal(err)
	}
	p.run(2*time.Minute, "initdb", "-D", p.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C")
	conf := `
listen_addresses = ''
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 64MB
max_wal_size = 128MB
min_wal_size = 32MB
checkpoint_timeout = 30s
timezone = 'UTC'
log_timezone = 'UTC'
`
	f, err := os.OpenFile(filepath.Join(p.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(conf); err != nil {
		p.t.Fatal(err)
	}
}

// start runs the server (the postmaster is the test's child, its pid known) and waits
// until it accepts connections: on a PIT, until crash recovery has completed. It is
// stopped with pg_ctl stop -m immediate when the test ends.
func (p *pg) start() {
	p.t.Helper()
	lf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	p.cmd = p.command(context.Background(), "postgres", "-D", p.data, "-k", p.sock, "-p", dbPort)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		p.t.Fatalf("start postgres: %v", err)
	}
	p.startedAt = time.Now()
	p.done = make(chan struct{})
	go func() { _ = p.cmd.Wait(); lf.Close(); close(p.done) }()
	p.t.Cleanup(p.stop)
	deadline := time.Now().Add(dbStartMax)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := p.command(ctx, "pg_isready", "-q").Run()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-p.done:
			p.t.Fatalf("postgres exited before it accepted connections\n%s", p.logTail())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("postgres did not accept connections within %s\n%s", dbStartMax, p.logTail())
		}
	}
}

// stop shuts the server down at once (as a crash would: no checkpoint), by the pid in
// postmaster.pid, which is the test's child; SIGKILL to that pid if it does not go.
func (p *pg) stop() {
	if p.cmd == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if out, err := p.command(ctx, "pg_ctl", "stop", "-D", p.data, "-m", "immediate", "-w", "-t", "30").CombinedOutput(); err != nil {
		p.t.Logf("pg_ctl stop -m immediate (pid %d): %v: %s", p.cmd.Process.Pid, err, out)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.t.Logf("stopped postgres (pid %d) on %s", p.cmd.Process.Pid, p.data)
}

// dbState is what a recovered database says.
type dbState struct {
	accounts, branches, tellers, history string // sums of the balances and of the deltas
	rows                                 int64  // pgbench_history's rows
	newest                               time.Time
}

func (p *pg) state() dbState {
	p.t.Helper()
	out := p.sql(`SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches),
		(SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
		(SELECT count(*) FROM pgbench_history),
		(SELECT coalesce(extract(epoch FROM max(mtime) AT TIME ZONE 'UTC'), 0) FROM pgbench_history)`)
	f := strings.Split(out, "|")
	if len(f) != 6 {
		p.t.Fatalf("unexpected answer %q", out)
	}
	rows, _ := strconv.ParseInt(f[4], 10, 64)
	epoch, err := strconv.ParseFloat(f[5], 64)
	if err != nil {
		p.t.Fatalf("max(mtime) %q: %v", f[5], err)
	}
	return dbState{accounts: f[0], branches: f[1], tellers: f[2], history: f[3], rows: rows,
		newest: time.Unix(0, int64(epoch*1e9))}
}

// TestDatabaseSurvivesAgentKill: PostgreSQL under pgbench load on a replicated volume
// with 1 s consistency points; dbTrials times the agent is SIGKILLed at a random
// moment, and the newest PIT, exported and loop-mounted from a copy, must recover (crash
// recovery completes), pass `pg_amcheck --all --heapallindexed`, keep pgbench's
// invariants (the sums of the account, branch and teller balances and of the history's
// deltas are equal), and lose at most dbMaxLoss: the kill time minus the newest
// pgbench_history.mtime (the start of the newest transaction the PIT holds). The agent
// is restarted between trials (it resumes); the load never stops.
func TestDatabaseSurvivesAgentKill(t *testing.T) {
	testutil.RequireRoot(t)
	bin, usr := pgBinDir(t), lookupPostgres(t)
	testutil.RequireCommand(t, "fsck.ext4", "e2fsprogs")
	dev, _ := testutil.LoopDevice(t, dbVolume)
	testutil.MkfsExt4(t, dev)
	mnt := testutil.Mount(t, dev)
	src := newPG(t, bin, usr, filepath.Join(mnt, "pgdata"))
	src.initdb()
	src.start()
	// amcheck in every database pg_amcheck --all visits, before the load: in every PIT.
	src.run(time.Minute, "psql", "-X", "-q", "-d", "template1", "-c", "CREATE EXTENSION amcheck")
	src.sql("CREATE EXTENSION amcheck")
	src.run(3*time.Minute, "pgbench", "-i", "-q", "-s", dbScale)
	load := src.command(context.Background(), "pgbench", "-c", "4", "-j", "2", "-T", "900", "-n")
	loadLog, err := os.Create(filepath.Join(t.TempDir(), "pgbench.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer loadLog.Close()
	load.Stdout, load.Stderr = loadLog, loadLog
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan struct{})
	go func() { _ = load.Wait(); close(loadDone) }()
	t.Cleanup(func() { // by its pid, before postgres stops
		_ = load.Process.Kill()
		<-loadDone
	})

	c := newCluster(t)
	c.installAgent(dev)
	c.cli("settings", "replication", "set", "--server-id", c.agentID, "--consistency-interval", "1s")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 15))
	var losses []time.Duration
	for i := 1; i <= dbTrials; i++ {
		pit, killed := killAgentUnderLoad(t, c, rng, loadDone, loadLog.Name())
		var lost time.Duration
		t.Run(fmt.Sprintf("trial%d", i), func(t *testing.T) {
			lost = checkDatabasePIT(t, c, bin, usr, pit, volumeNameOf(dev), killed)
		})
		losses = append(losses, lost)
	}
	sort.Slice(losses, func(i, j int) bool { return losses[i] < losses[j] })
	t.Logf("data lost over %d kills with 1 s points: min %s, median %s, max %s", len(losses), losses[0], losses[len(losses)/2], losses[len(losses)-1])
}

// killAgentUnderLoad starts the agent, waits for its first PIT, lets it run a random
// 0.5–2.5 s more (points every second), SIGKILLs it by its pid and returns the newest
// filesystem-consistent PIT and the moment of the kill.
func killAgentUnderLoad(t *testing.T, c *cluster, rng *rand.Rand, loadDone <-chan struct{}, loadLog string) (api.RecoverySnapshot, time.Time) {
	t.Helper()
	started := time.Now().Truncate(time.Millisecond)
	c.startAgent()
	first := waitPITSince(t, c, started, 3*time.Minute)
	t.Logf("agent started; first PIT %s %s after", first.ID, first.Time.Sub(started).Round(time.Millisecond))
	time.Sleep(500*time.Millisecond + time.Duration(rng.Int64N(int64(2*time.Second))))
	select {
	case <-loadDone:
		t.Fatalf("pgbench stopped: the load is gone\n%s", lastLinesOf(loadLog, 20))
	default:
	}
	killed := time.Now()
	c.agent.kill()
	// A point whose Marker was sent before the kill may still be sealed: the replica
	// is what the replicator holds once the agent's session ended.
	time.Sleep(2 * time.Second)
	// The PIT a recovery takes: the newest filesystem-consistent one (a point whose
	// freeze outlasted its bound, under load on a busy machine, is recorded at level
	// none and skipped).
	page, err := c.admin.RecoverySnapshots(t.Context(), c.agentID, 200, "")
	if err != nil {
		t.Fatalf("recovery snapshots after the kill: %v", err)
	}
	var pit *api.RecoverySnapshot
	for i := range page.Items {
		if page.Items[i].Level == consistency.Filesystem {
			pit = &page.Items[i]
			break
		}
		t.Logf("PIT %s at level %s skipped", page.Items[i].ID, page.Items[i].Level)
	}
	if pit == nil {
		t.Fatalf("none of the %d newest PITs is filesystem-consistent\n%s", len(page.Items), c.logs())
	}
	if pit.Time.After(killed) {
		t.Fatalf("the newest PIT %s (%s) is after the kill (%s)", pit.ID, pit.Time, killed)
	}
	return *pit, killed
}

// waitPITSince waits for a PIT whose consistency point is at or after since.
func waitPITSince(t *testing.T, c *cluster, since time.Time, timeout time.Duration) api.RecoverySnapshot {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		page, err := c.admin.RecoverySnapshots(t.Context(), c.agentID, 1, "")
		if err == nil && len(page.Items) > 0 && !page.Items[0].Time.Before(since) {
			return page.Items[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no PIT since %s within %s\n%s", since, timeout, c.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkDatabasePIT exports the PIT, copies its image, loop-mounts the copy, starts
// PostgreSQL on it and checks the database; it returns the data lost.
func checkDatabasePIT(t *testing.T, c *cluster, bin string, usr pgUser, pit api.RecoverySnapshot, volume string, killed time.Time) time.Duration {
	work := t.TempDir()
	out := filepath.Join(work, "export")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	export := exec.CommandContext(ctx, binary, "export", c.agentID, "--pit", pit.ID, "--to", out)
	export.Env = append(os.Environ(), c.env...)
	if o, err := export.CombinedOutput(); err != nil {
		t.Fatalf("lifeboat export %s: %v\n%s", pit.ID, err, o)
	}
	img := filepath.Join(out, volume+".img")
	if o, err := exec.CommandContext(ctx, "fsck.ext4", "-n", "-f", img).CombinedOutput(); err != nil {
		t.Fatalf("fsck -n of the exported PIT %s: %v\n%s", pit.ID, err, o)
	}
	cp := filepath.Join(work, "copy.img")
	testutil.Run(t, "cp", "--sparse=always", img, cp)
	mnt := testutil.Mount(t, cp, "-o", "loop")
	db := newPG(t, bin, usr, filepath.Join(mnt, "pgdata"))
	// The source's postmaster still runs with the pid its lock file names: on a
	// recovery machine it would not exist.
	if err := os.Remove(filepath.Join(db.data, "postmaster.pid")); err != nil {
		t.Fatalf("the PIT holds no postmaster.pid: %v", err)
	}
	db.start()
	recovered := time.Now()
	if log, _ := os.ReadFile(db.log); !strings.Contains(string(log), "database system was not properly shut down") {
		t.Fatalf("PostgreSQL found PIT %s's database shut down cleanly: no crash recovery was tested\n%s", pit.ID, db.logTail())
	}
	if o := db.run(5*time.Minute, "pg_amcheck", "--all", "--heapallindexed"); strings.TrimSpace(o) != "" {
		t.Fatalf("pg_amcheck on PIT %s:\n%s", pit.ID, o)
	}
	checked := time.Now()
	st := db.state()
	if st.accounts != st.branches || st.accounts != st.tellers || st.accounts != st.history {
		t.Fatalf("pgbench's invariants broken in PIT %s: sum(abalance) %s, sum(bbalance) %s, sum(tbalance) %s, sum(delta) %s",
			pit.ID, st.accounts, st.branches, st.tellers, st.history)
	}
	lost := killed.Sub(st.newest)
	t.Logf("PIT %s: %d transactions; killed %s after the point, newest transaction %s before it: data lost %s (recovery %s, pg_amcheck %s)",
		pit.ID, st.rows, killed.Sub(pit.Time).Round(time.Millisecond), pit.Time.Sub(st.newest).Round(time.Millisecond),
		lost.Round(time.Millisecond), recovered.Sub(db.startedAt).Round(time.Millisecond), checked.Sub(recovered).Round(time.Millisecond))
	if st.rows == 0 || lost < 0 || lost > dbMaxLoss {
		t.Errorf("data lost %s (newest transaction %s, kill %s): want 0 to %s", lost, st.newest, killed, dbMaxLoss)
	}
	return lost
}
