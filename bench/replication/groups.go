package main

// replbench groups (issue 15): the freeze of consistency-group points with three members,
// each a loop device with ext4 and its own agent process (its own config, state directory
// and machine id), as test/e2e/group_test.go runs them, against one control plane and one
// replicator. For each load (none, and a steady fio random-write load on every member) it
// measures a window of the members' own points (each server alone, every 1 s) and then a
// window of group points (a group of the three, every 1 s): per point each member's
// freeze (the freezeMicros label of its PIT in the staging store), the group's freeze
// window (the largest of its members'), the share of group points that completed and the
// points per second achieved. -report renders the JSON lines as the BENCHMARKS.md section.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

type grpFlags struct {
	bin, out, results, report string
	members, sizeMiB, fileMiB int
	seconds                   int
	rate, bs, loads           string
	quiet                     float64
}

// grpRun is one run: the cluster, its members, and where the figures go.
type grpRun struct {
	f       grpFlags
	sink    *sink
	u       *undo
	work    string
	cl      *cluster
	members []*grpMember
}

// grpMember is a source server: a loop device with ext4 mounted, a file the load
// overwrites, and its own agent.
type grpMember struct {
	name, dev, mnt, file string
	a                    *agentProc
}

func cmdGroups(ctx context.Context, args []string) error {
	var f grpFlags
	fs := newFlagSet("groups")
	fs.StringVar(&f.bin, "lifeboat", ".cache/lifeboat-bench", "the lifeboat binary")
	fs.StringVar(&f.out, "out", "bench/out/groups", "work directory (emptied)")
	fs.StringVar(&f.results, "results", "bench/out/groups/results.jsonl", "JSON lines to append to")
	fs.StringVar(&f.report, "report", "", "render this JSON-lines file as the BENCHMARKS.md section instead of running")
	fs.IntVar(&f.members, "members", 3, "members of the group, each its own volume and agent")
	fs.IntVar(&f.sizeMiB, "size-mib", 256, "size of each member's volume (MiB)")
	fs.IntVar(&f.fileMiB, "file-mib", 128, "size of the file the load overwrites on each volume (MiB)")
	fs.IntVar(&f.seconds, "seconds", 120, "length of each measured window (s): alone and as a group, per load")
	fs.StringVar(&f.rate, "rate", "2m", "fio --rate of each member's load")
	fs.StringVar(&f.bs, "bs", "64k", "fio --bs of the load")
	fs.StringVar(&f.loads, "loads", "none,fio", "loads to measure under, in order (none, fio)")
	fs.Float64Var(&f.quiet, "quiet", 0.5, "before each window, wait (up to 30 s) until the CPUs were less than this busy for 3 s")
	_ = fs.Parse(args)
	if f.report != "" {
		return groupsReport(os.Stdout, f.report)
	}
	if err := absPaths(&f.bin, &f.out, &f.results); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("replbench groups needs root (loop devices, mounts, eBPF)")
	}
	if f.members < 1 || f.members > 16 || f.seconds < 10 || f.seconds > 3600 {
		return fmt.Errorf("-members must be 1 to 16 and -seconds 10 to 3600")
	}
	sink, err := openSink(f.results)
	if err != nil {
		return err
	}
	defer sink.close()
	u := &undo{}
	defer u.run()
	work, err := freshWork(f.out, u)
	if err != nil {
		return err
	}
	r := &grpRun{f: f, sink: sink, u: u, work: work}
	if err := r.setup(ctx); err != nil {
		return err
	}
	for _, load := range strings.Split(f.loads, ",") {
		load = strings.TrimSpace(load)
		if load != "none" && load != "fio" {
			return fmt.Errorf("-loads: %q is neither none nor fio", load)
		}
		for _, grouped := range []bool{false, true} {
			if err := r.window(ctx, load == "fio", grouped); err != nil {
				return err
			}
		}
	}
	return nil
}

