#!/usr/bin/env bash
# Database benchmark (issue 15): what a source server's death costs PostgreSQL, with the
# real lifeboat binary as separate processes (control plane, replicator, agent, as
# test/e2e runs them) and TestDatabaseSurvivesAgentKill's checks (replbench database,
# bench/replication/database.go):
#   - PostgreSQL (fsync on) with its data directory on ext4 on a loop device (direct I/O)
#     the agent replicates, under pgbench's TPC-B load (-c 4);
#   - throughput: pgbench -T 60 with no agent, with points every 1 s, every 10 s (rounds,
#     the order rotating);
#   - kills: TRIALS times per interval (1 s and 10 s, alternating) the agent is SIGKILLed
#     at a random moment; the newest PIT is exported, a copy of its image loop-mounted,
#     PostgreSQL recovers on it, pg_amcheck --all --heapallindexed and pgbench's invariants
#     must pass, and the data lost (kill time - newest transaction in the PIT) is recorded.
# Needs root and PostgreSQL (Debian: postgresql). Writes bench/database/RESULTS.md.
# Usage: [TRIALS=20] [ROUNDS=3] bench/database/run.sh [replbench database flags…]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
for c in losetup mkfs.ext4 fsck.ext4; do
  command -v "$c" >/dev/null || { echo "run.sh needs $c" >&2; exit 1; }
done
mkdir -p .cache
CGO_ENABLED=0 go build -o .cache/lifeboat-database ./cmd/lifeboat
go build -o .cache/replbench-database ./bench/replication
out=bench/out/database
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
load() { cut -d' ' -f1-3 /proc/loadavg; }
before=$(load)
started=$(date -u +%Y-%m-%dT%H:%MZ)
cmd=(.cache/replbench-database database -lifeboat .cache/lifeboat-database -results "$res" -out "$out"
  -trials "${TRIALS:-20}" -rounds "${ROUNDS:-3}" "$@")
"${cmd[@]}"
after=$(load)
ended=$(date -u +%Y-%m-%dT%H:%MZ)
pg=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

{
  echo "# Database benchmark (issue 15)"
  echo
  echo "Command: \`bench/database/run.sh${*:+ $*}\`, started $started, ended $ended; it ran:"
  echo
  echo "    ${cmd[*]}"
  echo
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM,"
  echo "kernel $(uname -r), $(go version | cut -d' ' -f3), $("$pg/postgres" --version). The machine is shared with other work:"
  echo "load average (1, 5, 15 min) $before before, $after after; each figure's own starting load is in"
  echo "bench/out/database/results.jsonl (throughput runs first wait up to 1 min for the CPUs to be < 25% busy)."
  echo
  echo "Setup: PostgreSQL (fsync, synchronous_commit and full_page_writes on, default checkpoints, shared_buffers 128MB,"
  echo "unix socket only) with its data directory on ext4 on a loop device (\`losetup --direct-io=on\`), replicated by the"
  echo "agent (eBPF tracker, default settings but the point interval) to a replicator with a local staging store on the"
  echo "same disk; control plane, replicator and agent are the lifeboat binary, each its own process, over 127.0.0.1."
  echo "Throughput: \`pgbench -n -c 4 -j 2 -T 60\` after a CHECKPOINT, with no agent running, with points every 1 s, and"
  echo "every 10 s (the agent started and its first PIT sealed before the run); the modes rotate each round. Kills: one"
  echo "pgbench runs throughout; per trial the agent is started, its first PIT awaited, and it is SIGKILLed one to two"
  echo "intervals later (uniform); 2 s later the newest PIT is exported (\`lifeboat export\`), fsck -n, its image copied"
  echo "and the copy loop-mounted, postmaster.pid removed (the source's postmaster still runs), PostgreSQL started on it"
  echo "(crash recovery must complete), \`pg_amcheck --all --heapallindexed\` must be clean, and sum(abalance) ="
  echo "sum(bbalance) = sum(tbalance) = sum(delta of pgbench_history). Data lost = kill time − max(pgbench_history.mtime)"
  echo "(pgbench writes the transaction's start time there)."
  echo
  .cache/replbench-database database report "$res"
} >bench/database/RESULTS.md
cat bench/database/RESULTS.md
