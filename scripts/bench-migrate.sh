#!/usr/bin/env bash
# A migration's downtime against a plain restart of the same member, on one lab, in one run,
# at several data dir sizes (~200 MB and >= 2 GB by default). A 3-node lab; node 1's data
# grown by real etcd (BENCH_VALUE-byte values written in transactions) to each size in turn;
# at each size, while a light writer puts BENCH_WRITES_PER_S keys/s through nodes 2 and 3:
#   restart    manifest out of the manifests dir, wait until etcd has exited (data dir
#              quiesced, as `etcdops datadir check` says), manifest back, `/health` on the
#              metrics URL polled every 50 ms until it says true. No migration can be shorter.
#   migrate    `etcdops migrate apply --precopy` of node 1 to a new dir (default flags: the
#              command timeout stays 5 s, HashKV has its own deadline).
#   restart2   the same restart again, now on the migrated copy (does etcd's start on the new
#              copy pay for cold pages that the first restart did not?).
# Prints the breakdown of each (stop-etcd, stop-kubelet, the copy after the stop, verify,
# rewrite, start-kubelet, wait-healthy), the difference migration - restart, the bytes copied
# after the stop, the peak RSS, and the goal verdicts.
#
# Plain lab (directories on the host's disk), not `--systemd --disk ext4`: the lab's loop
# disks are 512 MiB (src/lab/systemd.rs DISK_BYTES), too small for a 2 GB data dir.
#
# Usage: scripts/bench-migrate.sh    BENCH_DIR (default a temp dir under /var/tmp, on disk),
#        BENCH_SIZES_MB ("200 2048"), BENCH_VALUE (102400), BENCH_WRITES_PER_S (5),
#        ETCD_DIR (etcd + etcdctl; default scripts/etcd-versions.sh's ETCD_DEFAULT build),
#        BENCH_BIN (dir with etcdops and etcdops-lab; default: a release build made here).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
sizes=${BENCH_SIZES_MB:-"200 2048"}
value_size=${BENCH_VALUE:-102400}
rate=${BENCH_WRITES_PER_S:-5}
# shellcheck source=scripts/etcd-versions.sh
. "$root/scripts/etcd-versions.sh"
etcd_dir=${ETCD_DIR:-$(etcd_dir "$ETCD_DEFAULT")}

if [ -n "${BENCH_BIN:-}" ]; then
  bin=$BENCH_BIN
