#!/usr/bin/env bash
# Measures `etcdops backup` on a large db (>= 400 MB by default) against `etcdctl snapshot
# save` of the same member in the same run: a 1-node lab (etcd 3.6, release build),
# BENCH_KEYS keys of BENCH_VALUE bytes written in transactions, then
#   etcdctl snapshot save (before), etcdops backup, etcdctl snapshot save (after),
#   etcdops backup verify, etcdops backup verify --restore-test,
# each timed with its peak RSS (ru_maxrss of the child); then BENCH_PAIRS pairs of
#   etcdops backup (plain), etcdops backup --recipient age1… (encrypted, age)
# alternating, to compare encryption's cost in the same run. Prints a table and checks the
# targets: backup <= 1.3 x the mean snapshot save, backup peak RSS <= 64 MiB, encrypted
# backup <= 1.1 x the plain one (medians of the pairs), encrypted peak RSS <= 64 MiB.
#
# Usage: scripts/bench-backup.sh    BENCH_DIR (default a temp dir under /var/tmp, on disk),
#        BENCH_KEYS (4200), BENCH_VALUE (102400), BENCH_LEVEL (zstd level, 3), BENCH_PAIRS (3),
#        ETCD_DIR (etcd, etcdctl, etcdutl; default the matrix's default release, build-etcd.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
keys=${BENCH_KEYS:-4200}
value_size=${BENCH_VALUE:-102400}
level=${BENCH_LEVEL:-3}
pairs=${BENCH_PAIRS:-3}
# shellcheck source=scripts/etcd-versions.sh
. "$root/scripts/etcd-versions.sh"

scripts/install-deps.sh >/dev/null
cargo build --release --quiet --bins
bin="${CARGO_TARGET_DIR:-$root/target}/release"
etcdv=${ETCD_DIR:-$(etcd_dir "$ETCD_DEFAULT")}

mkdir -p /var/tmp
work=${BENCH_DIR:-$(mktemp -d /var/tmp/etcdops-bench-backup.XXXXXX)}
lab="$work/lab"
cleanup() { "$bin/etcdops-lab" down --dir "$lab" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/etcdops-lab" up --dir "$lab" --nodes 1 --etcd "$etcdv/etcd" --ip-prefix 127.0.7 >/dev/null
eval "$("$bin/etcdops-lab" env --dir "$lab" --node 1)"
pki="$lab/node1/etc/kubernetes/pki/etcd"
ctl=("$etcdv/etcdctl" --endpoints=https://127.0.7.11:2379 --cacert="$pki/ca.crt"
     --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key"
     --command-timeout=60s)

echo "bench-backup: writing $keys keys of $value_size bytes (10 per transaction)" >&2
# Printable random values (etcdctl's txn reads text lines), a different one per key: base64
# of random bytes compresses to about 3/4. One value repeated for every key (as this script
# did before) compresses 180x and hides zstd's cost.
txns="$work/txn"
mkdir -p "$txns"
python3 - "$txns" "$keys" "$value_size" <<'PY'
import base64, os, sys
out, keys, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(0, keys, 10):
    with open(f"{out}/{i}", "w") as f:
        f.write("\n")
        for j in range(i, min(i + 10, keys)):
            f.write(f"put bench/{j} {base64.b64encode(os.urandom(size * 3 // 4)).decode()[:size]}\n")
        f.write("\n\n")
PY
for ((i = 0; i < keys; i += 10)); do
  "${ctl[@]}" txn < "$txns/$i" >/dev/null
done
rm -rf "$txns"
db=$(stat -c %s "$lab/node1/var/lib/etcd/member/snap/db")
echo "bench-backup: node 1's db holds $((db / 1000000)) MB" >&2

# Run a command; append "name wall_ms maxrss_kib exit" to the results.
results="$work/results"
: > "$results"
measure() {
  local name=$1; shift
  python3 - "$name" "$results" "$@" <<'PY'
import resource, subprocess, sys, time
name, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.monotonic()
r = subprocess.run(cmd, stdout=subprocess.DEVNULL)
ms = (time.monotonic() - t) * 1000
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(out, "a") as f:
    f.write(f"{name} {ms:.0f} {rss} {r.returncode}\n")
PY
}

dir="$work/backups"
mkdir -p "$dir"
sync
measure "etcdctl-snapshot-save-1" "${ctl[@]}" snapshot save "$work/snap1.db"
sync
measure "etcdops-backup" "$bin/etcdops" backup --dir "$dir" --level "$level"
sync
measure "etcdctl-snapshot-save-2" "${ctl[@]}" snapshot save "$work/snap2.db"
archive=$(ls "$dir"/etcd-backup-*.tar.zst)
measure "etcdops-backup-verify" "$bin/etcdops" backup verify "$archive"
measure "etcdops-backup-verify-restore-test" "$bin/etcdops" backup verify --restore-test \
  --etcdutl "$etcdv/etcdutl" "$archive"
size=$(stat -c %s "$archive")

# Encryption's cost: plain and encrypted backups alternating (each into a dir of its own,
# removed after, so that every run writes to the same free space).
age-keygen -o "$work/age-key.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/age-key.txt")
for ((i = 1; i <= pairs; i++)); do
  for kind in plain age; do
    d="$work/pair-$kind-$i"
    mkdir -p "$d"
    extra=()
    [ "$kind" = age ] && extra=(--recipient "$recipient")
    sync
    measure "pair-$kind-$i" "$bin/etcdops" backup --dir "$d" --level "$level" "${extra[@]}"
    rm -rf "$d"
  done
done

python3 - "$results" "$db" "$size" "$level" "$pairs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
db, size, level, pairs = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
r = {n: (int(ms), int(rss), int(rc)) for n, ms, rss, rc in rows}
print(f"db {db/1e6:.0f} MB; archive {size/1e6:.0f} MB (zstd level {level}, {100*size/db:.0f}% of the db)")
print(f"{'command':<38}{'wall ms':>9}{'peak RSS MiB':>14}{'exit':>6}")
for n, (ms, rss, rc) in r.items():
    print(f"{n:<38}{ms:>9}{rss/1024:>14.1f}{rc:>6}")
snap = (r["etcdctl-snapshot-save-1"][0] + r["etcdctl-snapshot-save-2"][0]) / 2
b_ms, b_rss, b_rc = r["etcdops-backup"]
ratio = b_ms / snap
print(f"backup / mean snapshot save = {ratio:.2f} (target <= 1.3); backup peak RSS {b_rss/1024:.1f} MiB (target <= 64)")
plain = [r[f"pair-plain-{i}"][0] for i in range(1, pairs + 1)]
enc = [r[f"pair-age-{i}"][0] for i in range(1, pairs + 1)]
per_pair = [e / p for e, p in zip(enc, plain)]
enc_ratio = statistics.median(enc) / statistics.median(plain)
enc_rss = max(r[f"pair-age-{i}"][1] for i in range(1, pairs + 1))
print(f"encrypted / plain backup (medians of {pairs} pairs) = {enc_ratio:.2f} (target <= 1.1); "
      f"per pair {', '.join(f'{x:.2f}' for x in per_pair)}; encrypted peak RSS {enc_rss/1024:.1f} MiB (target <= 64)")
ok = (all(rc == 0 for _, _, rc in r.values()) and ratio <= 1.3 and b_rss <= 64 * 1024
      and enc_ratio <= 1.1 and enc_rss <= 64 * 1024)
sys.exit(0 if ok else 1)
PY
