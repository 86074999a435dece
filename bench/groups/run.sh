#!/usr/bin/env bash
# Consistency groups benchmark (issue 15): the freeze of group points with three members,
# end to end with the real lifeboat binary as separate processes (control plane,
# replicator, and an agent per member with its own config, state directory and machine
# id, as test/e2e/group_test.go runs them) on three 256 MiB loop devices holding ext4.
# For each load — none, then fio randwrite bs=64k direct=1 rate=2m on a 128 MiB file of
# every volume — it measures a window of the members' own points (each server alone,
# every 1 s) and a window of group points (a group of the three, every 1 s): each
# member's freeze (its PIT's freezeMicros label in the staging store), the group's freeze
# window (the largest of its members'), complete/failed group points, points per second.
# Goals: a group point stays inside the freeze bound (freezeTimeoutMs, 200 ms); a single
# server's freeze p99 ≤ 10 ms with 64 KiB writes.
# Needs root and fio. Writes bench/groups/RESULTS.md (the section of BENCHMARKS.md).
# Usage: bench/groups/run.sh [replbench groups flags…]   (e.g. -seconds 60; default 120 s per window,
#   four windows: about 10 minutes in all). OUT=dir works there instead of bench/out/groups.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
for c in fio losetup mkfs.ext4; do
  command -v "$c" >/dev/null || { echo "run.sh needs $c" >&2; exit 1; }
done
mkdir -p .cache
go build -o .cache/lifeboat-bench ./cmd/lifeboat
go build -o .cache/replbench ./bench/replication
out=${OUT:-bench/out/groups}
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
load() { cut -d' ' -f1-3 /proc/loadavg; }
before=$(load)
started=$(date -u +%Y-%m-%dT%H:%MZ)

.cache/replbench groups -lifeboat .cache/lifeboat-bench -results "$res" -out "$out" "$@"
after=$(load)

{
  echo "## Consistency groups (issue 15) — \`bench/groups/run.sh${*:+ $*}\`, $started"
  echo
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(go version | cut -d' ' -f3), $(fio --version)."
  echo "The machine is shared with other work: load average (1, 5, 15 min) $before before, $after after;"
  echo "each window's own is in the table. Three members, each a 256 MiB ext4 loop device (direct I/O) with its own"
  echo "agent process (eBPF tracker), one control plane and one replicator, all the lifeboat binary on 127.0.0.1."
  echo "Freeze bound (freezeTimeoutMs) 200 ms: the coordinator gives the members three quarters of it to report frozen."
  echo
  .cache/replbench groups -report "$res"
} >bench/groups/RESULTS.md
cat bench/groups/RESULTS.md
