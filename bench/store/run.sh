#!/usr/bin/env bash
# Staging store benchmark (issue 3), with its anchors on the same data in the
# same run: a 4 GiB ext4 volume of system files and 2 GiB of random data (bench/data.sh)
#   - ingest of the full volume into a new local repository vs `restic backup --stdin`
#     into a new local restic repository, and vs `cp` of the image;
#   - the cost of a PIT after 1% of the blocks changed;
#   - restore of a PIT to a sparse raw file vs `restic restore` and `cp`;
#   - stored size vs restic's;
#   - garbage collection during an ingest, then verify --read-data;
#   - block size and codec choices (64 KiB/256 KiB, s2/zstd) on the system volume.
# The page cache is dropped before every timed step, and every step ends with its data
# on disk (the store fsyncs; anchors are followed by sync inside the timing).
# Needs root. Writes bench/store/RESULTS.md. Usage: bench/store/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
bench/data.sh
go build -o .cache/storebench ./bench/store
out=bench/out/store
rm -rf "$out"
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"
export RESTIC_PASSWORD=lifeboat-bench
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# anchor NAME DATA BYTES STORED_PATH CMD...: times CMD followed by sync; one JSON line.
anchor() {
  local name=$1 data=$2 bytes=$3 stored=$4
  shift 4
  drop
  local t
  t=$( { TIMEFORMAT='%R %U %S'; time { "$@" >/dev/null 2>&1; sync; }; } 2>&1 | tail -1)
  read -r real user sys <<<"$t"
  local size=0
  [ -n "$stored" ] && size=$(du -sb "$stored" | cut -f1)
  printf '{"name":"%s","data":"%s","seconds":%s,"cpuSeconds":%s,"bytes":%s,"stored":%s}\n' \
    "$name" "$data" "$real" "$(awk "BEGIN{print $user + $sys}")" "$bytes" "$size" | tee -a "$res"
}

for img in system random; do
  f=bench/out/$img.img
  bytes=$(stat -c %s "$f")
  data="$img.img bs=64K codec=s2"
  anchor "cp" "$data" "$bytes" "$out/copy.img" cp "$f" "$out/copy.img"
  rm -f "$out/copy.img"
  rm -rf "$out/restic"
  restic -q -r "$out/restic" init >/dev/null
  anchor "restic backup --stdin" "$data" "$bytes" "$out/restic" \
    sh -c "restic -q -r '$out/restic' backup --stdin --stdin-filename vol.img < '$f'"
  anchor "restic restore" "$data" "$bytes" "" restic -q -r "$out/restic" restore latest --target "$out/restic-restore"
  cmp -s "$f" "$out/restic-restore/vol.img" || { echo "restic restore differs from $f" >&2; exit 1; }
  rm -rf "$out/restic" "$out/restic-restore"
  drop
  other=bench/out/random.img
  [ "$img" = random ] && other=bench/out/system.img
  .cache/storebench run -image "$f" -dir "$out/lb" -label "$img.img" -gc-image "$other" | tee -a "$res"
  rm -rf "$out/lb"
done

# Choices: block size and codec, ingest and restore of the system volume.
for choice in "65536 zstd" "262144 s2" "262144 zstd" "65536 none"; do
  read -r bs codec <<<"$choice"
  drop
  .cache/storebench run -image bench/out/system.img -dir "$out/lb" -label "system.img" \
    -block-size "$bs" -codec "$codec" -phases ingest,change,restore | tee -a "$res"
  rm -rf "$out/lb"
done

{
  echo "# Staging store benchmark"
  echo
  echo "Command: \`bench/store/run.sh\` on $(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
  echo "$(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(go version | cut -d' ' -f3), restic $(restic version | cut -d' ' -f2)."
  echo "Data: system.img is a 4 GiB ext4 filesystem holding $(cat bench/out/system.txt) and zeros;"
  echo "random.img is 2 GiB of random bytes."
  echo "Page cache dropped before each step; each step includes getting its output on disk (fsync or sync)."
  echo "Lifeboat rows use the store's API in one process (hashing, compression, encryption, packs, fsync),"
  echo "without the network; the end-to-end figures through agent, TLS and replicator are in bench/replication."
  echo
  .cache/storebench report "$res"
} >bench/store/RESULTS.md
cat bench/store/RESULTS.md
