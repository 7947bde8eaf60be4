#!/usr/bin/env bash
# Measures a migration's downtime on the lab with a large data dir (>= 450 MB by default):
# a 3-node lab (etcd 3.5, release build), BENCH_KEYS keys of BENCH_VALUE bytes written in
# transactions, then `etcdops migrate apply` of node 1 to a dir on disk. Prints every step's
# time, the downtime, and checks it against the target: downtime <= copy + verify + 3 s.
#
# Usage: scripts/bench-migrate.sh    BENCH_DIR (default a temp dir under /var/tmp, on disk),
#        BENCH_KEYS (2600), BENCH_VALUE (102400).
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

to="$work/disk2/etcd"
mkdir -p "$(dirname "$to")"
sync
"$bin/etcdops" migrate apply --yes --no-snapshot --same-filesystem --to "$to" -o json > "$work/run.json"
python3 - "$work/run.json" "$size" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
size = int(sys.argv[2])
steps = {s["name"]: s["took_ms"] for s in r["steps"]}
print(f"data dir: {size/1e6:.0f} MB   state: {r['state']}")
print(f"{'step':<14}{'ms':>8}")
for name, ms in steps.items():
    print(f"{name:<14}{ms:>8}")
down = r["downtime_ms"]
budget = steps["copy"] + steps["verify"] + 3000
print(f"downtime {down} ms; copy+verify+3s = {budget} ms -> {'within target' if down <= budget else 'OVER target'}")
print(f"copy throughput {size/1e6/(steps['copy']/1000):.0f} MB/s, verify {size/1e6/(steps['verify']/1000):.0f} MB/s")
sys.exit(0 if r["state"] == "completed" and down <= budget else 1)
PY
"$bin/etcdops" health --cluster >/dev/null && echo "cluster healthy after the move"
