#!/usr/bin/env bash
# Vagrant provisioner "kubeadm" on cp1 (as root): `kubeadm init` of the first control plane
# (stacked etcd, --control-plane-endpoint, --upload-certs), the pod network (flannel), and a
# fresh control-plane join command in the synced folder for cp2 and cp3. Idempotent: on a
# node already initialised it only republishes the join command (tokens and uploaded
# certificates expire after 2 hours).
set -euo pipefail
: "${NODE_IP:?}" "${API_NAME:?}" "${POD_CIDR:?}" "${SUBNET:?}" "${FLANNEL_VERSION:?}" "${LAB_DIR:?}"
export KUBECONFIG=/etc/kubernetes/admin.conf

log() { printf 'provision-init: %s\n' "$*"; }

install -d "$LAB_DIR"
if [ ! -f "$KUBECONFIG" ]; then
  rm -f "$LAB_DIR"/*
  log "kubeadm init (control-plane endpoint $API_NAME:6443, this node $NODE_IP)"
  kubeadm init \
    --control-plane-endpoint "$API_NAME:6443" \
    --apiserver-advertise-address "$NODE_IP" \
    --upload-certs \
    --pod-network-cidr "$POD_CIDR" \
    --node-name "$(hostname)"
fi

# kubectl for the vagrant user too (`vagrant ssh cp1 -c 'kubectl get nodes'`).
install -d -o vagrant -g vagrant /home/vagrant/.kube
install -m 0600 -o vagrant -g vagrant "$KUBECONFIG" /home/vagrant/.kube/config

# A join command with a certificate key of our own, so it is known without parsing init's output.
key=$(kubeadm certs certificate-key)
kubeadm init phase upload-certs --upload-certs --certificate-key "$key" >/dev/null
join=$(kubeadm token create --ttl 2h --print-join-command)
tmp="$LAB_DIR/.join-control-plane.sh.$$"
cat >"$tmp" <<JOIN
#!/bin/sh
# Written by provision-init.sh on $(hostname) at $(date -u +%FT%TZ); valid for 2 hours.
# Arguments are added (the joining node's --apiserver-advertise-address).
exec $join --control-plane --certificate-key $key "\$@"
JOIN
chmod 0600 "$tmp"
mv -f "$tmp" "$LAB_DIR/join-control-plane.sh"
date -u +%FT%TZ >"$LAB_DIR/ready-$(hostname)"
log "join command published in $LAB_DIR"

# flannel, pinned, on the node network: by default it takes the default-route interface,
# which is the NAT interface with the same address on every VM.
manifest=$(mktemp)
curl -fsSL "https://github.com/flannel-io/flannel/releases/download/$FLANNEL_VERSION/kube-flannel.yml" -o "$manifest"
iface_regex="^${SUBNET//./[.]}[.]"
awk -v arg="--iface-regex=$iface_regex" '
  { print }
  /^ *- --kube-subnet-mgr$/ { match($0, /^ */); printf "%s- \"%s\"\n", substr($0, 1, RLENGTH), arg }
' "$manifest" >"$manifest.patched"
grep -q -- "--iface-regex=" "$manifest.patched" || { echo "provision-init: flannel manifest has no --kube-subnet-mgr arg to extend" >&2; exit 1; }
kubectl apply -f "$manifest.patched"
rm -f "$manifest" "$manifest.patched"
log "done: $(kubectl get nodes --no-headers | wc -l) node(s) registered"
