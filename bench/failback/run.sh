#!/usr/bin/env bash
# Failback benchmark (issue 14): the whole way home with the real lifeboat binary as
# separate processes (control plane, replicator, agents, as test/e2e runs them) on loop
# devices with direct I/O, following TestFailbackCycleOnDevices, for a 1 GiB and a 4 GiB
# disk (replbench failback, bench/replication/failback.go):
#   - source disk A: ext4 filled to 50% with files of bench/out/system.img (bench/data.sh),
#     protected by its agent, a PIT taken, the agent stopped (the disaster);
#   - the PIT recovered onto disk B (image provider); 5% of the disk written on B in new
#     random files;
#   - reverse replication: bytes sent against the disk and against what changed, time to
#     CONTINUOUS;
#   - planned failback into A (`lifeboat failback launch RI --into A --no-start --wait`)
#     against a full copy of B onto A (`dd`, and `cp` of B's image file);
#   - data lost: every file written on B, and a marker written right before the failback,
#     read back from A; re-protection: what A's agent sends afterwards.
# The page cache is dropped before every timed step and each first waits (up to 2 min)
# until the CPUs were less than 25% busy for 3 s. Needs root. Writes bench/failback/RESULTS.md.
# Usage: [REPS=n] bench/failback/run.sh [sizes…]   (default: 3 runs of 1G then 4G, interleaved)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1G 4G)
bench/data.sh
mkdir -p .cache
CGO_ENABLED=0 go build -o .cache/lifeboat-failback ./cmd/lifeboat
go build -o .cache/replbench-failback ./bench/replication
out=bench/out/failback
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
load() { cut -d' ' -f1-3 /proc/loadavg; }
before=$(load)
started=$(date -u +%Y-%m-%dT%H:%MZ)
reps=${REPS:-3}
cmds=()
for rep in $(seq 1 "$reps"); do
  for s in "${sizes[@]}"; do
    cmd=(.cache/replbench-failback failback -lifeboat .cache/lifeboat-failback -size "$s" -rep "$rep" -results "$res" -out "$out")
    cmds+=("${cmd[*]}")
    "${cmd[@]}"
  done
done
after=$(load)
ended=$(date -u +%Y-%m-%dT%H:%MZ)

{
  echo "# Failback benchmark (issue 14)"
  echo
  echo "Command: \`REPS=$reps bench/failback/run.sh${*:+ $*}\`, started $started, ended $ended; it ran:"
  echo
  for c in "${cmds[@]}"; do echo "    $c"; done
  echo
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM,"
  echo "kernel $(uname -r), $(go version | cut -d' ' -f3), lifeboat built with CGO_ENABLED=0. The machine is shared with other work"
  echo "(another engineer's tests ran at the same time): load average (1, 5, 15 min) $before before, $after after; each"
  echo "timed step's own starting load is below and in bench/out/failback/results.jsonl. $reps runs per size, the sizes"
  echo "interleaved; the goals table gives the median and range of the runs. Expect noise, above all in the disk's speed."
  echo
  echo "Setup, per disk size, as TestFailbackCycleOnDevices (test/e2e/failback_test.go): control plane, replicator and"
  echo "agents are the lifeboat binary, each its own process, over TLS on 127.0.0.1, default replication settings"
  echo "(64 KiB blocks, s2, points every 10 s), staging store a local directory on the same disk as the loop devices'"
  echo "image files (\`losetup --direct-io=on\`). Source disk A: a new ext4 filled to 50% with the first files (path order)"
  echo "of system.img ($(cat bench/out/system.txt 2>/dev/null || echo 'files of /usr'); bench/data.sh) and its agent's"
  echo "configuration at /etc/lifeboat/agent.yaml; replicated, a PIT taken, the agent stopped. The PIT recovered onto"
  echo "disk B of the same size (image provider); the reversed agent's files copied out of B with debugfs; B mounted and"
  echo "5% of the disk written in new files of random bytes (1–8 MiB each), then sync; B is then read whole (untimed) to"
  echo "count its 64 KiB blocks whose XXH3 differs from the seed hash table (the PIT's): the least reverse replication"
  echo "must send (counted again once reverse replication is CONTINUOUS, and on A when the failback starts: blocks A"
  echo "changed itself after the PIT). Reverse replication is timed from"
  echo "\`lifeboat recovery-instances reverse-replication\` (the instance's agent already running, asking every 1 s) to the"
  echo "reversed server's CONTINUOUS. Then A is unmounted and registered (\`instances add --disk A --tag"
  echo "AWSDRS=AllowLaunchingIntoThisInstance\`), a marker file is written on B and synced, and \`failback launch --no-start"
  echo "--wait\` is timed (the CLI polls the job every 1 s, and the job looks for the final PIT every 1 s); the job's own"
  echo "time (created → ended) is given too. The anchor is the naive failback: B copied whole onto A. The"
  echo "page cache is dropped before each timed step."
  echo
  .cache/replbench-failback failback report "$res"
} >bench/failback/RESULTS.md
cat bench/failback/RESULTS.md
