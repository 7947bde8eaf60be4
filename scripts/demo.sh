#!/usr/bin/env bash
# The main job on the embedded lab, for a newcomer to watch:
#   deps -> build -> a 3-node lab (real etcd 3.5, kubeadm-format manifests and TLS,
#   a kubelet stand-in per node) -> write data -> health of the whole cluster -> down.
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
cleanup() { "$bin/etcdops-lab" down --dir "$lab" >/dev/null 2>&1 || true; }
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

step "The same as JSON, for scripts and monitoring"
"$bin/etcdops" health --cluster -o json

step "Stopping the lab"
"$bin/etcdops-lab" down --dir "$lab"
trap - EXIT
rm -rf "$lab"
echo "demo done"
