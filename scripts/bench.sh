#!/usr/bin/env bash
# Benchmarks `etcdops datadir copy` + `datadir verify` against the manual ways of moving an
# etcd data dir, on a real etcd 3.6 data dir of at least 450 MB:
#   ours   etcdops datadir copy --sums F SRC DST && etcdops datadir verify --verify-from-cache --sums F SRC DST
#   plain  etcdops datadir copy SRC DST && etcdops datadir verify --verify-from-cache SRC DST (reads both trees)
#   device etcdops datadir copy --sums F SRC DST && etcdops datadir verify --sums F SRC DST
#          (the default: the target's pages are dropped and it is read back from the disk)
#   cp     cp -a SRC DST && sync && b3sum of SRC's files && (cd DST && b3sum --check)
#   rsync  rsync -a SRC/ DST/ && diff -r SRC DST && sync        (the manual runbook)
# Each line runs RUNS times (default 3), in rotating order, from a warm page cache, with
# DST removed and the disk synced (untimed) before each run. Prints the medians, the ratios
# ours/cp and ours/rsync, and the peak RSS of copy and verify (from /usr/bin/time -v).
# Then, on one copy, the read-back alone: verify from the page cache, verify from the device,
# and `dd iflag=direct` of the same files (the device's floor: no cache, no hashing).
#
# Usage: scripts/bench.sh [--keep]     BENCH_DIR=/path (default: a temp dir under /var/tmp,
#        on disk rather than on a tmpfs /tmp), BENCH_KEYS (200000), BENCH_VALUE (1024), RUNS.
# The data set is kept in BENCH_DIR/src and reused when BENCH_DIR is given.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
keys=${BENCH_KEYS:-200000}
value_size=${BENCH_VALUE:-1024}
runs=${RUNS:-3}
# shellcheck source=scripts/etcd-versions.sh
. "$root/scripts/etcd-versions.sh"
etcdv=$(etcd_dir "$ETCD_DEFAULT")
keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/install-deps.sh >/dev/null
if [ ! -x /usr/bin/time ]; then
  echo "bench: apt-get install time (for peak RSS)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/release/etcdops"

if [ -n "${BENCH_DIR:-}" ]; then
  work=$BENCH_DIR
  mkdir -p "$work"
else
  mkdir -p /var/tmp
  work=$(mktemp -d /var/tmp/etcdops-bench.XXXXXX)
fi
src="$work/src"
dst="$work/dst"
etcd_pid=""
cleanup() {
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
  rm -rf "$dst" "$work/txn" "$work/sums.b3"
  if [ -z "${BENCH_DIR:-}" ] && ! $keep; then rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the data set: keys written to a real etcd 3.6 in parallel transactions, then stopped.
if [ ! -d "$src" ]; then
  gen="$work/gen"
  rm -rf "$gen"
  cport=$(free_port); pport=$(free_port)
  url="http://127.0.0.1:$cport"
  "$etcdv/etcd" --name bench --data-dir "$gen" \
    --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" \
    --quota-backend-bytes=$((8 * 1024 * 1024 * 1024)) --max-txn-ops=1000 \
    --log-level=error >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 100); do
    ETCDCTL_API=3 "$etcdv/etcdctl" --endpoints "$url" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "bench: writing $keys keys of $value_size bytes to etcd 3.6 ($url)" >&2
  mkdir -p "$work/txn"
  # 1000 puts per transaction (~1 MiB, under --max-request-bytes), one file per transaction.
  awk -v n="$keys" -v size="$value_size" -v dir="$work/txn" 'BEGIN {
    srand(42)
    # Values are slices of a random pool: incompressible like real objects, cheap to make.
    while (length(pool) < 65536) pool = pool sprintf("%08x", int(rand() * 4294967296))
    for (i = 0; i < n; i++) {
      if (i % 1000 == 0) { if (f) { print "" > f; print "" > f; close(f) }; f = sprintf("%s/%06d", dir, i / 1000); print "" > f }
      printf "put bench/key/%08d %s\n", i, substr(pool, int(rand() * (65536 - size)) + 1, size) > f
    }
    print "" > f; print "" > f; close(f)
  }'
  # shellcheck disable=SC2016 # $1..$3 are the inner shell's arguments, expanded there
  find "$work/txn" -type f -print0 | sort -z |
    xargs -0 -P 4 -I{} sh -c 'ETCDCTL_API=3 "$1" --endpoints "$2" txn <"$3" >/dev/null' _ "$etcdv/etcdctl" "$url" {}
  count=$(ETCDCTL_API=3 "$etcdv/etcdctl" --endpoints "$url" get bench/ --prefix --count-only -w fields |
    sed -n 's/^"Count" : //p')
  [ "$count" = "$keys" ] || { echo "bench: wrote $count keys, expected $keys" >&2; exit 1; }
  kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true; etcd_pid=""
  rm -rf "$work/txn"
  mv "$gen" "$src"  # only a complete data set is reused
