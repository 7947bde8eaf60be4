#!/usr/bin/env bash
# Measures the pre-copy at the datadir level (until the migration's precopy step exists):
# for each size (default ~200 MB and ~2 GB of values), a real etcd 3.6 data dir is made by
# writing BENCH_VALUE-byte values in transactions; then, with etcd still running and a light
# writer putting a few keys per second, `etcdops datadir precopy`; then etcd is stopped and
# `datadir copy --update` + `datadir verify` (from the device) run — the part that is
# downtime. For comparison, on the same stopped data dir, the full `datadir copy` + verify.
# Prints one table row per size: times, bytes written after the stop, peak RSS (from
# /usr/bin/time -v), and the read-back from the cache, from the device, and dd iflag=direct.
#
# Usage: scripts/bench-precopy.sh    BENCH_DIR (default a temp dir under /var/tmp, on disk),
#        BENCH_SIZES_MB ("200 2048"), BENCH_VALUE (102400), BENCH_WRITES_PER_S (5).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
sizes=${BENCH_SIZES_MB:-"200 2048"}
value_size=${BENCH_VALUE:-102400}
rate=${BENCH_WRITES_PER_S:-5}
# shellcheck source=scripts/etcd-versions.sh
. "$root/scripts/etcd-versions.sh"
etcdv=$(etcd_dir "$ETCD_DEFAULT")

