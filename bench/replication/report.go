package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
)

// cmdReport prints the results' tables (markdown) to stdout: figures, anchors, ratios
// and the goals of issues 4 and 5 (issues 4 and 5).
func cmdReport(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: replbench report results.jsonl")
	}
	rs, err := readResults(args[0])
	if err != nil {
		return err
	}
	rep := &report{rs: rs}
	rep.write(os.Stdout)
	return nil
}

// readResults reads a JSON-lines results file.
func readResults(path string) ([]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rs []result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		rs = append(rs, r)
	}
	return rs, sc.Err()
}

type report struct {
	rs    []result
	goals []string
}

func (r *report) find(phase, name, dataPrefix string, rep int) (result, bool) {
	for i := len(r.rs) - 1; i >= 0; i-- {
		x := r.rs[i]
		if x.Phase == phase && x.Name == name && strings.HasPrefix(x.Data, dataPrefix) && (rep < 0 || x.Rep == rep) {
			return x, true
		}
	}
	return result{}, false
}

func (r *report) datas(phase string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range r.rs {
		if x.Phase == phase && !seen[x.Data] {
			seen[x.Data] = true
			out = append(out, x.Data)
		}
	}
	return out
}

func (r *report) goal(text string, value string, met bool) {
	mark := "**not met**"
	if met {
		mark = "met"
	}
	if strings.Contains(text, "no goal") {
		mark = "–"
	}
	r.goals = append(r.goals, fmt.Sprintf("| %s | %s | %s |", text, value, mark))
}

func mbps(bytes int64, s float64) string {
	if s <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", float64(bytes)/s/1e6)
}

