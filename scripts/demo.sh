#!/usr/bin/env bash
# The main job on the embedded lab, for a newcomer to watch:
#   deps -> build -> a 3-node lab (real etcd 3.6, kubeadm-format manifests and TLS, a
#   kubelet stand-in per node) -> write data -> move node 1's data dir to a "new disk"
#   (a tmpfs) with `etcdops migrate` -> prove the cluster whole -> routine maintenance -> down.
# With --systemd each node is a systemd-nspawn container (real systemd, kubelet.service) whose
# data dir and new disk are ext4 loop devices; etcdops runs where the node sees its disks and
# drives kubelet with `systemctl` inside the node (docs/lab.md).
set -euo pipefail
systemd=false
case "${1:-}" in
  "") ;;
  --systemd) systemd=true ;;
  *) echo "usage: scripts/demo.sh [--systemd]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing dependencies (idempotent)"
scripts/install-deps.sh

step "Building etcdops and etcdops-lab"
cargo build --quiet
bin="$root/target/debug"
# shellcheck source=scripts/etcd-versions.sh
. "$root/scripts/etcd-versions.sh"
etcdv=$(etcd_dir "$ETCD_DEFAULT")

lab=$(mktemp -d /tmp/etcdops-demo.XXXXXX)
cleanup() {
  "$bin/etcdops-lab" down --dir "$lab" >/dev/null 2>&1 || true
  umount "$lab/newdisk" 2>/dev/null || true
}
trap cleanup EXIT

if $systemd; then
  step "Booting a 3-node systemd lab in $lab (systemd-nspawn nodes, ext4 loop-device disks)"
  "$bin/etcdops-lab" up --dir "$lab" --nodes 3 --etcd "$etcdv/etcd" --systemd --disk ext4
else
  step "Starting a 3-node lab in $lab"
  "$bin/etcdops-lab" up --dir "$lab" --nodes 3 --etcd "$etcdv/etcd"
fi
"$bin/etcdops-lab" status --dir "$lab"

step "Pointing etcdops at node 1 (what a kubeadm node gives for free)"
"$bin/etcdops-lab" env --dir "$lab" --node 1
eval "$("$bin/etcdops-lab" env --dir "$lab" --node 1)"
# In systemd mode the node's disks are mounted in its own mount namespace: run etcdops there.
node_exec=()
if $systemd; then read -r -a node_exec <<<"$ETCDOPS_LAB_NODE_EXEC"; fi
etcdops() { "${node_exec[@]}" "$bin/etcdops" "$@"; }

step "Writing 200 keys through etcdctl"
pki="$lab/node1/etc/kubernetes/pki/etcd"
ctl=("$etcdv/etcdctl" --endpoints=https://127.0.0.11:2379 --cacert="$pki/ca.crt"
     --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key")
for i in $(seq 1 200); do "${ctl[@]}" put "/demo/key$i" "value-$i" >/dev/null; done
"${ctl[@]}" get /demo/key200

step "etcdops health --cluster (no flags: endpoints and certs come from the manifest)"
etcdops health --cluster

# A tmpfs is volatile: migrate refuses it unless told that this is a demo.
volatile=()
if $systemd; then
  newdisk=$ETCDOPS_LAB_NEW_DISK
  step "Node 1's new disk: an ext4 loop device mounted inside the node"
  "${node_exec[@]}" df -hT "$newdisk" | tail -n 1
else
  newdisk=$lab/newdisk
  step "A new disk for node 1 (a 512 MiB tmpfs standing in for it)"
  mkdir -p "$newdisk"
  mount -t tmpfs -o size=512m tmpfs "$newdisk"
  df -h "$newdisk" | tail -n 1
  volatile=(--allow-volatile-target)
fi

step "etcdops migrate plan: every check, nothing changed"
etcdops migrate plan "${volatile[@]}" --to "$newdisk/etcd"

step "etcdops migrate apply: snapshot, stop etcd (manifest out), stop kubelet, copy, verify, rewrite hostPath, start, prove identity and data"
etcdops migrate apply --yes "${volatile[@]}" --to "$newdisk/etcd"

step "The manifest now points at the new disk (only the hostPath changed)"
etcdops manifest show

step "The whole cluster after the move"
etcdops health --cluster
"${ctl[@]}" get /demo/key200

step "Routine maintenance: health gate, compact, defrag by rule (leader last), NOSPACE check"
etcdops maintain

step "After the operator's verification window: finalize leaves a fence at the old path"
etcdops migrate finalize
if $systemd; then
  # The old data dir is a mount point here (node 1's old disk), as /var/lib/etcd often is:
  # it can be neither renamed nor replaced, so the fence is the file `member` inside it.
  "${node_exec[@]}" head -n 1 "$lab/node1/var/lib/etcd/member"
else
  head -n 1 "$lab/node1/var/lib/etcd"
fi

step "Stopping the lab"
"$bin/etcdops-lab" down --dir "$lab"
$systemd || umount "$newdisk"
trap - EXIT
rm -rf "$lab"
echo "demo done"
