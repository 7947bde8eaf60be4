#!/usr/bin/env bash
# Measures a migration's downtime on the lab at several data dir sizes (~200 MB and >= 2 GB
# by default) in one run, on one lab: a 3-node lab (etcd 3.6, release build), node 1's data
# grown by real etcd (BENCH_VALUE-byte values written in transactions) to each size in turn;
# at each size two `etcdops migrate apply` of node 1 to a dir on disk: without and with
# --precopy (a light writer putting BENCH_WRITES_PER_S keys/s meanwhile). Prints every step's
# time, the downtime, the bytes copied while etcd was stopped and the peak RSS of each, then
# the goal verdicts.
#
# Plain lab (directories on the host's disk), not `--systemd --disk ext4`: the lab's loop
# disks are 512 MiB (src/lab/systemd.rs DISK_BYTES), too small for a 2 GB data dir.
#
# Usage: scripts/bench-migrate.sh    BENCH_DIR (default a temp dir under /var/tmp, on disk),
#        BENCH_SIZES_MB ("200 2048"), BENCH_VALUE (102400), BENCH_WRITES_PER_S (5).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
sizes=${BENCH_SIZES_MB:-"200 2048"}
value_size=${BENCH_VALUE:-102400}

scripts/install-deps.sh >/dev/null
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/release"
# shellcheck source=scripts/etcd-versions.sh
. "$root/scripts/etcd-versions.sh"
etcdv=$(etcd_dir "$ETCD_DEFAULT")

mkdir -p /var/tmp
work=${BENCH_DIR:-$(mktemp -d /var/tmp/etcdops-bench-migrate.XXXXXX)}
lab="$work/lab"
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() { "$bin/etcdops-lab" down --dir "$lab" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/etcdops-lab" up --dir "$lab" --nodes 3 --etcd "$etcdv/etcd" --ip-prefix 127.0.8 >/dev/null
eval "$("$bin/etcdops-lab" env --dir "$lab" --node 1)"
pki="$lab/node1/etc/kubernetes/pki/etcd"
ctl=("$etcdv/etcdctl" --endpoints=https://127.0.8.11:2379 --cacert="$pki/ca.crt"
     --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key"
     --command-timeout=30s)

# Incompressible, printable values (etcdctl's txn reads text lines).
value=$(python3 -c 'import base64, os, sys; n = int(sys.argv[1]); print(base64.b64encode(os.urandom(n)).decode()[:n])' "$value_size")
next_key=0
# Write 100 keys at a time (10 per transaction) until node 1's data dir holds $1 MB.
grow_to() {
  local want=$(( $1 * 1000000 )) from size
  while :; do
    from=$("$bin/etcdops" -o json manifest show | python3 -c 'import json, sys; print(json.load(sys.stdin)["host_path"])')
    size=$(du -sb "$from" | cut -f1)
    (( size >= want )) && break
    for ((i = 0; i < 100; i += 10)); do
      {
        echo
        for ((j = next_key; j < next_key + 10; j++)); do echo "put bench/$j $value"; done
        echo
        echo
      } | "${ctl[@]}" txn >/dev/null
      next_key=$((next_key + 10))
    done
  done
  echo "bench-migrate: node 1's data dir holds $((size / 1000000)) MB ($next_key keys written)" >&2
}

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
results="$work/results"
: > "$results"
for mb in $sizes; do
grow_to "$mb"
for mode in plain precopy; do
  to="$work/disk-$mb-$mode/etcd"
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
  /usr/bin/time -v -o "$work/rss-$mode" "$bin/etcdops" --command-timeout 120s migrate apply --yes --no-snapshot --same-filesystem "${flags[@]}" --to "$to" -o json > "$work/run-$mb-$mode.json" || true
  stop_writer
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/rss-$mode")
  python3 - "$work/run-$mb-$mode.json" "$size" "$mode" "$rss" "$results" <<'PY' || status=1
import json, sys
r = json.load(open(sys.argv[1]))
size, mode, rss = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
steps = {s["name"]: s["took_ms"] for s in r["steps"]}
after = r.get("bytes_after_stop") or 0
# The quiesced data dir's bytes, as the copy step read them (the du above, taken while etcd
# ran, also counts the 64 MB wal/0.tmp that etcd removes when it stops).
for line in open(r["run_dir"] + "/journal.jsonl"):
    e = json.loads(line)
    if e.get("step") == "copy" and e.get("event") == "done" and "bytes" in (e.get("data") or {}):
        size = e["data"]["bytes"]
print(f"{mode}: data dir {size/1e6:.0f} MB, state {r['state']}, downtime {r['downtime_ms']} ms, "
      f"bytes after the stop {after/1e6:.1f} MB ({100*after/size:.1f} %), peak RSS {rss//1024} MiB")
print("  " + "  ".join(f"{k} {v}" for k, v in steps.items() if v is not None))
with open(sys.argv[5], "a") as out:
    out.write(json.dumps({"size": size, "mode": mode, "rss_kib": rss, "state": r["state"],
                          "downtime_ms": r["downtime_ms"], "bytes_after_stop": after,
                          "steps": steps}) + "\n")
sys.exit(0 if r["state"] == "completed" else 1)
PY
done
done
"$bin/etcdops" --command-timeout 120s health --cluster >/dev/null && echo "cluster healthy after the moves"
# The table (markdown) and the goal verdicts, from every run above.
python3 - "$results" <<'PY' || status=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = ["precopy", "stop-etcd", "stop-kubelet", "copy", "verify", "rewrite", "start-kubelet",
         "wait-healthy", "post-verify"]
print("| data dir | mode | " + " | ".join(names) + " | downtime | after the stop | peak RSS |")
print("|" + "---|" * (len(names) + 5))
for r in rows:
    cells = [str(r["steps"].get(n) if r["steps"].get(n) is not None else "-") for n in names]
    pct = 100 * r["bytes_after_stop"] / r["size"]
    print(f"| {r['size']/1e6:.0f} MB | {r['mode']} | " + " | ".join(cells) +
          f" | **{r['downtime_ms']}** | {r['bytes_after_stop']/1e6:.1f} MB ({pct:.1f} %) | {r['rss_kib']//1024} MiB |")
pre = [r for r in rows if r["mode"] == "precopy"]
ok = True
for r in pre:
    pct = 100 * r["bytes_after_stop"] / r["size"]
    met = pct <= 10
    ok &= met
    print(f"goal bytes after the stop <= 10 % at {r['size']/1e6:.0f} MB: {pct:.1f} % -> {'met' if met else 'MISSED'}")
if len(pre) >= 2:
    small, big = min(pre, key=lambda r: r["size"]), max(pre, key=lambda r: r["size"])
    ratio = big["downtime_ms"] / small["downtime_ms"]
    met = ratio <= 1.5
    print(f"goal downtime({big['size']/1e6:.0f} MB) <= 1.5x downtime({small['size']/1e6:.0f} MB) "
          f"with pre-copy: {big['downtime_ms']} / {small['downtime_ms']} ms = {ratio:.2f}x -> "
          f"{'met' if met else 'MISSED'}")
worst = max(r["rss_kib"] for r in rows) // 1024
print(f"goal peak RSS <= 64 MiB: {worst} MiB -> {'met' if worst <= 64 else 'MISSED'}")
PY
exit $status
