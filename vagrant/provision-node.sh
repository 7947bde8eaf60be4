#!/usr/bin/env bash
# Vagrant provisioner "node" (every node, as root): the etcd disk at /mnt/etcd-disk, kernel
# settings, containerd, and kubeadm/kubelet/kubectl from pkgs.k8s.io. Idempotent.
set -euo pipefail
: "${NODE_IP:?}" "${API_NAME:?}" "${API_IP:?}" "${K8S_MINOR:?}"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'provision-node: %s\n' "$*"; }
die() { printf 'provision-node: %s\n' "$*" >&2; exit 1; }

# --- The second disk, for etcd's data: formatted once (label etcd-disk), in fstab by UUID.
mount_etcd_disk() {
  local mnt=/mnt/etcd-disk dev uuid
  dev=$(blkid -L etcd-disk || true)
  if [ -z "$dev" ]; then
    # The one whole disk with no partition and no filesystem signature: the one Vagrant added.
    local name type candidates=()
    while read -r name type; do
      [ "$type" = disk ] || continue
      [ "$(lsblk -nro NAME "$name" | wc -l)" -eq 1 ] || continue
      blkid -p "$name" >/dev/null 2>&1 && continue
      candidates+=("$name")
    done < <(lsblk -dnrpo NAME,TYPE)
    if [ ${#candidates[@]} -ne 1 ]; then
      lsblk >&2
      die "expected exactly one empty disk for etcd, found ${#candidates[@]} (${candidates[*]:-none}); on VirtualBox run 'VAGRANT_EXPERIMENTAL=disks vagrant up' (or reload), else Vagrant does not attach it"
    fi
    dev=${candidates[0]}
    log "formatting $dev (ext4, label etcd-disk)"
    mkfs.ext4 -q -L etcd-disk "$dev"
  fi
  uuid=$(blkid -s UUID -o value "$dev")
  if ! mountpoint -q "$mnt"; then
    [ -d "$mnt" ] || install -d -m 0755 "$mnt"
    # Immutable while unmounted: if the disk is ever missing, kubelet cannot create the
    # data dir here (hostPath DirectoryOrCreate) and start an empty etcd member on /.
    chattr +i "$mnt" 2>/dev/null || log "warning: chattr +i $mnt failed; an unmounted $mnt is writable"
  fi
  if ! grep -q "[[:space:]]${mnt}[[:space:]]" /etc/fstab; then
    # No nofail: a node whose etcd disk is gone must not boot into an empty member.
    echo "UUID=$uuid $mnt ext4 defaults,noatime 0 2" >>/etc/fstab
    systemctl daemon-reload
  fi
  mountpoint -q "$mnt" || mount "$mnt"
  log "$dev mounted at $mnt ($(df -h --output=size "$mnt" | tail -n1 | tr -d ' '))"
}

mount_etcd_disk

# --- Kernel: no swap (kubelet refuses it by default), bridged traffic through iptables.
swapoff -a
sed -ri '/^[^#].*[[:space:]]swap[[:space:]]/s/^/# disabled for kubelet: /' /etc/fstab
printf 'overlay\nbr_netfilter\n' >/etc/modules-load.d/k8s.conf
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/99-kubernetes.conf <<SYSCTL
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
sysctl -q --system

# --- The control-plane endpoint, by name (cp1 until a load balancer takes over).
sed -i "/[[:space:]]$API_NAME\$/d" /etc/hosts
echo "$API_IP $API_NAME" >>/etc/hosts

# --- containerd with the systemd cgroup driver (kubeadm's kubelet default since v1.22).
apt-get update -qq
apt-get install -y -qq containerd apt-transport-https ca-certificates curl gpg >/dev/null
install -d -m 0755 /etc/containerd
if [ ! -s /etc/containerd/config.toml ] || ! grep -q 'SystemdCgroup = true' /etc/containerd/config.toml; then
  containerd config default >/etc/containerd/config.toml
  # pause:3.9 is the sandbox image kubeadm v1.30 expects (it warns about any other).
  sed -i -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
    -e 's#sandbox_image = ".*"#sandbox_image = "registry.k8s.io/pause:3.9"#' \
    /etc/containerd/config.toml
  grep -q 'SystemdCgroup = true' /etc/containerd/config.toml ||
    die "could not set SystemdCgroup = true in /etc/containerd/config.toml"
  systemctl restart containerd
fi
systemctl enable --now containerd >/dev/null

# --- kubeadm, kubelet, kubectl from the community repository, held at this minor version.
install -d -m 0755 /etc/apt/keyrings
keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
repo="https://pkgs.k8s.io/core:/stable:/$K8S_MINOR/deb/"
curl -fsSL "${repo}Release.key" | gpg --dearmor --yes -o "$keyring"
echo "deb [signed-by=$keyring] $repo /" >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null
# The node network, not the NAT interface every VM shares, for the node's address.
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" >/etc/default/kubelet
systemctl enable kubelet >/dev/null
crictl config --set runtime-endpoint=unix:///run/containerd/containerd.sock
log "ready: $(kubeadm version -o short), containerd $(containerd --version | awk '{print $3}')"
