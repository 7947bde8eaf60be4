#!/usr/bin/env bash
# Measures how fast a real etcd answers HashKV, in MB of db file per second: the rate behind
# `etcd::hashkv::deadline` (a HashKV's own deadline, scaled by the member's db size).
# One single-member etcd on loopback; BENCH_MB of BENCH_VALUE-byte values written in
# transactions; then HashKV at the current revision RUNS times (etcdctl endpoint hashkv),
# each timed, with the db size from `endpoint status`. Prints one line per run and the rate.
#
# Usage: scripts/bench-hashkv.sh   ETCD_DIR (dir with etcd, etcdctl; default the 3.6 build
#        in /var/cache/etcdops-deps), BENCH_MB (400), BENCH_VALUE (8192), RUNS (3), BENCH_DIR.
set -euo pipefail
etcd_dir=${ETCD_DIR:-/var/cache/etcdops-deps/etcd-3.6.17}
mb=${BENCH_MB:-400}
value_size=${BENCH_VALUE:-8192}
runs=${RUNS:-3}
mkdir -p /var/tmp
work=${BENCH_DIR:-$(mktemp -d /var/tmp/etcdops-bench-hashkv.XXXXXX)}
etcd_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
  [ -n "${BENCH_DIR:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(free_port); pport=$(free_port)
url="http://127.0.0.1:$cport"
"$etcd_dir/etcd" --name hk --data-dir "$work/data" \
  --listen-client-urls "$url" --advertise-client-urls "$url" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "hk=http://127.0.0.1:$pport" \
  --quota-backend-bytes=$((8 * 1024 * 1024 * 1024)) --max-txn-ops=1000 \
  --log-level=error >"$work/etcd.log" 2>&1 &
etcd_pid=$!
ctl=("$etcd_dir/etcdctl" --endpoints "$url" --command-timeout=600s)
for _ in $(seq 100); do "${ctl[@]}" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
keys=$(( mb * 1000000 / value_size ))
per_txn=$(( 1000000 / value_size )); (( per_txn > 0 )) || per_txn=1; (( per_txn <= 1000 )) || per_txn=1000
echo "bench-hashkv: writing $keys keys of $value_size bytes ($per_txn per transaction) to $("$etcd_dir/etcd" --version | head -1)" >&2
mkdir -p "$work/txn"
awk -v n="$keys" -v size="$value_size" -v per="$per_txn" -v dir="$work/txn" 'BEGIN {
  srand(42)
  while (length(pool) < 65536 + size) pool = pool sprintf("%08x", int(rand() * 4294967296))
  for (i = 0; i < n; i++) {
    if (i % per == 0) { if (f) { print "" > f; print "" > f; close(f) }; f = sprintf("%s/%07d", dir, i / per); print "" > f }
    printf "put hk/%08d %s\n", i, substr(pool, int(rand() * 65536) + 1, size) > f
  }
  print "" > f; print "" > f; close(f)
}'
# shellcheck disable=SC2016 # $1..$3 are the inner shell's arguments
find "$work/txn" -type f -print0 | sort -z |
  xargs -0 -P 2 -I{} sh -c '"$1" --endpoints "$2" txn <"$3" >/dev/null' _ "$etcd_dir/etcdctl" "$url" {}
rm -rf "$work/txn"
db=$("${ctl[@]}" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
best=""
for r in $(seq "$runs"); do
  t0=$EPOCHREALTIME
  "${ctl[@]}" endpoint hashkv >/dev/null
  t1=$EPOCHREALTIME
  line=$(python3 -c "import sys; d=float(sys.argv[2])-float(sys.argv[1]); db=int(sys.argv[3]); print(f'{d:.2f} {db/1e6/d:.0f}')" "$t0" "$t1" "$db")
  echo "run $r: db $((db / 1000000)) MB, HashKV ${line% *} s, ${line#* } MB/s"
  rate=${line#* }
  if [ -z "$best" ] || (( rate < best )); then best=$rate; fi
done
echo "slowest rate: $best MB/s of db file ($(uptime | sed 's/.*load average/load average/'))"