func absPaths(ps ...*string) error {
	for _, p := range ps {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	return nil
}

// setup makes the members' volumes, starts the cluster (points every 1 s) and the
// members' agents, and waits until every member is CONTINUOUS.
func (r *grpRun) setup(ctx context.Context) error {
	for i := 1; i <= r.f.members; i++ {
		m, err := r.newVolume(ctx, fmt.Sprintf("m%d", i))
		if err != nil {
			return err
		}
		r.members = append(r.members, m)
	}
	cl, err := newCluster(ctx, r.u, r.f.bin, filepath.Join(r.work, "cluster"), func(s *api.ReplicationSettings) {
		s.ConsistencyPointIntervalSeconds = 1
	})
	if err != nil {
		return err
	}
	r.cl = cl
	t0 := time.Now()
	for _, m := range r.members {
		if m.a, err = cl.installAgent(ctx, m.name, m.dev); err != nil {
			return err
		}
		if err := m.a.start(r.u); err != nil {
			return err
		}
	}
	for _, m := range r.members {
		s, err := m.a.waitState(ctx, 5*time.Minute, isContinuous(t0))
		if err != nil {
			return err
		}
		if s.Tracker != "ebpf" {
			return fmt.Errorf("member %s's agent uses the %s tracker (%s), not eBPF", m.name, s.Tracker, s.TrackerReason)
		}
	}
	logf("%d members CONTINUOUS in %.1f s", len(r.members), time.Since(t0).Seconds())
	return nil
}

// newVolume makes a member's sparse image, attaches it (direct I/O), makes ext4 on it,
// mounts it and writes the file the load overwrites.
func (r *grpRun) newVolume(ctx context.Context, name string) (*grpMember, error) {
	img := filepath.Join(r.work, name+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return nil, err
	}
	if err := os.Truncate(img, int64(r.f.sizeMiB)<<20); err != nil {
		return nil, err
	}
	lp, err := attachLoop(ctx, r.u, img)
	if err != nil {
		return nil, err
	}
	if _, err := run(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", lp.dev); err != nil {
		return nil, err
	}
	m := &grpMember{name: name, dev: lp.dev, mnt: filepath.Join(r.work, "mnt-"+name)}
	if err := mount(ctx, r.u, lp.dev, m.mnt); err != nil {
		return nil, err
	}
	m.file = filepath.Join(m.mnt, "load.dat")
	if _, err := run(ctx, "dd", "if=/dev/urandom", "of="+m.file, "bs=1M", fmt.Sprintf("count=%d", r.f.fileMiB),
		"oflag=direct", "status=none"); err != nil {
		return nil, err
	}
	syscall.Sync()
	return m, nil
}

// window measures one window: the members alone (their own points) or as a group,
// with or without the fio load.
func (r *grpRun) window(ctx context.Context, load, grouped bool) error {
	waitQuiet(ctx, r.f.quiet, 30*time.Second)
	started := fmt.Sprintf("%s (CPUs %.0f%% busy)", loadAvg(), 100*lastBusy)
	group := ""
	if grouped {
		group = "bench-" + map[bool]string{false: "idle", true: "load"}[load]
		if err := r.createGroup(ctx, group); err != nil {
			return err
		}
	}
	var fio *fioLoad
	if load {
		var err error
		if fio, err = r.startFio(r.f.seconds + 10); err != nil {
			return err
		}
	}
	sleepCtx(ctx, 5*time.Second) // the load settles; the agents see the group
	from := time.Now()
	sleepCtx(ctx, time.Duration(r.f.seconds)*time.Second)
	to := time.Now()
	if err := ctx.Err(); err != nil {
		return err
	}
	var fioFig map[string]float64
	if fio != nil {
		var err error
		if fioFig, err = fio.wait(); err != nil {
			return err
		}
	}
	sleepCtx(ctx, 5*time.Second) // the points of the window's end are sealed
	if err := ctx.Err(); err != nil {
		return err
	}
	res, err := r.figures(ctx, group, from, to)
	if err != nil {
		return err
	}
	for k, v := range fioFig {
		res.Extra[k] = v
	}
	res.Load = started + "; after: " + loadAvg()
	res.Data = r.data(load)
	r.sink.add(res)
	if grouped {
		if err := r.cl.admin.DeleteConsistencyGroup(ctx, group); err != nil {
			return err
		}
		sleepCtx(ctx, 5*time.Second) // the agents read that they take their own points again
	}
	return ctx.Err()
}

func (r *grpRun) data(load bool) string {
	d := fmt.Sprintf("%d members, each a %d MiB ext4 loop device (direct I/O) with its own agent process", len(r.members), r.f.sizeMiB)
	if !load {
		return d + "; no load"
	}
	return d + fmt.Sprintf("; on each, fio randwrite bs=%s direct=1 ioengine=psync rate=%s over a %d MiB file", r.f.bs, r.f.rate, r.f.fileMiB)
}

// createGroup creates the group of every member, points every 1 s, and waits (at most
// a minute) for its first complete point.
func (r *grpRun) createGroup(ctx context.Context, name string) error {
	var ids []string
	for _, m := range r.members {
		ids = append(ids, m.a.id)
	}
	if _, err := r.cl.admin.CreateConsistencyGroup(ctx, api.CreateConsistencyGroupRequest{Name: name, SourceServerIDs: ids, IntervalSeconds: 1}); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		page, err := r.cl.admin.ListGroupPoints(ctx, name, 1, "", true)
		if err == nil && len(page.Items) > 0 {
			return nil
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("group %s: no complete group point within a minute\n%s", name, r.members[0].a.p.tail(20))
}

// fioLoad is the fio process loading every member.
type fioLoad struct {
	cmd  *exec.Cmd
	out  strings.Builder
	done chan error
}

// startFio starts one fio process with a job per member, for seconds; it is stopped by
// its pid when the run ends first.
func (r *grpRun) startFio(seconds int) (*fioLoad, error) {
	args := []string{"--rw=randwrite", "--bs=" + r.f.bs, "--direct=1", "--ioengine=psync", "--rate=" + r.f.rate, "--time_based",
		fmt.Sprintf("--runtime=%d", seconds), "--randrepeat=0", "--allow_file_create=0", fmt.Sprintf("--size=%dm", r.f.fileMiB),
		"--output-format=json"}
	for _, m := range r.members {
		args = append(args, "--name="+m.name, "--filename="+m.file)
	}
	l := &fioLoad{cmd: exec.Command("fio", args...), done: make(chan error, 1)}
	l.cmd.Stdout = &l.out
	l.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := l.cmd.Start(); err != nil {
		return nil, fmt.Errorf("fio: %w", err)
	}
	go func() { l.done <- l.cmd.Wait(); close(l.done) }()
	r.u.push(func() {
		select {
		case <-l.done:
		default:
			_ = l.cmd.Process.Kill()
			<-l.done
		}
	})
	return l, nil
}

// wait waits (at most a minute past its runtime's end) for fio and returns its figures:
// the write bandwidth of all jobs, and the worst job's completion latency p99 and max.
func (l *fioLoad) wait() (map[string]float64, error) {
	select {
	case err, ok := <-l.done:
		if ok && err != nil {
			return nil, fmt.Errorf("fio: %w: %s", err, lastLines(l.out.String(), 5))
		}
	case <-time.After(time.Minute):
		return nil, errors.New("fio did not end a minute after the window")
	}
	out := l.out.String()
	i := strings.IndexByte(out, '{')
	var v struct {
		Jobs []struct {
			Write struct {
				BW   float64 `json:"bw_bytes"`
				Clat struct {
					Max        float64            `json:"max"`
					Percentile map[string]float64 `json:"percentile"`
				} `json:"clat_ns"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if i < 0 || json.Unmarshal([]byte(out[i:]), &v) != nil || len(v.Jobs) == 0 {
		return nil, fmt.Errorf("fio printed no JSON: %s", lastLines(out, 5))
	}
	fig := map[string]float64{}
	for _, j := range v.Jobs {
		fig["fioMBps"] += j.Write.BW / 1e6
		fig["fioClatP99Ms"] = max(fig["fioClatP99Ms"], j.Write.Clat.Percentile["99.000000"]/1e6)
		fig["fioClatMaxMs"] = max(fig["fioClatMaxMs"], j.Write.Clat.Max/1e6)
	}
	return fig, nil
}

// figures reads the members' PITs of [from, to] from the staging store, and the
// group's points, and makes the window's result.
func (r *grpRun) figures(ctx context.Context, group string, from, to time.Time) (result, error) {
	pits, err := r.memberPITs(ctx, from, to)
	if err != nil {
		return result{}, err
	}
	window := to.Sub(from).Seconds()
	if group == "" {
		return r.aloneFigures(pits, window), nil
	}
	points, err := groupPoints(ctx, r.cl.admin, group, from, to)
	if err != nil {
		return result{}, err
	}
	return r.groupFigures(pits, points, window), nil
}

// memberPITs returns every member's PITs whose points lie in [from, to], by server, from
// the staging store (their labels hold the freeze and the group point).
func (r *grpRun) memberPITs(ctx context.Context, from, to time.Time) (map[string][]store.PIT, error) {
	be, err := file.Open(filepath.Join(r.cl.dir, "staging"))
	if err != nil {
		return nil, err
	}
	defer be.Close()
	mk, err := store.LoadMasterKey(filepath.Join(r.cl.dir, "cp", "staging.key"))
	if err != nil {
		return nil, err
	}
	repo, err := store.OpenWithoutIndex(ctx, be, mk, store.Options{})
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	out := map[string][]store.PIT{}
	for _, m := range r.members {
		all, err := repo.ListPITs(ctx, m.a.id)
		if err != nil {
			return nil, err
		}
		for _, p := range all {
			if !p.Time.Before(from) && !p.Time.After(to) {
				out[m.a.id] = append(out[m.a.id], p)
			}
		}
	}
	return out, nil
}

// freezeMs is a PIT's freeze in ms, and whether it was taken under a filesystem freeze.
func freezeMs(p store.PIT) (float64, bool) {
	if p.Level != consistency.Filesystem {
		return 0, false
	}
	us, err := strconv.ParseFloat(p.Labels["freezeMicros"], 64)
	return us / 1000, err == nil
}

// aloneFigures: each member takes its own points (every 1 s).
func (r *grpRun) aloneFigures(pits map[string][]store.PIT, window float64) result {
	ex := map[string]float64{"windowSeconds": window, "members": float64(len(r.members))}
	var all []float64
	notFS := 0
	for i, m := range r.members {
		var mine []float64
		for _, p := range pits[m.a.id] {
			if ms, ok := freezeMs(p); ok {
				mine = append(mine, ms)
			} else {
				notFS++
			}
		}
		all = append(all, mine...)
		ex[fmt.Sprintf("m%dFreezeP99Ms", i+1)] = pct(mine, 99)
		ex[fmt.Sprintf("m%dPointsPerSecond", i+1)] = float64(len(pits[m.a.id])) / window
		ex["stallFraction"] = max(ex["stallFraction"], msSum(mine)/1000/window)
	}
	ex["memberFreezeP50Ms"], ex["memberFreezeP99Ms"], ex["memberFreezeMaxMs"] = pct(all, 50), pct(all, 99), pct(all, 100)
	ex["memberPoints"], ex["pointsNotFilesystem"] = float64(len(all)), float64(notFS)
	ex["pointsPerSecond"] = float64(len(all)+notFS) / window / float64(len(r.members))
	return result{Phase: "groups", Name: "alone", Seconds: window, Extra: ex,
		Note: "each member takes its own points every 1 s (no group); freeze: freezeMicros of every PIT sealed in the window; pointsPerSecond: per member; stallFraction: the largest member's sum of freezes over the window"}
}

// groupPoints lists the group's points created in [from, to], oldest first.
func groupPoints(ctx context.Context, c *api.Client, group string, from, to time.Time) ([]api.GroupPoint, error) {
	var out []api.GroupPoint
	token := ""
	for page := 0; page < 100; page++ {
		l, err := c.ListGroupPoints(ctx, group, 500, token, false)
		if err != nil {
			return nil, err
		}
		older := false
		for _, p := range l.Items {
			if p.CreatedAt.Before(from) {
				older = true
				continue
			}
			if !p.CreatedAt.After(to) {
				out = append(out, p)
			}
		}
		if token = l.NextPageToken; older || token == "" {
			break
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// groupFigures: the members take the group's points.
func (r *grpRun) groupFigures(pits map[string][]store.PIT, points []api.GroupPoint, window float64) result {
	byPoint := map[string][]float64{} // group point → its members' freezes
	var member []float64
	own := 0
	for _, m := range r.members {
		for _, p := range pits[m.a.id] {
			gp := p.Labels["groupPoint"]
			if gp == "" {
				own++
				continue
			}
			if ms, ok := freezeMs(p); ok {
				byPoint[gp] = append(byPoint[gp], ms)
			}
		}
	}
	complete, failed := 0, 0
	reasons := map[string]int{}
	var groupFreeze []float64
	for _, p := range points {
		switch p.State {
		case api.GroupPointComplete:
			complete++
			fs := byPoint[p.ID]
			if len(fs) == len(r.members) {
				member = append(member, fs...)
				groupFreeze = append(groupFreeze, pct(fs, 100))
			}
		case api.GroupPointFailed:
			failed++
			reasons[anonymize(p.Reason, r.members)]++
		}
	}
	n := float64(len(points))
	ex := map[string]float64{"windowSeconds": window, "members": float64(len(r.members)),
		"groupPoints": n, "complete": float64(complete), "failed": float64(failed), "unfinished": n - float64(complete+failed),
		"completeShare": float64(complete) / n, "pointsPerSecond": float64(complete) / window, "attemptsPerSecond": n / window,
		"measuredPoints": float64(len(groupFreeze)), "ownPoints": float64(own),
		"memberFreezeP50Ms": pct(member, 50), "memberFreezeP99Ms": pct(member, 99), "memberFreezeMaxMs": pct(member, 100),
		"groupFreezeP50Ms": pct(groupFreeze, 50), "groupFreezeP99Ms": pct(groupFreeze, 99), "groupFreezeMaxMs": pct(groupFreeze, 100),
		"groupFreezeOver100Ms": float64(countOver(groupFreeze, 100)), "groupFreezeOver200Ms": float64(countOver(groupFreeze, 200)),
		"stallFraction": msSum(groupFreeze) / 1000 / window}
	return result{Phase: "groups", Name: "group", Seconds: window, Extra: ex, Note: reasonNote(reasons)}
}

func countOver(xs []float64, limit float64) int {
	n := 0
	for _, x := range xs {
		if x > limit {
			n++
		}
	}
	return n
}

// anonymize names members by their bench names in a failure reason, so that reasons
// of different points compare.
func anonymize(reason string, ms []*grpMember) string {
	for _, m := range ms {
		reason = strings.ReplaceAll(reason, m.a.id, m.name)
	}
	if i := strings.Index(reason, "gpit-"); i >= 0 {
		reason = reason[:i] + "gpit-…"
	}
	return reason
}

func reasonNote(reasons map[string]int) string {
	note := "group of every member, points every 1 s; member freeze: freezeMicros of each member's PIT of a complete point (from the agent's FIFREEZE to its FITHAW, the wait for every member's frozen report included); group freeze: the largest of a point's members'; stall: the sum of group freezes over the window"
	type rc struct {
		r string
		n int
	}
	var rs []rc
	for r, n := range reasons {
		rs = append(rs, rc{r, n})
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n || rs[i].n == rs[j].n && rs[i].r < rs[j].r })
	for i, x := range rs {
		if i == 5 {
			break
		}
		note += fmt.Sprintf("; failed %d×: %s", x.n, clipText(x.r, 300))
	}
	return note
}

func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// groupsReport renders the results as the BENCHMARKS.md section's table.
func groupsReport(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var rs []result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var x result
		if json.Unmarshal(sc.Bytes(), &x) == nil && x.Phase == "groups" {
			rs = append(rs, x)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(rs) == 0 {
		return fmt.Errorf("%s holds no groups results", path)
	}
	writeGroupsTable(w, rs)
	return nil
}

func writeGroupsTable(w io.Writer, rs []result) {
	fmt.Fprintln(w, "| load | points taken | points/s | complete / failed | member freeze p50 / p99 / max | group freeze p50 / p99 / max | stall | fio write p99 / max latency | load average (start; after) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---|")
	for _, x := range rs {
		e := x.Extra
		load := "none"
		if strings.Contains(x.Data, "fio ") {
			load = "fio randwrite"
			for _, f := range strings.Fields(x.Data) {
				if strings.HasPrefix(f, "bs=") || strings.HasPrefix(f, "rate=") {
					load += " " + f
				}
			}
			load += " on each"
		}
		who, cf, gf := "each server alone (own points, 1 s)", "—", "—"
		if x.Name == "group" {
			who = fmt.Sprintf("group of %s (1 s)", fx(get(e, "members"), 0))
			cf = fmt.Sprintf("%s / %s of %s (%s%%)", fx(get(e, "complete"), 0), fx(get(e, "failed"), 0), fx(get(e, "groupPoints"), 0), fx(100*get(e, "completeShare"), 1))
			gf = fmt.Sprintf("%s / **%s** / %s ms", fx(get(e, "groupFreezeP50Ms"), 1), fx(get(e, "groupFreezeP99Ms"), 1), fx(get(e, "groupFreezeMaxMs"), 1))
		}
		fio := "—"
		if _, ok := e["fioClatMaxMs"]; ok {
			fio = fmt.Sprintf("%s / %s ms (%s MB/s)", fx(get(e, "fioClatP99Ms"), 1), fx(get(e, "fioClatMaxMs"), 1), fx(get(e, "fioMBps"), 1))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s / **%s** / %s ms | %s | %s%% | %s | %s |\n", load, who, fx(get(e, "pointsPerSecond"), 2), cf,
			fx(get(e, "memberFreezeP50Ms"), 1), fx(get(e, "memberFreezeP99Ms"), 1), fx(get(e, "memberFreezeMaxMs"), 1), gf,
			fx(100*get(e, "stallFraction"), 2), fio, x.Load)
	}
	for _, x := range rs {
		if x.Name == "group" && get(x.Extra, "failed") > 0 {
			fmt.Fprintf(w, "\n%s: %s\n", x.Data, x.Note)
		}
	}
}

// msSum is the sum of xs.
func msSum(xs []float64) float64 {
	t := 0.0
	for _, x := range xs {
		t += x
	}
	return t
}
