#!/usr/bin/env bash
# Fleet benchmark (issue 19, "Fleet" of its Done): 1,000 simulated agents (replbench sim)
# over 3 replicators of one site sharing an S3 staging store (a bucket on versitygw), one
# replicator killed with SIGKILL at random mid-window. Every process is the lifeboat
# binary (control plane, replicators) or replbench (the agents), on 127.0.0.1.
#   - each agent writes one 64 KiB block every 10 s (1,000 agents: 100 batches/s, 6.5 MB/s,
#     what 2 cores keep up with beside the simulator, versitygw and the control plane) and
#     takes a consistency point every 60 s (~17 PITs sealed per second);
#   - after 30 s of warm-up, a 480 s window; the replicator killed is chosen at random, at
#     a random time 60 to 90 s into the window (KILL_AFTER=75s fixes it), which leaves at
#     least 390 s to watch its agents resume (they took over a minute at 200 agents);
#   - measured: ack latency and lag over the whole window, resume time of the killed
#     replicator's agents on the others, sessions that asked for a full resend; then the
#     writers and replicators stop and `lifeboat store verify --read-data` checks the bucket
#     (given up after 12 minutes, and then not clean).
# Goals: ack p99 < 5 s, lag < 5 s, resume ≤ 30 s, nothing resent in full, verify clean.
# The control plane moves a lost replicator's servers after its replicator timeout (45 s,
# heartbeats every 10 s; lifeboat server has no flag for them: SERVER_ARGS passes any).
# Usage: bench/replication/fleet.sh [replbench sim flags…]   (later flags win, e.g.
#   bench/replication/fleet.sh -agents 30 -duration 120s -kill-after 20s   for a small check)
#   OUT=dir works there instead of bench/out/fleet; RES=file appends the results there
#   (default OUT/results.jsonl, emptied first); RESULTS=0 leaves RESULTS.md alone, else a
#   section is appended to bench/replication/RESULTS.md; VERSITYGW=path of versitygw.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
mkdir -p .cache
go build -o .cache/lifeboat-bench ./cmd/lifeboat
go build -o .cache/replbench ./bench/replication
vgw=${VERSITYGW:-${LIFEBOAT_TEST_VERSITYGW:-}}
if [ -z "$vgw" ]; then
  if command -v versitygw >/dev/null; then
    vgw=$(command -v versitygw)
  else
    [ -x .cache/bin/versitygw ] || GOBIN=$PWD/.cache/bin go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
    vgw=$PWD/.cache/bin/versitygw
  fi
fi
out=${OUT:-bench/out/fleet}
mkdir -p "$out"
res=${RES:-$out/results.jsonl}
[ -n "${RES:-}" ] || : >"$res"
kill_after=${KILL_AFTER:-$((60 + RANDOM % 31))s}
load() { cut -d' ' -f1-3 /proc/loadavg; }
before=$(load)
started=$(date -u +%Y-%m-%dT%H:%MZ)
rev=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cmd internal || echo ' with uncommitted changes under cmd/ or internal/')
args=(-name "1,000 agents, 3 replicators, S3, one killed" -agents 1000 -replicators 3 -store s3 -versitygw "$vgw"
  -mode light -blocks 1 -period 10s -marker 60s -warmup 30s -duration 480s -kill-after "$kill_after" -verify -verify-timeout 12m -keep-logs
  ${SERVER_ARGS:+-server-args "$SERVER_ARGS"})
.cache/replbench sim -lifeboat .cache/lifeboat-bench -results "$res" -out "$out" "${args[@]}" "$@"
after=$(load)

if [ "${RESULTS:-1}" != 0 ]; then
  {
    echo
    .cache/replbench fleet-report -command "bench/replication/fleet.sh${*:+ $*} (replbench sim ${args[*]} $*)" \
      -about "Lifeboat $rev. Started $started, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(go version | cut -d' ' -f3); the machine is shared: load average $before before, $after after. Logs of the control plane, the replicators and store verify: $out." \
      "$res"
  } >>bench/replication/RESULTS.md
  tail -n 40 bench/replication/RESULTS.md
fi
