#!/usr/bin/env bash
# Makes the benchmark data sets in bench/out (once; reused while they exist):
#   system.img  a 4 GiB ext4 filesystem filled with ~3.5 GB of this machine's system
#               files (from /usr, in a stable order) and zeros after them: a realistic volume
#   random.img  2 GiB of random data: nothing to compress or deduplicate
# Needs root (loop mount) and e2fsprogs. Usage: bench/data.sh [system-GiB] [random-GiB]
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out
mkdir -p "$out"
sys_gib=${1:-4}
rnd_gib=${2:-2}
fill=$((sys_gib * 1024 * 1024 * 1024 * 85 / 100)) # bytes of files: 85% of the filesystem

if [ ! -s "$out/system.img" ] || [ "$(stat -c %s "$out/system.img")" != $((sys_gib << 30)) ]; then
  echo "==> building $out/system.img ($sys_gib GiB ext4, ~$((fill >> 20)) MiB of files from /usr)" >&2
  rm -f "$out/system.img"
  truncate -s "${sys_gib}G" "$out/system.img.tmp"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$out/system.img.tmp"
  mnt=$(mktemp -d)
  mount -o loop "$out/system.img.tmp" "$mnt"
  trap 'umount "$mnt" 2>/dev/null; rmdir "$mnt"' EXIT
  # A stable list of regular files under /usr, up to the byte budget.
  find /usr -xdev -type f -size +0 -printf '%s %p\n' 2>/dev/null | sort -k2 |
    awk -v max="$fill" -v summary="$out/system.txt" '!done { if (sum + $1 > max) { done = 1; next } sum += $1; n++; print substr($0, index($0, " ") + 1) }
      END { printf "%d files from /usr (%.2f GB)\n", n, sum / 1e9 > summary }' >"$out/files.txt"
  tar -C / -cf - --files-from=<(sed 's|^/||' "$out/files.txt") 2>/dev/null | tar -C "$mnt" -xf -
  sync
  df -h "$mnt" | tail -1 >&2
  umount "$mnt"
  rmdir "$mnt"
  trap - EXIT
  mv "$out/system.img.tmp" "$out/system.img"
fi

if [ ! -s "$out/random.img" ] || [ "$(stat -c %s "$out/random.img")" != $((rnd_gib << 30)) ]; then
  echo "==> building $out/random.img ($rnd_gib GiB of random data)" >&2
  # openssl is far faster than /dev/urandom; fall back to it if missing.
  if command -v openssl >/dev/null; then
    openssl enc -aes-256-ctr -pass pass:lifeboat-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null |
      head -c $((rnd_gib << 30)) >"$out/random.img.tmp" || true # openssl ends on SIGPIPE
  else
    head -c $((rnd_gib << 30)) /dev/urandom >"$out/random.img.tmp"
  fi
  [ "$(stat -c %s "$out/random.img.tmp")" = $((rnd_gib << 30)) ] || { echo "random data generation failed" >&2; exit 1; }
  mv "$out/random.img.tmp" "$out/random.img"
fi
ls -l "$out"/*.img >&2
