#!/usr/bin/env bash
# On-disk chunk index benchmark (issue 19; internal/store/chunkindex, not yet used by
# the store). Builds an index of N synthetic random chunk ids (default 100 million, or
# $LIFEBOAT_INDEX_N, or the first argument) with the default options (memtable of 1Mi
# entries, at most 8 segments, 12 filter bits per key) in one process; then, after
# dropping the page cache once, opens it in another process and reports the open time,
# its RSS and MemoryBytes, and the latency of 100,000 Gets of ids it holds and of ids it
# does not. The index directory is removed at the end.
# Needs root (to drop the page cache). Writes bench/index/RESULTS.md.
# Usage: bench/index/run.sh [N]      e.g. bench/index/run.sh 10000000
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
n=${1:-${LIFEBOAT_INDEX_N:-100000000}}
out=$PWD/bench/out/index
rm -rf "$out"
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
trap 'rm -rf "$out/idx"' EXIT
go test -c -o .cache/indexbench ./bench/index
load() { cut -d' ' -f1-3 /proc/loadavg; }
load0=$(load)
run() { # run BENCHMARK
  LIFEBOAT_INDEX_DIR=$out/idx LIFEBOAT_INDEX_N=$n LIFEBOAT_BENCH_RESULTS=$res \
    .cache/indexbench -test.run '^$' -test.bench "^$1\$" -test.benchtime 1x -test.timeout 0 >"$out/$1.log"
}
run BenchmarkIndexBuild
sync
echo 3 >/proc/sys/vm/drop_caches
run BenchmarkIndexLookup
load1=$(load)

b=$(jq -c 'select(.name == "build")' "$res")
l=$(jq -c 'select(.name == "lookup")' "$res")
f() { jq -r "$2" <<<"$1"; }
mib() { awk "BEGIN{printf \"%.1f\", $1 / 1048576}"; }
{
  echo "# Chunk index benchmark (issue 19)"
  echo
  echo "Command: \`bench/index/run.sh $n\` on $(date -u +%F), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)),"
  echo "$(free -g | awk '/Mem:/{print $2}') GiB RAM, $(go version | cut -d' ' -f3), local disk $(df -T "$out" | awk 'NR==2{print $2}')."
  echo "The machine is shared with other work: load average (1, 5, 15 min) $load0 before, $load1 after."
  echo "Index: internal/store/chunkindex with its default options (memtable of 1Mi entries, at most 8"
  echo "segments, 12 filter bits per key); $n random 32-byte ids, put in one process and closed (flush"
  echo "and merges included), then opened by another process after the page cache was dropped."
  echo
  echo "| what | value |"
  echo "|---|---:|"
  echo "| entries | $(f "$l" .entries) |"
  echo "| build (Put all, Close) | $(f "$b" '.seconds*10|round/10') s ($(f "$b" '.entries/.seconds|round') entries/s) |"
  echo "| peak RSS while building | $(mib "$(f "$b" .rssPeak)") MiB |"
  echo "| segments | $(f "$l" .segments) |"
  echo "| disk bytes | $(f "$b" .diskBytes) ($(f "$b" '.diskBytes/.entries*10|round/10') B/entry) |"
  echo "| open (cold page cache) | $(f "$l" '.openSeconds*1000|round') ms |"
  echo "| RSS before open / after open / after the Gets | $(mib "$(f "$l" .rssBeforeOpen)") / $(mib "$(f "$l" .rssAfterOpen)") / $(mib "$(f "$l" .rssAfterGets)") MiB |"
  echo "| MemoryBytes | $(f "$l" .memoryBytes) ($(f "$l" '.memoryBytes/.entries*100|round/100') B/entry) |"
  echo "| Get hit p50 / p99 / max ($(f "$l" .lookups) random ids held) | $(f "$l" '.hitP50us|round') / $(f "$l" '.hitP99us|round') / $(f "$l" '.hitMaxus|round') µs |"
  echo "| Get miss p50 / p99 / max ($(f "$l" .lookups) random ids not held) | $(f "$l" '.missP50us*10|round/10') / $(f "$l" '.missP99us*10|round/10') / $(f "$l" '.missMaxus|round') µs |"
  echo
  echo "The page cache was dropped once, before the open: early hits read their page from the"
  echo "disk, later ones may find it cached (as they would in a running replicator). Raw results:"
  echo "bench/out/index/results.jsonl."
  echo
  echo "The peak RSS while building is the memtable (a Go map of up to 1Mi entries), the sorted"
  echo "copy of it a flush writes, the next memtable filling meanwhile, and the Go heap's headroom"
  echo "(GOGC=100); the segments' fences and filters are 1.9 B/entry of it. A smaller memtable"
  echo "(Options.MemtableEntries) or a sorted-array memtable lowers it; merges stream and add little."
} >bench/index/RESULTS.md
cat bench/index/RESULTS.md