fi
size=$(du -sb "$src" | cut -f1)
if [ "$size" -lt 450000000 ]; then
  echo "bench: data dir is only $size bytes (< 450 MB): raise BENCH_KEYS" >&2
  exit 1
fi
files=$(find "$src" -type f | wc -l)

now_ms() { local t=$EPOCHREALTIME; echo $(( ${t%.*} * 1000 + 10#${t#*.} / 1000 )); }
reset_dst() { rm -rf "$dst" "$work/sums.b3"; sync; }
# Peak RSS (KiB) of one command, through /usr/bin/time -v.
rss_file="$work/rss"
timed_rss() { /usr/bin/time -v -o "$rss_file" "$@"; sed -n 's/.*Maximum resident set size (kbytes): //p' "$rss_file"; }

ours_copy_rss=0; ours_verify_rss=0; b3sum_rss=0
# The migration's way: the copy keeps the source sums it computed while reading, and verify
# then reads only the target (plus any source file changed since, by ctime).
line_ours() {
  local r
  r=$(timed_rss "$bin" -o json datadir copy --sums "$work/sums.b3" "$src" "$dst" | tail -n1)
  (( r > ours_copy_rss )) && ours_copy_rss=$r
  r=$(timed_rss "$bin" -o json datadir verify --verify-from-cache --sums "$work/sums.b3" "$src" "$dst" | tail -n1)
  (( r > ours_verify_rss )) && ours_verify_rss=$r
  return 0
}
# The default verify: the target read back from its device.
line_device() {
  local r
  r=$(timed_rss "$bin" -o json datadir copy --sums "$work/sums.b3" "$src" "$dst" | tail -n1)
  (( r > ours_copy_rss )) && ours_copy_rss=$r
  r=$(timed_rss "$bin" -o json datadir verify --sums "$work/sums.b3" "$src" "$dst" | tail -n1)
  (( r > ours_verify_rss )) && ours_verify_rss=$r
  return 0
}
# Without the sums file: verify reads both trees.
line_ours_plain() {
  local r
  r=$(timed_rss "$bin" -o json datadir copy "$src" "$dst" | tail -n1)
  (( r > ours_copy_rss )) && ours_copy_rss=$r
  r=$(timed_rss "$bin" -o json datadir verify --verify-from-cache "$src" "$dst" | tail -n1)
  (( r > ours_verify_rss )) && ours_verify_rss=$r
  return 0
}
line_cp() {
  cp -a "$src" "$dst"
  sync
  local r
  r=$(cd "$src" && /usr/bin/time -v -o "$rss_file" sh -c 'find . -type f -print0 | sort -z | xargs -0 b3sum' >"$work/sums.b3" &&
    sed -n 's/.*Maximum resident set size (kbytes): //p' "$rss_file")
  (( r > b3sum_rss )) && b3sum_rss=$r
  (cd "$dst" && b3sum --check --quiet "$work/sums.b3")
}
line_rsync() {
  rsync -a "$src/" "$dst/"
  diff -r "$src" "$dst" >/dev/null
  sync
}

declare -A times=([ours]="" [ours_plain]="" [device]="" [cp]="" [rsync]="")
order=(ours ours_plain device cp rsync)
echo "bench: $files files, $size bytes in $src; $runs runs per line" >&2
load_before=$(cut -d' ' -f1 /proc/loadavg)
cat "$src"/member/snap/db >/dev/null  # warm the cache once for everyone
for run in $(seq "$runs"); do
  for line in "${order[@]}"; do
    reset_dst
    t0=$(now_ms)
    "line_$line"
    t1=$(now_ms)
    times[$line]="${times[$line]} $((t1 - t0))"
    echo "bench: run $run $line $((t1 - t0)) ms" >&2
  done
  order=("${order[@]:1}" "${order[0]}")
done
reset_dst

# The read-back alone, on one copy: from the cache, from the device, and dd's floor.
"$bin" -o json datadir copy --sums "$work/sums.b3" "$src" "$dst" >/dev/null
rb_cache=""; rb_device=""; rb_dd=""
for run in $(seq "$runs"); do
  find "$dst" -type f -exec cat {} + >/dev/null
  t0=$(now_ms); "$bin" -o json datadir verify --verify-from-cache --sums "$work/sums.b3" "$src" "$dst" >/dev/null; t1=$(now_ms)
  rb_cache="$rb_cache $((t1 - t0))"
  from=$("$bin" -o json datadir verify --sums "$work/sums.b3" "$src" "$dst" | sed -n 's/.*"verified_from": "\(.*\)".*/\1/p')
  find "$dst" -type f -exec cat {} + >/dev/null
  t0=$(now_ms); "$bin" -o json datadir verify --sums "$work/sums.b3" "$src" "$dst" >/dev/null; t1=$(now_ms)
  rb_device="$rb_device $((t1 - t0))"
  t0=$(now_ms)
  find "$dst" -type f -print0 | xargs -0 -I{} dd if={} of=/dev/null bs=1M iflag=direct status=none
  t1=$(now_ms)
  rb_dd="$rb_dd $((t1 - t0))"
done
reset_dst

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_ours=$(echo "${times[ours]}" | median)
m_plain=$(echo "${times[ours_plain]}" | median)
m_device=$(echo "${times[device]}" | median)
m_rb_cache=$(echo "$rb_cache" | median)
m_rb_device=$(echo "$rb_device" | median)
m_rb_dd=$(echo "$rb_dd" | median)
m_cp=$(echo "${times[cp]}" | median)
m_rsync=$(echo "${times[rsync]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

cat <<EOF
data: real etcd 3.6 data dir, $keys keys x $value_size B, $files files, $size bytes ($(numfmt --to=iec "$size")); $runs runs each, warm page cache, median wall time
machine: $(nproc) cores, load average $load_before before and $(cut -d' ' -f1 /proc/loadavg) after (other work on the machine slows every line)
| line | runs (ms) | median (ms) | ours / line | ours without --sums / line |
|---|---|---|---|---|
| etcdops datadir copy --sums F + datadir verify --sums F (ours) |${times[ours]} | $m_ours | 1.00x | $(ratio "$m_plain" "$m_ours") |
| etcdops datadir copy + datadir verify (both trees read) |${times[ours_plain]} | $m_plain | $(ratio "$m_ours" "$m_plain") | 1.00x |
| etcdops datadir copy --sums F + datadir verify --sums F, read back from the device |${times[device]} | $m_device | $(ratio "$m_ours" "$m_device") | $(ratio "$m_plain" "$m_device") |
| cp -a + sync + b3sum both trees (--check) |${times[cp]} | $m_cp | $(ratio "$m_ours" "$m_cp") | $(ratio "$m_plain" "$m_cp") |
| rsync -a + diff -r + sync |${times[rsync]} | $m_rsync | $(ratio "$m_ours" "$m_rsync") | $(ratio "$m_plain" "$m_rsync") |

read-back of the copy alone (median of $runs; the device verify reported verified_from=$from):
| read-back | runs (ms) | median (ms) | vs dd iflag=direct |
|---|---|---|---|
| datadir verify --verify-from-cache --sums F (page cache) |$rb_cache | $m_rb_cache | $(ratio "$m_rb_cache" "$m_rb_dd") |
| datadir verify --sums F (device: fdatasync + DONTNEED + mincore, then read) |$rb_device | $m_rb_device | $(ratio "$m_rb_device" "$m_rb_dd") |
| dd iflag=direct bs=1M of every file (the device's floor) |$rb_dd | $m_rb_dd | 1.00x |

peak RSS: datadir copy $((ours_copy_rss / 1024)) MiB, datadir verify $((ours_verify_rss / 1024)) MiB, b3sum $((b3sum_rss / 1024)) MiB
EOF
