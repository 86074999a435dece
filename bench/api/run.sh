#!/usr/bin/env bash
# Times listing 10,000 source servers through the control plane's API, and the web
# console's source servers page over them, on SQLite and on PostgreSQL, and writes
# bench/api/RESULTS.md. Goals: under 200 ms (API), under 300 ms (console page).
# PostgreSQL: the server in $LIFEBOAT_TEST_POSTGRES (scripts/test sets it up as root);
# without it, only SQLite runs.
# Usage: bench/api/run.sh [runs]     (default 20 timed runs per case)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}
out=bench/api/RESULTS.md
go build -o .cache/apibench ./bench/api
{
  echo "# API listing benchmark"
  echo
  echo "Listing 10,000 source servers through the control plane's HTTPS API (goal: under 200 ms)."
  echo "\"API\" rows time the request until the last byte of the JSON is received; \"Go client\" rows add decoding"
  echo "the items with encoding/json (what the CLI pays); then the CLI command itself. \"console page\" rows time"
  echo "the web console's source servers page (goal: under 300 ms), signed in as a viewer, until the whole HTML"
  echo "page is received: the console asks the API in-process for one page of the filtered list and renders it."
  echo "Command: \`bench/api/run.sh $runs\` on $(date -u +%Y-%m-%d), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')."
  echo "Each case: 2 warm-up runs, then $runs timed runs; p50/p95/max of those. Rows are recorded through the"
  echo "database layer (two volumes, a consistency point, lag and throughput each); the client runs in the same"
  echo "process as the server, so they share the CPUs."
  echo
  .cache/apibench -runs "$runs"
  echo
  if [ -n "${LIFEBOAT_TEST_POSTGRES:-}" ]; then
    .cache/apibench -runs "$runs" -postgres "$LIFEBOAT_TEST_POSTGRES"
  else
    echo "PostgreSQL: not run (set LIFEBOAT_TEST_POSTGRES)."
  fi
} >"$out"
cat "$out"
