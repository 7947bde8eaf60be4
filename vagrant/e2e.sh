#!/usr/bin/env bash
# The real end-to-end test on the Vagrant lab (docs/vagrant.md): three kubeadm control planes
# with stacked etcd, a real kubelet and containerd. Moves every member's data dir to the
# second disk, one node at a time, each move gated by `etcdops health --cluster`; then runs
# `etcdops maintain` and `etcdops migrate finalize`, and proves the cluster kept its data
# (a ConfigMap written before) and its nodes (all Ready).
#
# Run on the host after `vagrant up` (in vagrant/). Exits non-zero at the first failure.
# Nodes already moved to the target are not migrated again: after a failure part-way through
# the rolling step, a rerun continues with the remaining nodes.
set -euo pipefail
cd "$(dirname "$0")"

read -r -a NODES <<<"${ETCDOPS_LAB_NODES:-cp1 cp2 cp3}"
TARGET=/mnt/etcd-disk/etcd
CONFIGMAP=etcdops-e2e
STAMP="$(date -u +%Y%m%dT%H%M%SZ)-$$"
KUBECTL="sudo kubectl --kubeconfig=/etc/kubernetes/admin.conf"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf 'e2e: FAILED: %s\n' "$*" >&2; exit 1; }
# Run a command on a node; its exit code is the command's. (`vagrant ssh --no-tty` cannot
# be used: bin/vagrant takes that flag for itself, so a terminal may add carriage returns.)
on() {
  local node=$1
  shift
  vagrant ssh "$node" -c "$*"
}
# The same, output captured without the carriage returns of a pseudo-terminal.
capture() { on "$@" | tr -d '\r'; }
# The hostPath of etcd's data volume on a node, from `etcdops manifest show -o json`.
host_path_of() {
  capture "$1" "sudo etcdops manifest show -o json" |
    sed -n 's/^ *"host_path": "\(.*\)",\{0,1\}$/\1/p'
}
gate() {
  local why=$1
  if ! on "${NODES[0]}" "sudo etcdops health --cluster"; then
    fail "etcd cluster unhealthy $why; nothing more was changed (see the report above)"
  fi
}

step "Preflight: etcdops on every node, the etcd disk mounted"
for node in "${NODES[@]}"; do
  on "$node" "etcdops --version && mountpoint /mnt/etcd-disk" ||
    fail "$node: etcdops missing or /mnt/etcd-disk not mounted (vagrant provision $node)"
done
on "${NODES[0]}" "$KUBECTL get nodes -o wide"

step "Writing ConfigMap $CONFIGMAP (stamp=$STAMP)"
on "${NODES[0]}" "$KUBECTL create configmap $CONFIGMAP --from-literal=stamp=$STAMP \
  --dry-run=client -o yaml | $KUBECTL apply -f -"

for node in "${NODES[@]}"; do
  step "$node: moving etcd's data dir to $TARGET"
  from=$(host_path_of "$node") || fail "$node: etcdops manifest show failed"
  if [ "$from" = "$TARGET" ]; then
    echo "$node: the manifest already points at $TARGET; skipping"
    continue
  fi
  echo "$node: etcd data on $from"
  gate "before migrating $node"
  if ! on "$node" "sudo etcdops migrate apply --to $TARGET --yes"; then
    on "$node" "sudo etcdops migrate status" || true
    fail "$node: etcdops migrate apply failed (status above)"
  fi
  on "$node" "sudo etcdops manifest show"
done

step "Cluster health after the last move"
gate "after migrating every node"

step "etcdops maintain (compact, rolling defrag by rule, health gates)"
on "${NODES[0]}" "sudo etcdops maintain" || fail "etcdops maintain failed"

step "etcdops migrate finalize on every node (the old path becomes a fence)"
for node in "${NODES[@]}"; do
  on "$node" "sudo etcdops migrate finalize" || fail "$node: etcdops migrate finalize failed"
  on "$node" "sudo test -f /var/lib/etcd" ||
    fail "$node: no fence file at /var/lib/etcd after finalize"
done

step "The data survived: ConfigMap $CONFIGMAP"
got=$(capture "${NODES[0]}" "$KUBECTL get configmap $CONFIGMAP -o jsonpath='{.data.stamp}'")
[ "$got" = "$STAMP" ] || fail "ConfigMap $CONFIGMAP has stamp '$got', expected '$STAMP'"
echo "stamp=$got"

step "Every node Ready, every member on the new disk"
on "${NODES[0]}" "$KUBECTL wait --for=condition=Ready node --all --timeout=300s" ||
  fail "not every node is Ready"
on "${NODES[0]}" "$KUBECTL get nodes -o wide"
for node in "${NODES[@]}"; do
  now=$(host_path_of "$node") || fail "$node: etcdops manifest show failed"
  [ "$now" = "$TARGET" ] || fail "$node: the etcd manifest points at '$now', not $TARGET"
done
gate "at the end"

echo
echo "e2e: PASSED: ${#NODES[@]} members moved to $TARGET, maintained, finalized; data and nodes intact"
