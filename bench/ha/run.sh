#!/usr/bin/env bash
# Control-plane high availability (issue 19): two `lifeboat server` processes on
# PostgreSQL behind HAProxy; the coordinator, holding a drill job and a scheduled drill,
# is killed with SIGKILL. The measurement is test/e2e's TestTwoControlPlanesOnPostgresBehindHAProxy
# (which asserts that both complete once), run REPS times (default 3): how long after
# the kill the survivor coordinates (the test's coordinator lease is 4 s; the default is
# 20 s), and how long the whole test took. Needs root, PostgreSQL and HAProxy (as the
# e2e suite). Writes bench/ha/RESULTS.md. Usage: [REPS=n] bench/ha/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
reps=${REPS:-3}
out=bench/out/ha
mkdir -p "$out"
pg_ctlcluster 15 main start 2>/dev/null || true
export LIFEBOAT_TEST_POSTGRES=${LIFEBOAT_TEST_POSTGRES:-postgres://lifeboat:lifeboat@127.0.0.1:5432/lifeboat_test?sslmode=disable}
go test -count="$reps" -timeout 30m -v -run '^TestTwoControlPlanesOnPostgresBehindHAProxy$' ./test/e2e/ >"$out/test.log" 2>&1 ||
  { tail -50 "$out/test.log"; exit 1; }
takes=$(sed -n 's/.*the second control plane coordinates \([0-9.]*\)s after the first was killed.*/\1/p' "$out/test.log")
runs=$(sed -n 's/^--- PASS: TestTwoControlPlanesOnPostgresBehindHAProxy (\([0-9.]*\)s)$/\1/p' "$out/test.log")
[ "$(wc -l <<<"$takes")" -eq "$reps" ] || { echo "expected $reps takeover times in $out/test.log" >&2; exit 1; }
{
  echo "# Control-plane high availability (issue 19)"
  echo
  echo "Command: \`REPS=$reps bench/ha/run.sh\` on $(date -u +%F), $(nproc) CPUs, commit $(git rev-parse --short HEAD)."
  echo "Each run: two \`lifeboat server\` processes on PostgreSQL behind HAProxy (TCP, round robin), an agent and a"
  echo "replicator through HAProxy; the coordinator is killed (SIGKILL) while it holds a drill job and a scheduled drill"
  echo "at their post-launch gate. Every run passed: the survivor took over, both completed exactly once (one launch job"
  echo "each, one plan run, one \`plan.run\` in the audit), and a new snapshot was taken through HAProxy afterwards."
  echo
  echo "| run | survivor coordinates after the kill (lease 4 s) | whole test |"
  echo "|---:|---:|---:|"
  paste <(seq "$reps") <(echo "$takes") <(echo "$runs") | awk -F'\t' '{printf "| %s | %s s | %s s |\n", $1, $2, $3}'
} >bench/ha/RESULTS.md
cat bench/ha/RESULTS.md