func fx(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func mib(v float64) string { return fx(v/(1<<20), 1) }

// get is a figure of e, NaN when it was not measured (absent).
func get(e map[string]float64, k string) float64 {
	if v, ok := e[k]; ok {
		return v
	}
	return math.NaN()
}

func (r *report) write(w *os.File) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }

	// Initial sync.
	p("## Initial sync (agent → TLS → replicator → store, end to end)")
	p("")
	p("From `lifeboat agent run` starting on a never-replicated volume to the first PIT listed by the control plane")
	p("(every block acknowledged as durable and sealed). Anchors copy the same image, with `sync` inside their timing.")
	p("")
	for _, data := range r.datas("initial") {
		var lbs []result
		for _, x := range r.rs {
			if x.Phase == "initial" && x.Data == data && x.Name == "lifeboat" {
				lbs = append(lbs, x)
			}
		}
		if len(lbs) == 0 {
			continue
		}
		p("**%s**", data)
		p("")
		head, sep := "| | seconds | MB/s of volume |", "|---|---:|---:|"
		for _, lb := range lbs {
			head += fmt.Sprintf(" anchor time / Lifeboat %s time |", codecOf(lb))
			sep += "---:|"
		}
		p("%s", head)
		p("%s", sep)
		for _, lb := range lbs {
			p("| Lifeboat, compression %s | %s | %s |%s", codecOf(lb), fx(lb.Seconds, 1), mbps(lb.Bytes, lb.Seconds), strings.Repeat(" |", len(lbs)))
		}
		for _, x := range r.rs {
			if x.Phase == "initial" && x.Data == data && x.Name != "lifeboat" {
				row := fmt.Sprintf("| `%s` | %s | %s |", x.Cmd, fx(x.Seconds, 1), mbps(x.Bytes, x.Seconds))
				for _, lb := range lbs {
					row += " " + fx(x.Seconds/lb.Seconds, 2) + "× |"
				}
				p("%s", row)
			}
		}
		p("")
		for _, lb := range lbs {
			e := lb.Extra
			p("- Lifeboat with %s: sent %s MiB in %0.f blocks (all-zero blocks are counted but travel as a flag without data), stored %s MiB;",
				codecOf(lb), mib(e["sentBytes"]), e["sentBlocks"], mib(e["storedBytes"]))
			p("  CPU: agent %s s, replicator %s s; peak RSS: replicator %s MiB, agent %s MiB. %s. Machine at start: %s.",
				fx(e["agentCPUSeconds"], 1), fx(e["replicatorCPUSeconds"], 1), fx(get(e, "replicatorHWMMiB"), 0), fx(get(e, "agentHWMMiB"), 0), lb.Note, lb.Load)
			if restic, ok := r.find("initial", "restic backup --stdin", data, 0); ok {
				v := restic.Seconds / lb.Seconds
				r.goal(fmt.Sprintf("Initial sync ≥ 2× `restic backup --stdin` (%s, %s)", short(data), codecOf(lb)), fx(v, 2)+"×", v >= 2)
			}
			if cp, ok := r.find("initial", "cp", data, 0); ok {
				v := cp.Seconds / lb.Seconds
				r.goal(fmt.Sprintf("Initial sync ≥ 60%% of `cp` throughput (%s, %s)", short(data), codecOf(lb)), fx(100*v, 0)+"%", v >= 0.6)
			}
		}
		p("")
	}

	// RESCAN.
	if lb, ok := r.find("rescan", "lifeboat", "", -1); ok {
		p("## RESCAN of an unchanged volume")
		p("")
		p("The agent restarted (a new tracker generation: writes while it was down would be unknown), so it reads every")
		p("block and compares its hash with what the replica holds; timed from its start to the first PIT after it.")
		p("")
		p("| | seconds | MB/s read | Lifeboat's speed-up |")
		p("|---|---:|---:|---:|")
		p("| Lifeboat | %s | %s | |", fx(lb.Seconds, 1), mbps(lb.Bytes, lb.Seconds))
		for _, x := range r.rs {
			if x.Phase == "rescan" && x.Name != "lifeboat" {
				p("| `%s` | %s | %s | %s× |", x.Cmd, fx(x.Seconds, 1), mbps(x.Bytes, x.Seconds), fx(x.Seconds/lb.Seconds, 2))
			}
		}
		p("")
		p("Lifeboat read %s MiB and sent %s MiB (%0.f blocks); state CONTINUOUS after %s s; agent CPU %s s. Data: %s. Load: %s.",
			mib(lb.Extra["scanBytes"]), mib(lb.Extra["sentBytes"]), lb.Extra["sentBlocks"], fx(lb.Extra["toContinuousSeconds"], 1),
			fx(lb.Extra["agentCPUSeconds"], 1), lb.Data, lb.Load)
		p("")
		r.goal("RESCAN of an unchanged volume sends nothing", mib(lb.Extra["sentBytes"])+" MiB sent", lb.Extra["sentBytes"] < 1<<20)
	}

	// Incremental.
	if len(r.datas("incremental")) > 0 {
		p("## Incremental cycle after 1%% of the volume changed (eBPF tracker)")
		p("")
		p("Each cycle rewrites 1%% of the 4 GiB volume's 64 KiB blocks (655 blocks, 41 MiB of random bytes) in place, in")
		p("existing files of the mounted ext4 (pieces chosen with FIEMAP to cover whole aligned blocks), then `sync`.")
		p("**Lifeboat**: from the end of write+sync to the first PIT after it listed by the control plane (points every")
		p("1 s); *with write* adds the write+sync itself. Then, on the same changed image, rsync updates its copy in place")
		p("and restic backs it up again (both read the whole image). The large volume gets the same change (same files")
		p("and offsets, other random bytes) in its own store. *wait for point* is the time from the end of the sync to the")
		p("consistency point the PIT was taken at (the agent takes one every interval — 1 s, the shortest setting, here —")
		p("or when asked: `snapshots create` wakes the agent's long poll of its config at once); *point → listed* is")
		p("freeze, the rest of the change sent and acknowledged, PIT sealed in the store and recorded by the control plane.")
		p("")
		var small, large []float64
		for _, data := range r.datas("incremental") {
			p("**%s**", data)
			p("")
			p("| cycle | Lifeboat s | with write s | wait for point s | point → listed s | blocks sent | rsync s | restic s | rsync / Lifeboat | restic / Lifeboat |")
			p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
			var lbs, rss, res []float64
			for _, x := range r.rs {
				if x.Phase != "incremental" || x.Data != data || !strings.HasPrefix(x.Name, "lifeboat") {
					continue
				}
				rs, _ := r.find("incremental", "rsync --inplace --no-whole-file", data, x.Rep)
				re, _ := r.find("incremental", "restic backup --stdin", data, x.Rep)
				label := fmt.Sprint(x.Rep)
				if x.Name != "lifeboat" {
					label = fmt.Sprintf("%d (`%s`, points every 10 s)", x.Rep, strings.TrimPrefix(x.Name, "lifeboat "))
				} else {
					lbs = append(lbs, x.Seconds)
					rss = append(rss, rs.Seconds)
					res = append(res, re.Seconds)
				}
				e := x.Extra
				p("| %s | %s | %s | %s | %s | %0.f | %s | %s | %s× | %s× |", label, fx(x.Seconds, 2), fx(e["withWriteSeconds"], 2),
					fx(e["waitForPointSeconds"], 2), fx(e["pointToListedSeconds"], 2), e["sentBlocks"], fx(rs.Seconds, 2), fx(re.Seconds, 2),
					fx(rs.Seconds/x.Seconds, 1), fx(re.Seconds/x.Seconds, 1))
			}
			if len(lbs) > 0 {
				m, mr, me := median(lbs), median(rss), median(res)
				p("| median (points every 1 s) | %s | | | | | %s | %s | %s× | %s× |", fx(m, 2), fx(mr, 2), fx(me, 2), fx(mr/m, 1), fx(me/m, 1))
				if strings.Contains(data, " plus zeros") {
					large = lbs
				} else {
					small = lbs
					r.goal("Incremental (1% of 4 GiB) ≥ 10× faster than `rsync --inplace --no-whole-file`", fx(mr/m, 1)+"×", mr/m >= 10)
					r.goal("Incremental (1% of 4 GiB) ≥ 10× faster than `restic backup`", fx(me/m, 1)+"×", me/m >= 10)
				}
			}
			p("")
		}
		if len(small) > 0 && len(large) > 0 {
			v := median(large) / median(small)
			p("Large volume / 4 GiB volume, median cycle: %s (the cost follows the change, not the disk).", fx(v, 2))
			p("")
			r.goal("Incremental on the large volume ≈ the 4 GiB one (same change)", fx(v, 2)+"×", v <= 1.5)
		}
	}

	// Lag and freeze.
	for _, x := range r.rs {
		if x.Phase != "lag" {
			continue
		}
		e := x.Extra
		p("## Lag and freeze under a steady random-write load")
		p("")
		p("%s; consistency point every %0.f s. %s.", x.Data, e["intervalSeconds"], x.Note)
		p("")
		p("| | p50 | p99 | max | samples |")
		p("|---|---:|---:|---:|---:|")
		p("| lag (s) | %s | %s | %s | %0.f |", fx(e["lagP50"], 2), fx(e["lagP99"], 2), fx(e["lagMax"], 2), e["lagSamples"])
		p("| freeze (ms) | %s | %s | %s | %0.f |", fx(e["freezeP50Ms"], 1), fx(e["freezeP99Ms"], 1), fx(e["freezeMaxMs"], 1), e["points"])
		bsv := ""
		if i := strings.Index(x.Data, "bs="); i >= 0 {
			bsv = strings.Fields(x.Data[i:])[0]
		}
		for _, n := range []string{"FIFREEZE+FITHAW", "FIFREEZE+FITHAW, expedited RCU", "FIFREEZE+FITHAW under load " + bsv, "FIFREEZE+FITHAW under load " + bsv + ", expedited RCU"} {
			if fa, ok := r.find("freeze-anchor", n, "", -1); ok {
				p("| kernel alone (ms): %s | %s | %s | %s | %0.f |", fa.Cmd, fx(fa.Extra["p50Ms"], 1), fx(fa.Extra["p99Ms"], 1), fx(fa.Extra["maxMs"], 1), fa.Extra["samples"])
			}
		}
		p("")
		p("fio wrote %s MB/s; the agent sent %s MB/s of blocks. CPU (%% of one core): agent %s%%, replicator %s%%, fio %s%%. Points not taken under freeze: %0.f. Load at start: %s.",
			fx(e["fioMBps"], 1), fx(e["sentMBps"], 1), fx(e["agentCPUPercent"], 1), fx(e["replicatorCPUPercent"], 1), fx(e["fioCPUPercent"], 1), e["pointsNotFilesystem"], x.Load)
		p("")
		every := fmt.Sprintf(", points every %0.f s", e["intervalSeconds"])
		bs := " (" + bsv + every + ")"
		if bsv == "bs=4k" {
			bs = " (bs=4k: every 4 KiB write dirties a 64 KiB block, so ~16× more to send" + every + ")"
		}
		r.goal("p99 lag ≤ 1 s under 10 MB/s random writes"+bs, fx(e["lagP99"], 2)+" s", e["lagP99"] <= 1)
		r.goal("p99 freeze ≤ 50 ms"+bs, fx(e["freezeP99Ms"], 1)+" ms", e["freezeP99Ms"] <= 50)
	}

	r.writePoints(p)
	r.writeMetadata(p)

	// Simulated agents.
	var sims []result
	for _, x := range r.rs {
		if x.Phase == "sim" {
			sims = append(sims, x)
		}
	}
	if len(sims) > 0 {
		p("## Many agents against one replicator (simulated agents)")
		p("")
		p("Each simulated agent registers through the API (its own key, CSR and certificate), asks the control plane for")
		p("its replicator and opens a mutual-TLS wire session with its certificate. *ack* is the time from writing a")
		p("batch to its acknowledgement as durable (flushed to the store); a real agent's lag adds its tracker's and drain")
		p("loop's delay (≤ 100 ms) to it. *seal* is Marker → Sealed (PIT stored and recorded with the control plane).")
		p("")
		p("| run | agents (failed) | ack p50 / p99 / max ms | worst agent's p99 ms | seal p50 / p99 ms | MB/s | replicator RSS max (p50) MiB | replicator CPU | load |")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---|")
		sort.SliceStable(sims, func(i, j int) bool { return sims[i].Extra["agents"] > sims[j].Extra["agents"] })
		for _, x := range sims {
			e := x.Extra
			p("| %s | %0.f (%0.f) | %s / %s / %s | %s | %s / %s | %s | %s (%s) | %s%% | %s |", x.Name, e["agents"], e["failedAgents"],
				fx(get(e, "ackP50Ms"), 0), fx(get(e, "ackP99Ms"), 0), fx(get(e, "ackMaxMs"), 0), fx(get(e, "worstAgentP99Ms"), 0), fx(get(e, "sealP50Ms"), 0), fx(get(e, "sealP99Ms"), 0),
				fx(e["MBps"], 1), fx(e["replicatorRSSMaxMiB"], 0), fx(e["replicatorRSSP50MiB"], 0), fx(e["replicatorCPUPercent"], 0), x.Load)
		}
		p("")
		for _, x := range sims {
			p("- %s: %s; measured %0.f s; the simulator itself used %s%% of a core.", x.Name, x.Note, x.Seconds, fx(x.Extra["simCPUPercent"], 0))
			e := x.Extra
			if strings.Contains(x.Note, "Marker every") && e["agents"] >= 300 {
				r.goal("300 agents, light writes: lag < 5 s (max ack latency)", fx(e["ackMaxMs"]/1000, 2)+" s", e["ackMaxMs"] < 5000 && e["failedAgents"] == 0)
				r.goal("Replicator RSS with 300 light agents (no goal of its own; reported)", fx(e["replicatorRSSMaxMiB"], 0)+" MiB", true)
			}
			if strings.Contains(x.Note, "streams") {
				r.goal(fmt.Sprintf("Replicator RSS < 256 MiB serving %0.f volumes streaming", e["agents"]), fx(e["replicatorRSSMaxMiB"], 0)+" MiB", e["replicatorRSSMaxMiB"] < 256)
			}
		}
		p("")
	}

	for _, x := range r.rs {
		if x.Phase == "fleet" {
			p("## Fleet: simulated agents over several replicators, one killed (issue 19)")
			p("")
			r.writeFleet(p)
			break
		}
	}

	if len(r.goals) > 0 {
		p("## Goals")
		p("")
		p("| goal (issues 4, 5, 15) | measured | |")
		p("|---|---:|---|")
		for _, g := range r.goals {
			p("%s", g)
		}
		p("")
	}
}

