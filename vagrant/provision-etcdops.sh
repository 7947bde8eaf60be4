#!/usr/bin/env bash
# Vagrant provisioner "etcdops" (every node, as root): install the etcdops binary that was
# built on the host (`cargo build --release` in the repository) from the synced folder, with
# its bash completion and man page. First, so that a missing build stops `vagrant up` before
# minutes of package installs. After a rebuild: `vagrant provision --provision-with etcdops`.
set -euo pipefail
: "${GUEST_REPO:?set by the Vagrantfile}"

bin="$GUEST_REPO/target/release/etcdops"
if [ ! -f "$bin" ]; then
  echo "provision-etcdops: $bin not found: run 'cargo build --release' in the repository on" \
    "the host, then 'vagrant provision --provision-with etcdops'" >&2
  exit 1
fi
install -m 0755 "$bin" /usr/local/bin/etcdops.new
if ! version=$(/usr/local/bin/etcdops.new --version 2>&1); then
  rm -f /usr/local/bin/etcdops.new
  echo "provision-etcdops: the host-built $bin does not run here: $version" >&2
  echo "provision-etcdops: build it on a Linux x86_64 host whose glibc is not newer than" \
    "this box's ($(ldd --version | head -n1))" >&2
  exit 1
fi
mv -f /usr/local/bin/etcdops.new /usr/local/bin/etcdops

install -d -m 0755 /etc/bash_completion.d /usr/local/share/man/man1
etcdops completions bash >/etc/bash_completion.d/etcdops
etcdops man --out-dir /usr/local/share/man/man1 >/dev/null
echo "provision-etcdops: installed $version"
