package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

// simResult makes the run's result line: phase "fleet" for a fleet, else "sim".
func simResult(f *simFlags, agents []*simAgent, w *window, regTook time.Duration) result {
	var all, steady, perAgentP99, seals, resume []float64
	failed, full, ends, moved, notResumed := 0, 0, 0, 0, 0
	var sent int64
	for _, a := range agents {
		a.mu.Lock()
		all = append(all, a.lat...)
		steady = append(steady, a.lat[:len(a.lat)-len(a.latMoved)]...) // the moved part comes last
		seals = append(seals, a.sealLat...)
		if len(a.lat) > 0 {
			perAgentP99 = append(perAgentP99, pct(a.lat, 99))
		}
		if a.unexpected > 0 {
			failed++
		}
		full += a.fullResends
		ends += a.ends
		if a.movedFrom != "" {
			moved++
			if a.resumedAt.IsZero() {
				notResumed++
			} else {
				resume = append(resume, a.resumedAt.Sub(a.killAt).Seconds())
			}
		}
		a.mu.Unlock()
		sent += a.sent.Load()
	}
	ex := map[string]float64{
		"agents": float64(len(agents)), "failedAgents": float64(failed), "replicators": float64(f.replicators),
		"ackP50Ms": pct(all, 50), "ackP99Ms": pct(all, 99), "ackMaxMs": pct(all, 100), "acks": float64(len(all)),
		"worstAgentP99Ms": pct(perAgentP99, 100),
		"sealP50Ms":       pct(seals, 50), "sealP99Ms": pct(seals, 99), "seals": float64(len(seals)),
		"replicatorRSSMaxMiB": float64(w.rssMax) / 1024, "replicatorRSSP50MiB": pct(w.rss, 50), "replicatorHWMMiB": float64(w.hwm) / 1024,
		"replicatorCPUPercent": 100 * w.repCPU.Seconds() / w.wall, "simCPUPercent": 100 * w.selfCPU.Seconds() / w.wall,
		"MBps": float64(sent) / w.wall / 1e6, "registerSeconds": regTook.Seconds(),
	}
	if f.fleet() {
		ex["ackP99SteadyMs"], ex["ackMaxSteadyMs"] = pct(steady, 99), pct(steady, 100)
		ex["lagP99Ms"], ex["lagMaxMs"] = pct(w.lag, 99), pct(w.lag, 100)
		ex["lagP99SteadyMs"], ex["lagMaxSteadyMs"] = pct(w.lagSteady, 99), pct(w.lagSteady, 100)
		ex["sessionEnds"], ex["fullResends"] = float64(ends), float64(full)
	}
	if w.kill != nil {
		ex["killAfterSeconds"], ex["killedAgents"] = w.kill.at.Seconds(), float64(moved)
		ex["resumedAgents"], ex["notResumedAgents"] = float64(len(resume)), float64(notResumed)
		ex["resumeP50Seconds"], ex["resumeP99Seconds"], ex["resumeMaxSeconds"] = pct(resume, 50), pct(resume, 99), pct(resume, 100)
		for _, by := range []float64{30, 60, 120, 300} {
			n := 0
			for _, r := range resume {
				if r <= by {
					n++
				}
			}
			ex[fmt.Sprintf("resumedBy%.0fs", by)] = float64(n)
		}
		ex["reassignedAgents"], ex["reassignMinSeconds"], ex["reassignMaxSeconds"] = float64(len(w.reassign)), pct(w.reassign, 0), pct(w.reassign, 100)
	}
	if w.verify.ran {
		ex["verifyClean"], ex["verifySeconds"] = b2f(w.verify.clean), w.verify.seconds
	}
	return result{Phase: map[bool]string{true: "fleet", false: "sim"}[f.fleet()], Name: f.name,
		Data:    fmt.Sprintf("%d simulated agents, one %d GiB volume each", len(agents), f.volumeGiB),
		Seconds: w.wall, Load: w.load, Extra: ex, Note: simNote(f, agents, w, failed)}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func simNote(f *simFlags, agents []*simAgent, w *window, failed int) string {
	note := fmt.Sprintf("each agent: one %d-block batch (%d KiB) every %s, a Marker every %s", f.blocks, f.blocks*64, f.period, f.marker)
	if f.mode == "stream" {
		note = "each agent streams 32-block batches as fast as its window (64 MiB) allows, as in an initial sync"
	}
	if f.fleet() {
		note += fmt.Sprintf("; %d replicators of one site, %s staging store", f.replicators, map[string]string{"file": "a local directory", "s3": "an S3 bucket on versitygw"}[f.store])
	}
	if f.serverArgs != "" {
		note += "; lifeboat server " + f.serverArgs
	}
	if f.replicatorArgs != "" {
		note += "; lifeboat replicator " + f.replicatorArgs
	}
	if w.kill != nil {
		note += fmt.Sprintf("; %s (%d agents) killed with SIGKILL %.0f s into the window", w.kill.name, w.kill.agents, w.kill.at.Seconds())
	}
	if w.verify.ran && !w.verify.clean {
		note += "; store verify: " + w.verify.summary
	}
	if failed > 0 {
		note += "; errors: " + firstErr(agents)
	}
	return note
}

// cmdFleetReport prints the fleet runs of a results file as a section of RESULTS.md.
func cmdFleetReport(args []string) error {
	fs := flag.NewFlagSet("fleet-report", flag.ExitOnError)
	command := fs.String("command", "", "the command that ran them")
	about := fs.String("about", "", "a sentence on the machine and when")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: replbench fleet-report [-command C] [-about S] results.jsonl")
	}
	rs, err := readResults(fs.Arg(0))
	if err != nil {
		return err
	}
	r := &report{rs: rs}
	p := func(format string, args ...any) { fmt.Fprintf(os.Stdout, format+"\n", args...) }
	p("## Fleet: simulated agents over several replicators, one killed (issue 19)")
	p("")
	if *command != "" {
		p("Command: `%s`. %s", *command, *about)
		p("")
	}
	r.writeFleet(p)
	if len(r.goals) > 0 {
		p("| goal (issue 19, Fleet) | measured | |")
		p("|---|---:|---|")
		for _, g := range r.goals {
			p("%s", g)
		}
		p("")
	}
	return nil
}

