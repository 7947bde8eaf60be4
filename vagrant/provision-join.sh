#!/usr/bin/env bash
# Vagrant provisioner "kubeadm" on cp2, cp3, ... (as root): join as a control plane (stacked
# etcd) with the command cp1 published in the synced folder, after the node before this one
# has joined (etcd adds one member at a time). Idempotent.
set -euo pipefail
: "${NODE_IP:?}" "${PREVIOUS:?}" "${LAB_DIR:?}"

log() { printf 'provision-join: %s\n' "$*"; }
me=$(hostname)

if [ ! -f /etc/kubernetes/kubelet.conf ]; then
  # Nodes come up in parallel on libvirt: wait for cp1's join command and for $PREVIOUS.
  deadline=$((SECONDS + 1800))
  until [ -f "$LAB_DIR/ready-$PREVIOUS" ] && [ -f "$LAB_DIR/join-control-plane.sh" ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "provision-join: no $LAB_DIR/ready-$PREVIOUS or join-control-plane.sh after 30 min." \
        "Is $PREVIOUS provisioned? The synced folder must be two-way (ETCDOPS_LAB_SYNC=nfs" \
        "or virtiofs). A join command older than 2 hours: 'vagrant provision cp1' first." >&2
      exit 1
    fi
    sleep 10
  done
  log "joining as a control plane (advertising $NODE_IP)"
  sh "$LAB_DIR/join-control-plane.sh" --apiserver-advertise-address "$NODE_IP" --node-name "$me"
fi

install -d -o vagrant -g vagrant /home/vagrant/.kube
install -m 0600 -o vagrant -g vagrant /etc/kubernetes/admin.conf /home/vagrant/.kube/config
date -u +%FT%TZ >"$LAB_DIR/ready-$me"
log "done"
