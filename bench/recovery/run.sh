#!/usr/bin/env bash
# Recovery benchmark (issue 6: "Restore" and "RTO"), with its anchors on the
# same data in the same run:
#   - materialize a PIT of the 4 GiB system volume (bench/data.sh) from a local staging
#     store into a sparse raw image, against `restic restore` of the same image from a
#     local restic repository and `qemu-img convert` of the image to a raw file;
#   - the time from asking for a recovery to the recovered QEMU VM (TCG) answering HTTP
#     through its forwarded port, for 1, 4 and 16 GiB bootable disks filled with the
#     system data (60%, at most its 4 GiB), materialized and instant (issue 18: booted
#     from the staging store over NBD, copied afterwards); LIFEBOAT_BENCH_RECOVER picks
#     the cases (default 1,4,16,1i,16i).
# The page cache is dropped before every timed step; every step includes getting its
# output on disk (Lifeboat fsyncs; the anchors are followed by sync inside the timing).
# Needs root. Writes bench/recovery/RESULTS.md. Usage: bench/recovery/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
bench/data.sh
out=$PWD/bench/out/recovery
rm -rf "$out"
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
img=$PWD/bench/out/system.img
bytes=$(stat -c %s "$img")
export RESTIC_PASSWORD=lifeboat-bench
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# anchor NAME STORED_PATH CMD...: times CMD followed by sync; one JSON line.
anchor() {
  local name=$1 stored=$2
  shift 2
  drop
  local t
  t=$( { TIMEFORMAT='%R'; time { "$@" >/dev/null 2>&1; sync; }; } 2>&1 | tail -1)
  local size=0
  [ -e "$stored" ] && size=$(du -sb "$stored" | cut -f1)
  printf '{"name":"%s","data":"system.img","seconds":%s,"bytes":%s,"stored":%s}\n' "$name" "$t" "$bytes" "$size" | tee -a "$res"
}

echo "load before: $(load)" >"$out/load.txt"
restic -q -r "$out/restic" init >/dev/null
restic -q -r "$out/restic" backup --stdin --stdin-filename system.img <"$img" >/dev/null
anchor "restic restore" "$out/restic-restore/system.img" restic -q -r "$out/restic" restore latest --target "$out/restic-restore"
cmp -s "$img" "$out/restic-restore/system.img" || { echo "restic restore differs from $img" >&2; exit 1; }
rm -rf "$out/restic" "$out/restic-restore"
anchor "qemu-img convert" "$out/convert.raw" qemu-img convert -f raw -O raw "$img" "$out/convert.raw"
cmp -s "$img" "$out/convert.raw" || { echo "qemu-img convert differs from $img" >&2; exit 1; }
rm -f "$out/convert.raw"

LIFEBOAT_BENCH_IMAGE=$img LIFEBOAT_BENCH_OUT=$out LIFEBOAT_BENCH_RESULTS=$res \
  go test -count=1 -timeout 2h -run '^$' -bench 'BenchmarkMaterialize|BenchmarkRecoverToHTTP' -benchtime 1x ./bench/recovery/ >&2
echo "load after: $(load)" >>"$out/load.txt"

{
  echo "# Recovery benchmark"
  echo
  echo "Command: \`bench/recovery/run.sh\` on $(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
  echo "$(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(go version | cut -d' ' -f3), restic $(restic version | cut -d' ' -f2), $(qemu-img --version | head -1)."
  echo "The machine is shared with other work: load average (1, 5, 15 min) $(head -1 "$out/load.txt" | cut -d' ' -f3-) before, $(tail -1 "$out/load.txt" | cut -d' ' -f3-) after."
  files=$(cat bench/out/system.txt 2>/dev/null || echo "$(wc -l <bench/out/files.txt) files from /usr")
  echo "Data: system.img is a 4 GiB ext4 filesystem holding $files and zeros (bench/data.sh)."
  echo "Page cache dropped before each timed step; each includes getting its output on disk."
  echo
  go run ./bench/recovery/report "$res"
  echo
  echo "Notes: Lifeboat's materialize reads the PIT from a local staging store (packs of compressed,"
  echo "encrypted chunks) and writes a sparse image with fsync; restic restores from a local restic"
  echo "repository of the same image (restic restore writes every byte, zeros too); qemu-img convert"
  echo "copies the plain image (no store, no decryption): it is the disk's own speed. The job's RTO runs"
  echo "from the job's creation to the end of its http-check, which polls every 0.5 s, so it can exceed"
  echo "the time measured from outside by that much. An instant launch makes qcow2 overlays over the PIT"
  echo "served from the staging store over NBD instead of materializing, boots from them, and copies the"
  echo "disks afterwards (QMP block-stream): the breakdown says how long after boot they were all local."
} >bench/recovery/RESULTS.md
cat bench/recovery/RESULTS.md