// codecOf is the compression a Lifeboat initial sync used (from its note).
func codecOf(x result) string {
	if f := strings.Fields(x.Note); len(f) > 1 && f[0] == "compression" {
		return strings.TrimSuffix(f[1], ",")
	}
	return "?"
}

func short(data string) string {
	if i := strings.Index(data, "("); i >= 0 {
		return strings.TrimSuffix(strings.TrimSpace(data[i+1:]), ")")
	}
	return data
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// lagByBS groups the lag phase's results by fio block size ("bs=64k"), each sorted by
// interval, longest first.
func (r *report) lagByBS() ([]string, map[string][]result) {
	var order []string
	by := map[string][]result{}
	for _, x := range r.rs {
		if x.Phase != "lag" {
			continue
		}
		bsv := ""
		if i := strings.Index(x.Data, "bs="); i >= 0 {
			bsv = strings.Fields(x.Data[i:])[0]
		}
		if _, ok := by[bsv]; !ok {
			order = append(order, bsv)
		}
		// The last result at an interval wins (a rerun appends).
		kept := by[bsv][:0]
		for _, y := range by[bsv] {
			if y.Extra["intervalSeconds"] != x.Extra["intervalSeconds"] {
				kept = append(kept, y)
			}
		}
		by[bsv] = append(kept, x)
	}
	for _, xs := range by {
		sort.SliceStable(xs, func(i, j int) bool { return xs[i].Extra["intervalSeconds"] > xs[j].Extra["intervalSeconds"] })
	}
	return order, by
}

// writePoints compares the consistency-point intervals of the lag phase (issue 15): what
// points every second cost beside the default 10 s.
func (r *report) writePoints(p func(string, ...any)) {
	order, by := r.lagByBS()
	if len(order) == 0 || len(by[order[0]]) < 2 {
		return
	}
	p("## Consistency points every second: cost beside the default interval (issue 15)")
	p("")
	p("The same steady fio load at each interval. *stall*: the freeze windows (freezeMicros of every PIT sealed")
	p("during the load) added up, as a fraction of the time they were taken in (writes to the volume wait while it is")
	p("frozen). *steps* are from the agent's debug log of each point (internal/agent point.go), p50 / p99 ms:")
	p("FIFREEZE ioctls, the wait for the tracker's completions, the reading of the dirty blocks (all inside the")
	p("freeze window). CPU is in %% of one core over the load.")
	p("")
	p("| load | interval s | points/s | freeze p50 / p99 / max ms | stall | agent CPU | replicator CPU | FIFREEZE ms | tracker sync ms | read ms | blocks read per point | lag p99 s |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, bsv := range order {
		for _, x := range by[bsv] {
			e := x.Extra
			p("| %s | %0.f | %s | %s / %s / %s | %s%% | %s%% | %s%% | %s / %s | %s / %s | %s / %s | %s | %s |", bsv, e["intervalSeconds"],
				fx(get(e, "pointsPerSecond"), 2), fx(e["freezeP50Ms"], 1), fx(e["freezeP99Ms"], 1), fx(e["freezeMaxMs"], 1),
				fx(100*get(e, "stallFraction"), 2), fx(e["agentCPUPercent"], 1), fx(e["replicatorCPUPercent"], 1),
				fx(get(e, "stepFifreezeMsP50"), 1), fx(get(e, "stepFifreezeMsP99"), 1), fx(get(e, "stepTrackerSyncMsP50"), 1), fx(get(e, "stepTrackerSyncMsP99"), 1),
				fx(get(e, "stepReadMsP50"), 1), fx(get(e, "stepReadMsP99"), 1), fx(get(e, "stepBlocksMean"), 1), fx(e["lagP99"], 2))
		}
	}
	p("")
	for _, bsv := range order {
		xs := by[bsv]
		slow, fast := xs[0].Extra, xs[len(xs)-1].Extra
		ag, rp := fast["agentCPUPercent"]/slow["agentCPUPercent"], fast["replicatorCPUPercent"]/slow["replicatorCPUPercent"]
		fs, ss := fast["intervalSeconds"], slow["intervalSeconds"]
		// What one more point costs: the CPU difference over the difference in points.
		extra := fast["pointsPerSecond"] - slow["pointsPerSecond"]
		p("- %s: CPU at %0.f s / at %0.f s: agent %s×, replicator %s×; each extra point cost the agent %s ms and the replicator %s ms of CPU;",
			bsv, fs, ss, fx(ag, 2), fx(rp, 2), fx(10*(fast["agentCPUPercent"]-slow["agentCPUPercent"])/extra, 1),
			fx(10*(fast["replicatorCPUPercent"]-slow["replicatorCPUPercent"])/extra, 1))
		p("  p99 freeze %s× that at %0.f s. Load at start: %s at %0.f s, %s at %0.f s.", fx(fast["freezeP99Ms"]/slow["freezeP99Ms"], 2), ss,
			xs[len(xs)-1].Load, fs, xs[0].Load, ss)
		if fs != 1 {
			continue
		}
		if bsv == "bs=64k" {
			r.goal("Points every 1 s: p99 freeze ≤ 10 ms with 64 KiB writes", fx(fast["freezeP99Ms"], 1)+" ms", fast["freezeP99Ms"] <= 10)
		}
		r.goal("Points every 1 s: write stall ≤ 1% of wall time ("+bsv+")", fx(100*fast["stallFraction"], 2)+"%", fast["stallFraction"] <= 0.01)
		r.goal(fmt.Sprintf("Points every 1 s: agent CPU ≤ 1.5× that at %0.f s (%s)", ss, bsv), fx(ag, 2)+"×", ag <= 1.5)
		r.goal(fmt.Sprintf("Points every 1 s: replicator CPU ≤ 1.5× that at %0.f s (%s)", ss, bsv), fx(rp, 2)+"×", rp <= 1.5)
	}
	p("")
}

// writeMetadata reports the metadata phase: the store's metadata per consistency point
// (every second, and at other intervals when measured), and per day after the default
// policy thinned them.
func (r *report) writeMetadata(p func(string, ...any)) {
	var xs []result
	for _, x := range r.rs {
		if x.Phase != "metadata" {
			continue
		}
		kept := xs[:0]
		for _, y := range xs {
			if get(y.Extra, "intervalSeconds") != get(x.Extra, "intervalSeconds") {
				kept = append(kept, y)
			}
		}
		xs = append(kept, x)
	}
	for _, x := range xs {
		r.writeMetadataOne(p, x)
	}
}

func (r *report) writeMetadataOne(p func(string, ...any), x result) {
	e := x.Extra
	iv := e["intervalSeconds"]
	if math.IsNaN(get(e, "intervalSeconds")) {
		iv = 1 // the phase's first runs had no other interval
	}
	kib := func(v float64) string { return fx(v/1024, 1) }
	p("## Store metadata of consistency points every %0.f s (issue 15)", iv)
	p("")
	p("%s: %s. Metadata is the store's bookkeeping (docs/store-format.md): PIT manifests (`snapshots/`), index", x.Data, x.Note)
	p("objects (`index/`), heads and journals (`heads/`), and the tree nodes (block tables) the PITs reference, which")
	p("are stored inside packs; data packs are counted apart. Per point: the growth over the window divided by the")
	p("%0.f points sealed in it (%s per second). Load at start: %s.", e["points"], fx(e["pointsPerSecond"], 2), x.Load)
	p("")
	p("| per point | bytes | objects |")
	p("|---|---:|---:|")
	p("| manifest | %s | %s |", fx(e["manifestBytesPerPoint"], 0), fx(e["manifestObjectsPerPoint"], 2))
	p("| tree nodes (inside packs) | %s | |", fx(e["treeBytesPerPoint"], 0))
	p("| index objects, as written (before a GC merges them) | %s | %s |", fx(e["indexBytesPerPoint"], 0), fx(e["indexObjectsPerPoint"], 2))
	p("| heads and journals (net) | %s | |", fx(e["headBytesPerPoint"], 0))
	p("| **metadata** | **%s** | **%s** |", fx(e["metadataBytesPerPoint"], 0), fx(e["metadataObjectsPerPoint"], 2))
	p("| packs (data and tree nodes) | %s | %s |", fx(e["packBytesPerPoint"], 0), fx(e["packObjectsPerPoint"], 2))
	p("")
	p("The volume's own metadata before the window (its first PITs): %s KiB in %0.f objects. After the window: %0.f PITs,",
		kib(e["baseMetadataBytes"]), e["baseMetadataObjects"], e["afterPITs"])
	p("%s KiB of metadata, %0.f packs, %0.f index objects. Then the default policy applied as it stands 24 h later, and a",
		kib(e["afterMetadataBytes"]), e["afterPackObjects"], e["afterIndexObjects"])
	p("garbage collection: %0.f PITs kept, %s KiB of metadata (tree nodes %s KiB, %0.f index objects of %s KiB), %0.f packs",
		e["thinnedPITs"], kib(e["thinnedMetadataBytes"]), kib(e["thinnedTreeBytes"]), e["thinnedIndexObjects"], kib(e["thinnedIndexBytes"]), e["thinnedPackObjects"])
	p("(the collection deleted %0.f packs and repacked %0.f, %0.f dead chunks).", e["gcDeletedPacks"], e["gcRepackedPacks"], e["gcDeadChunks"])
	p("")
	perDay := 86400 / iv
	p("**A day** of points every %0.f s is %0.f PITs; the default policy (every point for 60 min, one per 10 min for", iv, perDay)
	p("1 h, hourly for 24 h, daily for 7 days) keeps %0.f of them at the day's end (store.DefaultPolicy().Apply on a", e["keptPerDay"])
	p("day of such PITs; %0.f of a day of 10 s points): so many manifests and recovery_snapshots rows stand per server", e["keptPerDay10s"])
	p("(%0.f rows are inserted and %0.f deleted a day). Metadata per day, extrapolated as points × (manifest + tree", perDay, perDay-e["keptPerDay"])
	p("nodes + index as written) per point of this window, on top of the volume's own: %s MiB unthinned,",
		fx(e["dayUnthinnedMetadataBytes"]/(1<<20), 0))
	p("**%s MiB** after thinning (%0.f objects as written; a garbage collection merges the index objects).",
		fx(e["dayThinnedMetadataBytes"]/(1<<20), 1), e["dayThinnedMetadataObjects"])
	p("")
	r.goal(fmt.Sprintf("Store metadata per day of %0.f s points on a lightly written 4 GiB volume, after thinning (no goal of its own; reported)", iv),
		fx(e["dayThinnedMetadataBytes"]/(1<<20), 1)+" MiB", true)
}
