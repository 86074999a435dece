#!/usr/bin/env bash
# Recovery plan benchmark (issue 16): the lab plan's RTO — from the start of
# `lifeboat plan failover lab --wait` until the site answers through its DNS name
# (www.lab.test resolved through a real BIND 9, both pages served by the DR site's
# HAProxy) — against the same recovery done by hand (lifeboat recover of both servers,
# their pages polled, HAProxy's backend set through its runtime API, the record updated
# by RFC 2136), rounds alternating on the same two QEMU (TCG) web servers.
# Needs root, qemu-system-x86, haproxy, bind9 (scripts/test installs them).
# Usage: bench/plan/run.sh [rounds]   (default 3; about 3 minutes of set-up, then ~3
#   minutes a round). Writes bench/plan/RESULTS.md (the section of BENCHMARKS.md); OUT=dir
#   works there instead of bench/out/plan.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
out=${OUT:-bench/out/plan}
mkdir -p "$out"
ulimit -l unlimited 2>/dev/null || true
load() { cut -d' ' -f1-3 /proc/loadavg; }
before=$(load)
LIFEBOAT_BENCH_PLAN_OUT="$PWD/$out/table.md" LIFEBOAT_BENCH_ROUNDS="${1:-3}" \
  go test -count=1 -timeout 90m -v -run 'TestLabPlanRTOBench$' ./test/e2e/ | tee "$out/test.log" | grep -E '^\s+plan_bench_test.go|^(ok|FAIL|---)'
{
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) CPUs; load average before: $before, after: $(load)."
  echo "Command: bench/plan/run.sh ${1:-3}"
  echo
  cat "$out/table.md"
} >"$out/RESULTS.md"
cat "$out/RESULTS.md"
[ -n "${OUT:-}" ] || cp "$out/RESULTS.md" bench/plan/RESULTS.md
