#!/usr/bin/env bash
# The chunk index at scale in the store (issue 19): a synthetic store whose index names
# N chunks (default 100 million; index objects only, no data), opened as the replicator
# opens it (chunk index on disk): the first open builds the local index, a second one
# resumes it; then the 4 GiB benchmark volume (bench/data.sh) is ingested into it, and
# into a new empty store with the index in RAM as before issue 19 (the baseline).
# Each step runs in a process of its own with the replicator's soft memory limit
# (224 MiB); RSS is that process's. The page cache is dropped before each step.
# Needs root. Appends to bench/index/RESULTS.md. Usage: bench/index/scale.sh [N]
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
rm -rf "$out/idx" "$out/empty" "$out/empty.key"
drop
run BenchmarkScaleOpen "open: build the local index"
drop
run BenchmarkScaleOpen "open: resume it"
drop
LIFEBOAT_SCALE_EMPTY=1 run BenchmarkScaleIngest
rm -rf "$out/empty" "$out/empty.key"
drop
run BenchmarkScaleIngest
cat "$res"
