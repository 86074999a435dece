// Command replbench measures Lifeboat's replication end to end (issues 4 and 5) with
// the real lifeboat binary as separate processes — control plane, replicator
// and agent, as test/e2e runs them — on loop devices holding real ext4 filesystems, and
// runs the anchors (cp, rsync, restic, dd) on the same data in the same run:
//
//	replbench run     initial sync, RESCAN, incremental cycles (4 and 16 GiB), lag and
//	                  freeze under a steady fio load; one JSON line per figure
//	replbench sim     simulated agents (300 light writers, or 15 streaming volumes)
//	                  against one replicator: per-block ack latency and replicator RSS;
//	                  or a fleet (issue 19): -replicators N on -store s3, one killed
//	                  (-kill-after), resume times, full resends, store verify
//	replbench fleet-report  the fleet runs of a results file as a RESULTS.md section
//	replbench report  RESULTS.md from the JSON lines
//	replbench failback  the failback cycle of issue 14 on 1 or 4 GiB disks: reverse
//	                  replication, planned failback against a full copy, data lost,
//	                  re-protection (bench/failback/run.sh); failback report renders it
//
// It needs root (loop devices, mounts, eBPF, drop_caches). Everything it starts is
// stopped by pid, and every loop device, mount and directory it made is removed, also
// when it fails or is interrupted. bench/replication/run.sh runs it all.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("replbench: ")
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(ctx, os.Args[2:])
	case "sim":
		err = cmdSim(ctx, os.Args[2:])
	case "report":
		err = cmdReport(os.Args[2:])
	case "fleet-report":
		err = cmdFleetReport(os.Args[2:])
	case "failback":
		err = cmdFailback(ctx, os.Args[2:])
	case "groups":
		err = cmdGroups(ctx, os.Args[2:])
	case "database":
		err = cmdDatabase(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		log.Printf("failed: %v", err)
		stop()
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: replbench run|sim|report|fleet-report|failback [flags] (see bench/replication/run.sh)")
	os.Exit(2)
}

// result is one measured figure, a line of results.jsonl.
type result struct {
	Phase   string             `json:"phase"`           // initial, rescan, incremental, lag, sim
	Name    string             `json:"name"`            // "lifeboat" or the anchor's name
	Cmd     string             `json:"cmd,omitempty"`   // the exact anchor command
	Data    string             `json:"data"`            // what it ran on
	Rep     int                `json:"rep,omitempty"`   // repetition, from 1
	Seconds float64            `json:"seconds"`         // the timed figure
	Bytes   int64              `json:"bytes"`           // bytes of the volume (or changed)
	Extra   map[string]float64 `json:"extra,omitempty"` // breakdowns and counters
	Note    string             `json:"note,omitempty"`
	Load    string             `json:"load"` // load average when it started
}

// sink appends results to a JSON-lines file and echoes them.
type sink struct{ f *os.File }

func openSink(path string) (*sink, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &sink{f: f}, nil
}

func (s *sink) add(r result) {
	for k, v := range r.Extra {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			delete(r.Extra, k) // JSON has no NaN: a missing figure is absent
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		log.Printf("cannot record a result: %v", err)
		return
	}
	fmt.Fprintln(s.f, string(b))
	_ = s.f.Sync()
	log.Printf("%s", b)
}

func (s *sink) close() { s.f.Close() }

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	return fs
}
