#!/usr/bin/env bash
# Measures a migration's downtime on the lab with a large data dir (>= 450 MB by default):
# a 3-node lab (etcd 3.5, release build), BENCH_KEYS keys of BENCH_VALUE bytes written in
# transactions, then two `etcdops migrate apply` of node 1 to a dir on disk: without and with
# --precopy (a light writer running meanwhile). Prints every step's time, the downtime, the
# bytes copied while etcd was stopped and the peak RSS of each.
#
# Usage: scripts/bench-migrate.sh    BENCH_DIR (default a temp dir under /var/tmp, on disk),
#        BENCH_KEYS (2600), BENCH_VALUE (102400), BENCH_WRITES_PER_S (5).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
keys=${BENCH_KEYS:-2600}
value_size=${BENCH_VALUE:-102400}

scripts/install-deps.sh >/dev/null
cargo build --release --quiet
bin="$root/target/release"
etcd35="$root/.cache/etcd-3.5.1"

mkdir -p /var/tmp
work=${BENCH_DIR:-$(mktemp -d /var/tmp/etcdops-bench-migrate.XXXXXX)}
lab="$work/lab"
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() { "$bin/etcdops-lab" down --dir "$lab" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/etcdops-lab" up --dir "$lab" --nodes 3 --etcd "$etcd35/etcd" --ip-prefix 127.0.8 >/dev/null
eval "$("$bin/etcdops-lab" env --dir "$lab" --node 1)"
pki="$lab/node1/etc/kubernetes/pki/etcd"
ctl=("$etcd35/etcdctl" --endpoints=https://127.0.8.11:2379 --cacert="$pki/ca.crt"
     --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key"
     --command-timeout=30s)

echo "bench-migrate: writing $keys keys of $value_size bytes (10 per transaction)" >&2
# Incompressible, printable values (etcdctl's txn reads text lines).
value=$(python3 -c 'import base64, os, sys; n = int(sys.argv[1]); print(base64.b64encode(os.urandom(n)).decode()[:n])' "$value_size")
for ((i = 0; i < keys; i += 10)); do
  {
    echo
    for ((j = i; j < i + 10 && j < keys; j++)); do echo "put bench/$j $value"; done
    echo
    echo
  } | "${ctl[@]}" txn >/dev/null
done
size=$(du -sb "$lab/node1/var/lib/etcd" | cut -f1)
echo "bench-migrate: node 1's data dir holds $((size / 1000000)) MB" >&2

if [ ! -x /usr/bin/time ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
# Two migrations of node 1 in the same run: without the pre-copy, then (from where the first
# left it) with --precopy while a light writer puts BENCH_WRITES_PER_S keys per second.
rate=${BENCH_WRITES_PER_S:-5}
writer_pid=""
stop_writer() { if [ -n "$writer_pid" ]; then kill "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; writer_pid=""; fi; }
trap 'stop_writer; cleanup' EXIT
status=0
for mode in plain precopy; do
  to="$work/disk-$mode/etcd"
  mkdir -p "$(dirname "$to")"
  flags=()
  if [ "$mode" = precopy ]; then
    flags=(--precopy)
    (
      i=0
      while :; do
        "${ctl[@]}" put "light/$i" "$value" >/dev/null 2>&1 || true
        i=$((i + 1)); sleep "$(awk -v r="$rate" 'BEGIN { print 1 / r }')"
      done
    ) &
    writer_pid=$!
  fi
  from=$("$bin/etcdops" -o json manifest show | python3 -c 'import json, sys; print(json.load(sys.stdin)["host_path"])')
  size=$(du -sb "$from" | cut -f1)
  sync
  /usr/bin/time -v -o "$work/rss-$mode" "$bin/etcdops" migrate apply --yes --no-snapshot --same-filesystem "${flags[@]}" --to "$to" -o json > "$work/run-$mode.json" || true
  stop_writer
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/rss-$mode")
  python3 - "$work/run-$mode.json" "$size" "$mode" "$rss" <<'PY' || status=1
import json, sys
r = json.load(open(sys.argv[1]))
size, mode, rss = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
steps = {s["name"]: s["took_ms"] for s in r["steps"]}
after = r.get("bytes_after_stop") or 0
print(f"{mode}: data dir {size/1e6:.0f} MB, state {r['state']}, downtime {r['downtime_ms']} ms, "
      f"bytes after the stop {after/1e6:.1f} MB ({100*after/size:.1f} %), peak RSS {rss//1024} MiB")
print("  " + "  ".join(f"{k} {v}" for k, v in steps.items() if v is not None))
sys.exit(0 if r["state"] == "completed" else 1)
PY
done
"$bin/etcdops" health --cluster >/dev/null && echo "cluster healthy after the moves"
exit $status
