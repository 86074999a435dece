#!/usr/bin/env bash
# The chunk index at scale in the store (issue 19): a synthetic store whose index names
# N chunks (default 100 million; index objects only, no data), opened as the replicator
# opens it (chunk index on disk): the first open builds the local index, a second one
# resumes it; then the 4 GiB benchmark volume (bench/data.sh) is ingested into it, and
# into a new empty store with the index in RAM as before issue 19 (the baseline).
# Each step runs in a process of its own with the replicator's soft memory limit
# (224 MiB); RSS is that process's. The page cache is dropped before each step.
# KEEP_INDEX=1 keeps a local index built by an earlier run (the build takes minutes);
# REPS=n ingests n times into each store, alternating (default 2).
# Needs root. Writes bench/index/SCALE.md. Usage: bench/index/scale.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
n=${1:-100000000}
bench/data.sh
out=$PWD/bench/out/scale
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
go test -c -o .cache/storescale ./internal/store
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
run() { # run BENCHMARK [NAME]
  LIFEBOAT_SCALE_DIR=$out LIFEBOAT_SCALE_N=$n LIFEBOAT_BENCH_RESULTS=$res LIFEBOAT_SCALE_NAME=${2:-} \
    LIFEBOAT_SCALE_IMAGE=$PWD/bench/out/system.img \
    .cache/storescale -test.run '^$' -test.bench "^$1\$" -test.benchtime 1x -test.timeout 0 >"$out/$1.log" 2>&1 ||
    { cat "$out/$1.log"; exit 1; }
}
# The synthetic store is kept between runs of the same N (it takes minutes to write).
if [ "$(cat "$out/store.n" 2>/dev/null)" != "$n" ]; then
  rm -rf "$out/store" "$out/store.key" "$out/store.n"
  run BenchmarkScaleSynthesize
  echo "$n" >"$out/store.n"
fi
load() { cut -d' ' -f1-3 /proc/loadavg; }
load0=$(load)
rm -rf "$out/empty" "$out/empty.key"
if [ "${KEEP_INDEX:-}" != 1 ] || ! ls "$out"/idx/*/view.json >/dev/null 2>&1; then
  rm -rf "$out/idx"
  drop
  run BenchmarkScaleOpen "open: build the local index"
  jq -c 'select(.name == "open: build the local index")' "$res" >"$out/build.json"
fi
drop
run BenchmarkScaleOpen "open: resume it"
for _ in $(seq "${REPS:-2}"); do
  drop
  LIFEBOAT_SCALE_EMPTY=1 run BenchmarkScaleIngest
  rm -rf "$out/empty" "$out/empty.key"
  drop
  run BenchmarkScaleIngest
done
load1=$(load)

sel() { jq -s "$1" "$res"; }
mib() { awk "BEGIN{printf \"%.0f\", $1 / 1048576}"; }
build=$(cat "$out/build.json" 2>/dev/null || true) # kept with the index it built
resume=$(jq -c 'select(.name == "open: resume it")' "$res" | tail -1)
f() { jq -r "$2" <<<"$1"; }
{
  echo "# The chunk index at scale in the store (issue 19)"
  echo
  echo "Command: \`bench/index/scale.sh $n\` (REPS=${REPS:-2}) on $(date -u +%F), $(nproc) CPUs, $(go version | cut -d' ' -f3)."
  echo "Load average (1, 5, 15 min): $load0 before, $load1 after. Synthetic store: $n chunk ids in index objects of"
  echo "50,000 (512 per pack), no data. Each step is a process of its own with the replicator's soft memory limit"
  echo "(224 MiB); the page cache is dropped before each."
  echo
  echo "| step | time | RSS after | RSS peak |"
  echo "|---|---:|---:|---:|"
  if [ -n "$build" ]; then
    echo "| first open: local index built from the index objects | $(f "$build" '.openSeconds|round') s | $(mib "$(f "$build" .rssAfterOpen)") MiB | $(mib "$(f "$build" .rssPeak)") MiB |"
  fi
  echo "| open again: local index resumed | $(f "$resume" '.openSeconds*100|round/100') s | $(mib "$(f "$resume" .rssAfterOpen)") MiB | $(mib "$(f "$resume" .rssPeak)") MiB |"
  echo
  echo "Local index: $(f "$resume" .segments) segments, $(f "$resume" '.indexDiskBytes/1e9*100|round/100') GB on disk, $(f "$resume" .indexMemoryBytes) bytes of RAM ($(f "$resume" '.indexMemoryBytes/.entries*100|round/100') B per chunk)."
  echo
  echo "Ingest of bench/out/system.img (4 GiB), in batches of 256 blocks, sealed as a PIT:"
  echo
  echo "| into | MiB/s | RSS max while ingesting | lookup hit p50 / p99 | lookup miss p50 / p99 |"
  echo "|---|---:|---:|---:|---:|"
  jq -r 'select(.name | startswith("ingest")) | [(if .name == "ingest empty" then "empty store, index in RAM" else "\(.entries) chunks, index on disk" end),
      (.mibPerSecond*10|round/10), (.rssMaxIngest/1048576|round), (.hitP50us*100|round/100), (.hitP99us*100|round/100),
      (.missP50us*100|round/100), (.missP99us*100|round/100)] | "| \(.[0]) | \(.[1]) | \(.[2]) MiB | \(.[3]) / \(.[4]) µs | \(.[5]) / \(.[6]) µs |"' "$res"
  echo
  e=$(sel '[.[] | select(.name == "ingest empty") | .mibPerSecond] | add / length')
  d=$(sel '[.[] | select(.name == "ingest") | .mibPerSecond] | add / length')
  echo "Mean ingest: $(awk "BEGIN{printf \"%.1f\", $d}") MiB/s into the large store against $(awk "BEGIN{printf \"%.1f\", $e}") MiB/s into the empty one: $(awk "BEGIN{printf \"%.2f\", $d / $e}")×."
  echo "Lookups: 100,000 random ids the store holds and 100,000 it does not, after the ingest (dedup checks, as the"
  echo "replicator makes them); in the large store a hit is a cold 4 KiB read of the index."
} >bench/index/SCALE.md
cat bench/index/SCALE.md
