#!/usr/bin/env bash
# Replication benchmark (issues 4 and 5; the goals are in report.go), end to end with the real lifeboat
# binary as separate processes (control plane, replicator, agent, as test/e2e runs them)
# on loop devices holding the 4 GiB ext4 volume of system files (bench/data.sh), with its
# anchors on the same data in the same run:
#   - initial sync (agent → TLS → replicator → store, to the first PIT) vs cp, dd,
#     rsync and `restic backup --stdin` of the same image; also a 16 GiB device (the
#     image plus zeros) vs restic;
#   - RESCAN of the unchanged volume (agent restarted) vs dd, rsync and restic again;
#   - incremental cycles after 1% of the blocks changed, on the 4 GiB and the 16 GiB
#     device, vs `rsync --inplace --no-whole-file` and `restic backup` of the changed image;
#   - lag and freeze under a steady 10 MB/s fio random-write load, and the agent's CPU;
#   - 300 simulated agents with light writes against one replicator (ack latency, RSS),
#     and 15 simulated volumes streaming at full speed (replicator RSS).
# The page cache is dropped before every timed step; every step ends with its data on
# disk (the store fsyncs; the anchors run sync inside their timing). Each timed step
# first waits (up to 2 minutes) until the CPUs were less than 25% busy for 3 s.
# Needs root, restic, rsync and fio. Writes bench/replication/RESULTS.md.
#   - with -phases …,metadata (issue 15): the store's metadata of points every 1 s under light
#     writes, per point and per day after the default PIT policy thinned them.
# Usage: bench/replication/run.sh [replbench run flags…]   (e.g. -reps 5)
#   SIM=0 skips the simulated agents; OUT=dir works there instead of bench/out/replication.
#   FLEET=1 adds the fleet of issue 19 (bench/replication/fleet.sh: 1,000 simulated agents over 3
#   replicators on S3 (versitygw), one killed); its section is then part of RESULTS.md.
#   Issue 15: SIM=0 bench/replication/run.sh -phases lag,metadata -fio-interval 10,1 -codecs s2 -anchors=false
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
for c in restic rsync fio losetup; do
  command -v "$c" >/dev/null || { echo "run.sh needs $c" >&2; exit 1; }
done
bench/data.sh
mkdir -p .cache
go build -o .cache/lifeboat-bench ./cmd/lifeboat
go build -o .cache/replbench ./bench/replication
out=${OUT:-bench/out/replication}
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
load() { cut -d' ' -f1-3 /proc/loadavg; }
before=$(load)
started=$(date -u +%Y-%m-%dT%H:%MZ)

.cache/replbench run -lifeboat .cache/lifeboat-bench -results "$res" -out "$out" "$@"
if [ "${SIM:-1}" != 0 ]; then
  .cache/replbench sim -lifeboat .cache/lifeboat-bench -results "$res" -out "$out" \
    -name "300 agents, light writes" -agents 300 -mode light -blocks 1 -period 1s -marker 10s -duration 120s
  .cache/replbench sim -lifeboat .cache/lifeboat-bench -results "$res" -out "$out" \
    -name "15 volumes, streaming" -agents 15 -mode stream -duration 60s -warmup 10s
fi
if [ "${FLEET:-0}" != 0 ]; then
  OUT="$out/fleet" RES="$res" RESULTS=0 bench/replication/fleet.sh
fi
after=$(load)

{
  echo "# Replication benchmark"
  echo
  echo "Command: \`bench/replication/run.sh${*:+ $*}\` started $started, $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
  echo "$(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r), $(go version | cut -d' ' -f3), restic $(restic version | cut -d' ' -f2),"
  echo "rsync $(rsync --version | head -1 | awk '{print $3}'), $(fio --version)."
  echo "The machine is shared with other work: load average (1, 5, 15 min) $before before, $after after; each"
  echo "figure's own starting load is in $res."
  echo "Data: system.img is a 4 GiB ext4 filesystem holding $(cat bench/out/system.txt 2>/dev/null || echo '~3.5 GB of /usr') and zeros (bench/data.sh),"
  echo "copied to a loop device with direct I/O (\`losetup --direct-io=on\`: like a real disk, reading it costs no copy through the"
  echo "page cache of the image file) and mounted; the agent replicates the device (eBPF tracker, 64 KiB blocks,"
  echo "the default replication settings: s2 compression, points every 10 s unless a section says otherwise); control plane,"
  echo "replicator and agent are the lifeboat binary, each its own process, talking over 127.0.0.1; the staging store"
  echo "is a local directory on the same disk as the volume's image, like the anchors' repositories and copies."
  echo "Page cache dropped before each timed step; each includes getting its data on disk."
  echo
  .cache/replbench report "$res"
} >bench/replication/RESULTS.md
cat bench/replication/RESULTS.md