scripts/install-deps.sh >/dev/null
if [ ! -x /usr/bin/time ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/release/etcdops"

mkdir -p /var/tmp
work=${BENCH_DIR:-$(mktemp -d /var/tmp/etcdops-bench-precopy.XXXXXX)}
etcd_pid=""
writer_pid=""
stop_writer() {
  if [ -n "$writer_pid" ]; then kill "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; writer_pid=""; fi
}
stop_etcd() {
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; etcd_pid=""; fi
}
cleanup() { stop_writer; stop_etcd; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { local t=$EPOCHREALTIME; echo $(( ${t%.*} * 1000 + 10#${t#*.} / 1000 )); }
rss_file="$work/rss"
peak_rss=0
# Run a command under /usr/bin/time -v, keep its stdout in $out and track the peak RSS.
measured() {
  out=$(/usr/bin/time -v -o "$rss_file" "$@")
  local r
  r=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$rss_file")
  (( r > peak_rss )) && peak_rss=$r
  return 0
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

start_etcd() {
  local dir=$1
  cport=$(free_port); pport=$(free_port)
  url="http://127.0.0.1:$cport"
  "$etcdv/etcd" --name bench --data-dir "$dir" \
    --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" \
    --quota-backend-bytes=$((8 * 1024 * 1024 * 1024)) --log-level=error >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 100); do
    ETCDCTL_API=3 "$etcdv/etcdctl" --endpoints "$url" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: etcd did not become healthy in 10 s" >&2; exit 1
}

rows=""
for mb in $sizes; do
  src="$work/src-$mb"; dst="$work/dst-$mb"; sums="$work/sums-$mb.b3"
  keys=$(( mb * 1024 * 1024 / value_size ))
  start_etcd "$src"
  echo "bench: writing $keys values of $value_size B to etcd 3.6 (~$mb MB)" >&2
  mkdir -p "$work/txn"
  # 10 puts (~1 MiB) per transaction file; values are slices of a random pool.
  awk -v n="$keys" -v size="$value_size" -v dir="$work/txn" 'BEGIN {
    srand(7)
    while (length(pool) < 4 * size) pool = pool sprintf("%08x", int(rand() * 4294967296))
    for (i = 0; i < n; i++) {
      if (i % 10 == 0) { if (f) { print "" > f; print "" > f; close(f) }; f = sprintf("%s/%07d", dir, i / 10); print "" > f }
      printf "put bench/key/%08d %s\n", i, substr(pool, int(rand() * (3 * size)) + 1, size) > f
    }
    print "" > f; print "" > f; close(f)
  }'
  # shellcheck disable=SC2016 # $1..$3 are the inner shell's arguments, expanded there
  find "$work/txn" -type f -print0 | sort -z |
    xargs -0 -P 4 -I{} sh -c 'ETCDCTL_API=3 "$1" --endpoints "$2" txn <"$3" >/dev/null' _ "$etcdv/etcdctl" "$url" {}
  rm -rf "$work/txn"

  # A light load during the pre-copy: BENCH_WRITES_PER_S puts of 1 KiB per second.
  (
    i=0; v=$(head -c 768 /dev/urandom | base64 -w0)
    while :; do
      ETCDCTL_API=3 "$etcdv/etcdctl" --endpoints "$url" put "light/$i" "$v" >/dev/null 2>&1 || true
      i=$((i + 1)); sleep "$(awk -v r="$rate" 'BEGIN { print 1 / r }')"
    done
  ) &
  writer_pid=$!
  sleep 1
  peak_rss=0
  t0=$(now_ms); measured "$bin" -o json datadir precopy "$src" "$dst"; t1=$(now_ms)
  t_pre=$((t1 - t0))
  sleep 1  # the writes go on a little after the pre-copy, as they would until stop-etcd
  stop_writer
  stop_etcd
  size=$(du -sb "$src" | cut -f1)

  t0=$(now_ms); measured "$bin" -o json datadir copy --update --sums "$sums" "$src" "$dst"; t1=$(now_ms)
  t_upd=$((t1 - t0))
  after=$(echo "$out" | field bytes_after_stop)
  used=$(echo "$out" | field precopy)
  t0=$(now_ms); measured "$bin" -o json datadir verify --sums "$sums" "$src" "$dst"; t1=$(now_ms)
  t_ver=$((t1 - t0))
  from=$(echo "$out" | field verified_from)
  identical=$(echo "$out" | field identical)
  [ "$identical" = "True" ] || { echo "bench: verify found differences: $out" >&2; exit 1; }
  t0=$(now_ms); "$bin" -o json datadir verify --verify-from-cache --sums "$sums" "$src" "$dst" >/dev/null; t1=$(now_ms)
  t_cache=$((t1 - t0))
  t0=$(now_ms)
  find "$dst" -type f -print0 | xargs -0 -I{} dd if={} of=/dev/null bs=1M iflag=direct status=none
  t1=$(now_ms)
  t_dd=$((t1 - t0))

  rm -rf "$dst" "$sums"; sync
  t0=$(now_ms); measured "$bin" -o json datadir copy --sums "$sums" "$src" "$dst"; t1=$(now_ms)
  t_full=$((t1 - t0))
  t0=$(now_ms); measured "$bin" -o json datadir verify --sums "$sums" "$src" "$dst"; t1=$(now_ms)
  t_fullver=$((t1 - t0))
  rm -rf "$dst" "$sums" "$src"; sync

  pct=$(awk -v a="$after" -v b="$size" 'BEGIN { printf "%.2f", 100 * a / b }')
  rows="$rows| $(numfmt --to=iec "$size") | $t_pre | $used, $(numfmt --to=iec "$after") ($pct %) | $t_upd | $t_ver ($from) | $((t_upd + t_ver)) | $t_full + $t_fullver = $((t_full + t_fullver)) | $t_cache / $t_ver / $t_dd | $((peak_rss / 1024)) MiB |
"
  echo "bench: $mb MB done" >&2
done

cat <<EOF
real etcd 3.6 data dirs, values of $value_size B, $rate writes/s during the pre-copy; times in ms, one run each
machine: $(nproc) cores, load average $(cut -d' ' -f1 /proc/loadavg) at the end (other work on the machine slows every line)
| data dir | pre-copy (etcd running) | after the stop: written | copy --update | verify | stopped: update + verify | stopped without pre-copy: copy + verify | read-back cache / device / dd iflag=direct | peak RSS |
|---|---|---|---|---|---|---|---|---|
$rows
EOF