// writeFleet writes the table of the fleet runs, and their goals.
func (r *report) writeFleet(p func(string, ...any)) {
	var runs []result
	for _, x := range r.rs {
		if x.Phase == "fleet" {
			runs = append(runs, x)
		}
	}
	if len(runs) == 0 {
		return
	}
	p("*ack* is written → acknowledged as durable, of every batch written in the window; *steady* leaves out the")
	p("acks, and lag samples, of the killed replicator's agents after the kill. *lag* is sampled every second: each")
	p("agent's oldest unacknowledged write's age. *resume* is kill → the first Ack from another replicator, per agent")
	p("of the killed one. *full resends*: sessions after a moved agent's first whose Welcome asked for every block again.")
	p("")
	p("| run | agents / replicators | ack p50 / p99 / max s | ack p99 steady s | lag p99 / max s | lag p99 / max steady s | killed: agents, resumed | resume p50 / p99 / max s | full resends | verify | RSS max MiB | replicators' CPU | load |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
	for _, x := range runs {
		e := x.Extra
		s := func(k string) string { return fx(get(e, k)/1000, 2) }
		verify := "–"
		if v, ok := e["verifyClean"]; ok {
			verify = map[bool]string{true: "clean", false: "**errors**"}[v == 1] + fmt.Sprintf(" (%0.f s)", e["verifySeconds"])
		}
		p("| %s | %0.f / %0.f | %s / %s / %s | %s | %s / %s | %s / %s | %0.f, %0.f | %s / %s / %s | %0.f | %s | %s | %s%% | %s |", x.Name,
			e["agents"], e["replicators"], s("ackP50Ms"), s("ackP99Ms"), s("ackMaxMs"), s("ackP99SteadyMs"),
			s("lagP99Ms"), s("lagMaxMs"), s("lagP99SteadyMs"), s("lagMaxSteadyMs"), e["killedAgents"], e["resumedAgents"],
			fx(get(e, "resumeP50Seconds"), 1), fx(get(e, "resumeP99Seconds"), 1), fx(get(e, "resumeMaxSeconds"), 1),
			e["fullResends"], verify, fx(e["replicatorRSSMaxMiB"], 0), fx(e["replicatorCPUPercent"], 0), x.Load)
	}
	p("")
	for _, x := range runs {
		e := x.Extra
		p("- %s: %s; measured %0.f s; %0.f acks, %0.f seals (p50 %s ms); %s MB/s; the simulator used %s%% of a core; agents with a session ended other than by the kill: %0.f.",
			x.Name, x.Note, x.Seconds, e["acks"], e["seals"], fx(get(e, "sealP50Ms"), 0), fx(e["MBps"], 1), fx(e["simCPUPercent"], 0), e["failedAgents"])
		if _, ok := e["reassignedAgents"]; ok {
			p("  The control plane moved %0.f of the %0.f agents %s–%s s after the kill (its audit); the rest of their resume time is the agents' retry backoff and the new replicators' opening of their sessions. Resumed within 30 s: %0.f, 60 s: %0.f, 120 s: %0.f, 300 s: %0.f.",
				e["reassignedAgents"], e["killedAgents"], fx(get(e, "reassignMinSeconds"), 1), fx(get(e, "reassignMaxSeconds"), 1),
				e["resumedBy30s"], e["resumedBy60s"], e["resumedBy120s"], e["resumedBy300s"])
		}
		r.fleetGoals(x)
	}
	p("")
}

func (r *report) fleetGoals(x result) {
	e := x.Extra
	n := x.Name + ": "
	r.goal(n+"ack p99 < 5 s (steady; whole window, kill included: "+fx(get(e, "ackP99Ms")/1000, 2)+" s)", fx(get(e, "ackP99SteadyMs")/1000, 2)+" s", get(e, "ackP99SteadyMs") < 5000)
	r.goal(n+"lag < 5 s (max of the steady samples; whole window: "+fx(get(e, "lagMaxMs")/1000, 1)+" s)", fx(get(e, "lagMaxSteadyMs")/1000, 2)+" s", get(e, "lagMaxSteadyMs") < 5000)
	if _, ok := e["killedAgents"]; ok {
		r.goal(n+"the killed replicator's agents resume on the others ≤ 30 s (max; not resumed: "+fx(e["notResumedAgents"], 0)+")",
			fx(get(e, "resumeMaxSeconds"), 1)+" s", get(e, "resumeMaxSeconds") <= 30 && e["notResumedAgents"] == 0)
	}
	r.goal(n+"nothing resent in full", fx(e["fullResends"], 0)+" full resends", e["fullResends"] == 0)
	if v, ok := e["verifyClean"]; ok {
		r.goal(n+"store verify --read-data clean", map[bool]string{true: "clean", false: "errors"}[v == 1], v == 1)
	}
}