else
  scripts/install-deps.sh >/dev/null
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-$root/target}/release"
fi
if [ ! -x /usr/bin/time ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi

mkdir -p /var/tmp
work=${BENCH_DIR:-$(mktemp -d /var/tmp/etcdops-bench-migrate.XXXXXX)}
lab="$work/lab"
writer_pid=""
stop_writer() {
  if [ -n "$writer_pid" ]; then kill "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; writer_pid=""; fi
}
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() { stop_writer; "$bin/etcdops-lab" down --dir "$lab" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

prefix=127.0.8
"$bin/etcdops-lab" up --dir "$lab" --nodes 3 --etcd "$etcd_dir/etcd" --ip-prefix "$prefix" >/dev/null
eval "$("$bin/etcdops-lab" env --dir "$lab" --node 1)"
pki="$lab/node1/etc/kubernetes/pki/etcd"
tls=(--cacert="$pki/ca.crt" --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key")
ctl=("$etcd_dir/etcdctl" --endpoints="https://$prefix.11:2379" "${tls[@]}" --command-timeout=30s)
others=("$etcd_dir/etcdctl" --endpoints="https://$prefix.12:2379,https://$prefix.13:2379" "${tls[@]}" --command-timeout=30s)
health_url="http://$prefix.11:2381/health"

now_ms() { local t=$EPOCHREALTIME; echo $(( ${t%.*} * 1000 + 10#${t#*.} / 1000 )); }
host_path() { "$bin/etcdops" -o json manifest show | python3 -c 'import json, sys; print(json.load(sys.stdin)["host_path"])'; }

# Incompressible, printable values (etcdctl's txn reads text lines).
value=$(python3 -c 'import base64, os, sys; n = int(sys.argv[1]); print(base64.b64encode(os.urandom(n)).decode()[:n])' "$value_size")
next_key=0
# Write 10 keys per transaction, 4 transactions at once, until node 1's data dir holds $1 MB.
grow_to() {
  local want=$(( $1 * 1000000 )) size txn="$work/txn"
  mkdir -p "$txn"
  for ((i = 0; i < 4; i++)); do
    { echo; for ((j = 0; j < 10; j++)); do echo "put bench/$i/$j $value"; done; echo; echo; } > "$txn/$i"
  done
  while :; do
    size=$(du -sb "$(host_path)" | cut -f1)
    (( size >= want )) && break
    for ((round = 0; round < 25; round++)); do
      for ((i = 0; i < 4; i++)); do
        sed "s|^put bench/[0-9]*/\([0-9]*\) |put bench/$next_key-$i/\1 |" "$txn/$i" | "${ctl[@]}" txn >/dev/null &
      done
      wait
      next_key=$((next_key + 1))
    done
  done
  rm -rf "$txn"
  echo "bench-migrate: node 1's data dir holds $((size / 1000000)) MB" >&2
}

start_writer() {
  (
    i=0
    while :; do
      "${others[@]}" put "light/$i" "$value" >/dev/null 2>&1 || true
      i=$((i + 1)); sleep "$(awk -v r="$rate" 'BEGIN { print 1 / r }')"
    done
  ) &
  writer_pid=$!
}

# A plain restart of node 1's etcd, timed: manifest out, etcd exited, manifest back, healthy.
restart() {
  local out="$1" data t0 t1 t2 t3 aside="$work/etcd.yaml.aside"
  data=$(host_path)
  sync
  t0=$(now_ms)
  mv "$ETCDOPS_MANIFEST" "$aside"
  until "$bin/etcdops" -o json datadir check "$data" 2>/dev/null | grep -q '"quiesced": *true'; do sleep 0.05; done
  t1=$(now_ms)
  mv "$aside" "$ETCDOPS_MANIFEST"
  t2=$(now_ms)
  until curl -fsS --max-time 1 "$health_url" 2>/dev/null | grep -q '"health":"true"'; do sleep 0.05; done
  t3=$(now_ms)
  echo "{\"stop_ms\": $((t1 - t0)), \"start_ms\": $((t3 - t2)), \"downtime_ms\": $((t3 - t0))}" > "$out"
}

status=0
results="$work/results"
: > "$results"
for mb in $sizes; do
  grow_to "$mb"
  "$bin/etcdops" health --cluster >/dev/null
  start_writer
  restart "$work/restart-$mb.json"
  "$bin/etcdops" health >/dev/null 2>&1 || sleep 2
  to="$work/disk-$mb/etcd"
  mkdir -p "$(dirname "$to")"
  sync
  /usr/bin/time -v -o "$work/rss-$mb" "$bin/etcdops" migrate apply --yes --no-snapshot \
    --same-filesystem --precopy --to "$to" -o json > "$work/run-$mb.json" || status=1
  restart "$work/restart2-$mb.json"
  stop_writer
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/rss-$mb")
  python3 - "$work" "$mb" "$rss" "$results" <<'PY' || status=1
import json, sys
work, mb, rss, results = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
r = json.load(open(f"{work}/run-{mb}.json"))
rs = json.load(open(f"{work}/restart-{mb}.json"))
rs2 = json.load(open(f"{work}/restart2-{mb}.json"))
steps = {s["name"]: s["took_ms"] for s in r["steps"]}
size = 0
for line in open(r["run_dir"] + "/journal.jsonl"):
    e = json.loads(line)
    if e.get("step") == "copy" and e.get("event") == "done" and "bytes" in (e.get("data") or {}):
        size = e["data"]["bytes"]
after = r.get("bytes_after_stop") or 0
slow = [h for h in r.get("hash_kv", []) if h.get("slow")]
print(f"{mb} MB: data dir {size/1e6:.0f} MB, state {r['state']}, migration downtime "
      f"{r['downtime_ms']} ms, restart {rs['downtime_ms']} ms (again on the copy: "
      f"{rs2['downtime_ms']} ms), bytes after the stop {after/1e6:.1f} MB, peak RSS {rss//1024} MiB, "
      f"slow HashKVs {len(slow)}")
with open(results, "a") as out:
    out.write(json.dumps({"size": size, "rss_kib": rss, "state": r["state"],
                          "downtime_ms": r["downtime_ms"], "bytes_after_stop": after,
                          "steps": steps, "restart": rs, "restart2": rs2,
                          "slow_hash_kv": len(slow)}) + "\n")
sys.exit(0 if r["state"] == "completed" else 1)
PY
done
"$bin/etcdops" health --cluster >/dev/null && echo "cluster healthy after the moves"
# The table (markdown) and the goal verdicts, from every run above.
python3 - "$results" <<'PY' || status=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| data dir | run | stop-etcd | stop-kubelet | copy after stop | verify | rewrite | start-kubelet | start + wait-healthy | downtime | after the stop | peak RSS |")
print("|" + "---|" * 12)
ok = True
for r in rows:
    mb = f"{r['size']/1e6:.0f} MB"
    for name in ("restart", "restart2"):
        x = r[name]
        label = "plain restart" if name == "restart" else "plain restart on the copy"
        print(f"| {mb} | {label} | {x['stop_ms']} | - | - | - | - | - | {x['start_ms']} | **{x['downtime_ms']}** | - | - |")
    s = r["steps"]
    g = lambda n: "-" if s.get(n) is None else str(s[n])
    pct = 100 * r["bytes_after_stop"] / r["size"] if r["size"] else 0
    print(f"| {mb} | migrate --precopy | {g('stop-etcd')} | {g('stop-kubelet')} | {g('copy')} | {g('verify')} | "
          f"{g('rewrite')} | {g('start-kubelet')} | {g('wait-healthy')} | **{r['downtime_ms']}** | "
          f"{r['bytes_after_stop']/1e6:.1f} MB ({pct:.1f} %) | {r['rss_kib']//1024} MiB |")
for r in rows:
    mb = f"{r['size']/1e6:.0f} MB"
    # Against the faster of the two restarts: a restart right after the data was grown
    # replays a WAL the later one does not (etcd snapshots only every 10,000 entries).
    best = min(r["restart"]["downtime_ms"], r["restart2"]["downtime_ms"])
    diff = r["downtime_ms"] - best
    pct = 100 * r["bytes_after_stop"] / r["size"] if r["size"] else 0
    print(f"{mb}: migration - fastest restart = {r['downtime_ms']} - {best} = {diff} ms")
    if r["size"] >= 2e9:
        met = diff <= 1500
        ok &= met
        print(f"goal migration - restart <= 1.5 s at {mb}: {diff} ms -> {'met' if met else 'MISSED'}")
    met = pct <= 10
    ok &= met
    print(f"goal bytes after the stop <= 10 % at {mb}: {pct:.1f} % -> {'met' if met else 'MISSED'}")
worst = max(r["rss_kib"] for r in rows) // 1024
print(f"goal peak RSS <= 64 MiB: {worst} MiB -> {'met' if worst <= 64 else 'MISSED'}")
PY
exit $status
