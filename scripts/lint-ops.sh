#!/usr/bin/env bash
# Checks for what cargo does not see: the shell scripts, the Vagrant lab, the systemd
# units and the Ansible playbook in contrib/. No hypervisor runs on our machines, so the
# lab is validated here and run for real by vagrant/e2e.sh (docs/vagrant.md).
set -euo pipefail
cd "$(dirname "$0")/.."

shellcheck -x scripts/*.sh vagrant/*.sh contrib/prometheus/*.sh .ci/run

# `vagrant validate` refuses to run without a usable provider, and there is none here:
# --ignore-provider skips the provider blocks and checks everything else (settings,
# provisioner scripts, triggers). It would also probe this host for an NFS server, because
# the lab shares the repository over NFS; rsync has no such probe, so validate with it.
(cd vagrant && VAGRANT_CHECKPOINT_DISABLE=1 ETCDOPS_LAB_SYNC=rsync vagrant validate --ignore-provider)

# The units, as systemd reads them. verify also wants ExecStart to be executable: point it at
# the script in the repository instead of its installed path.
if command -v systemd-analyze >/dev/null 2>&1; then
  units=$(mktemp -d)
  trap 'rm -rf "$units"' EXIT
  cp contrib/prometheus/etcdops-textfile.service contrib/prometheus/etcdops-textfile.timer "$units/"
  sed -i "s|^ExecStart=/usr/local/sbin/etcdops-textfile$|ExecStart=$PWD/contrib/prometheus/etcdops-textfile.sh|" \
    "$units/etcdops-textfile.service"
  grep -q "^ExecStart=$PWD/" "$units/etcdops-textfile.service" ||
    { echo "lint-ops: etcdops-textfile.service has no ExecStart=/usr/local/sbin/etcdops-textfile" >&2; exit 1; }
  if ! out=$(systemd-analyze verify --man=no "$units/etcdops-textfile.service" "$units/etcdops-textfile.timer" 2>&1) ||
    [ -n "$out" ]; then
    echo "$out" >&2
    echo "lint-ops: systemd-analyze verify found problems in contrib/prometheus units" >&2
    exit 1
  fi
else
  echo "lint-ops: systemd-analyze not installed: contrib/prometheus units not verified" >&2
fi
# The Ansible playbook, as ansible-playbook parses it and ansible-lint judges it (it is run
# for real on a lab by tests/ansible.rs).
ANSIBLE_NOCOLOR=1 ansible-playbook --syntax-check -i localhost, contrib/ansible/migrate-etcd.yml >/dev/null
ansible-lint --nocolor -q contrib/ansible/migrate-etcd.yml
ANSIBLE_NOCOLOR=1 ansible-playbook --syntax-check -i localhost, contrib/ansible/restore-etcd.yml >/dev/null
ansible-lint --nocolor -q contrib/ansible/restore-etcd.yml
echo "lint-ops: shell scripts, Vagrantfile, systemd units and the Ansible playbook OK"
