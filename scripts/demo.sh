#!/usr/bin/env bash
# The main job on the embedded lab, for a newcomer to watch:
#   deps -> build -> a 3-node lab (real etcd 3.5, kubeadm-format manifests and TLS, a
#   kubelet stand-in per node) -> write data -> move node 1's data dir to a "new disk"
#   (a tmpfs) with `etcdops migrate` -> prove the cluster whole -> routine maintenance -> down.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing dependencies (idempotent)"
scripts/install-deps.sh

step "Building etcdops and etcdops-lab"
cargo build --quiet
bin="$root/target/debug"
etcd35="$root/.cache/etcd-3.5.1"

lab=$(mktemp -d /tmp/etcdops-demo.XXXXXX)
cleanup() {
  "$bin/etcdops-lab" down --dir "$lab" >/dev/null 2>&1 || true
  umount "$lab/newdisk" 2>/dev/null || true
}
trap cleanup EXIT

step "Starting a 3-node lab in $lab"
"$bin/etcdops-lab" up --dir "$lab" --nodes 3 --etcd "$etcd35/etcd"
"$bin/etcdops-lab" status --dir "$lab"

step "Pointing etcdops at node 1 (what a kubeadm node gives for free)"
"$bin/etcdops-lab" env --dir "$lab" --node 1
eval "$("$bin/etcdops-lab" env --dir "$lab" --node 1)"

step "Writing 200 keys through etcdctl"
pki="$lab/node1/etc/kubernetes/pki/etcd"
ctl=("$etcd35/etcdctl" --endpoints=https://127.0.0.11:2379 --cacert="$pki/ca.crt"
     --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key")
for i in $(seq 1 200); do "${ctl[@]}" put "/demo/key$i" "value-$i" >/dev/null; done
"${ctl[@]}" get /demo/key200

step "etcdops health --cluster (no flags: endpoints and certs come from the manifest)"
"$bin/etcdops" health --cluster

step "A new disk for node 1 (a 512 MiB tmpfs standing in for it)"
mkdir -p "$lab/newdisk"
mount -t tmpfs -o size=512m tmpfs "$lab/newdisk"
df -h "$lab/newdisk" | tail -n 1

step "etcdops migrate plan: every check, nothing changed"
"$bin/etcdops" migrate plan --allow-volatile-target --to "$lab/newdisk/etcd"

step "etcdops migrate apply: snapshot, stop etcd (manifest out), stop kubelet, copy, verify, rewrite hostPath, start, prove identity and data"
"$bin/etcdops" migrate apply --yes --allow-volatile-target --to "$lab/newdisk/etcd"

step "The manifest now points at the new disk (only the hostPath changed)"
"$bin/etcdops" manifest show

step "The whole cluster after the move"
"$bin/etcdops" health --cluster
"${ctl[@]}" get /demo/key200

step "Routine maintenance: health gate, compact, defrag by rule (leader last), NOSPACE check"
"$bin/etcdops" maintain

step "After the operator's verification window: finalize leaves a fence at the old path"
"$bin/etcdops" migrate finalize
head -n 1 "$lab/node1/var/lib/etcd"

step "Stopping the lab"
"$bin/etcdops-lab" down --dir "$lab"
umount "$lab/newdisk"
trap - EXIT
rm -rf "$lab"
echo "demo done"
