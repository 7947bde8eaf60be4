# The etcd releases etcdops is tested against, sourced by the scripts (one place; the test
# harness's `Version` in tests/common/mod.rs and `etcdops --version` name the same three, and
# tests/version.rs checks that they agree). The newest 3.5 (>= 3.5.26, the floor before a 3.6
# upgrade), 3.6 and 3.7 that the Go module proxy serves; 3.6 is what supported kubeadm ships.
# shellcheck shell=bash
# shellcheck disable=SC2034
ETCD_MATRIX=(3.5.36 3.6.17 3.7.4)
ETCD_DEFAULT=3.6.17
ETCDOPS_DEPS=${ETCDOPS_DEPS:-/var/cache/etcdops-deps}
# etcd_dir VERSION: where scripts/build-etcd.sh put that release's etcd, etcdctl and etcdutl.
etcd_dir() { echo "$ETCDOPS_DEPS/etcd-$1"; }
