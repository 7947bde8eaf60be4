#!/usr/bin/env bash
# Every check CI runs: dependencies, formatting, lints, then every test (unit and
# integration, against real etcd 3.5, 3.6 and 3.7 processes), then the Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# Lints of the scripts, the Vagrantfile and the systemd units (no hypervisor here).
scripts/lint-ops.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# Kill anywhere (tests/kill_anywhere.rs): 40 SIGKILLs of `migrate apply` spread by time over
# a run (the issue's minimum), 4 of resume/rollback, 2 of each signal once and twice.
export ETCDOPS_KILL_INSTANTS="${ETCDOPS_KILL_INSTANTS:-40}"
export ETCDOPS_KILL_RECOVERY_INSTANTS="${ETCDOPS_KILL_RECOVERY_INSTANTS:-4}"
export ETCDOPS_KILL_SIGNAL_INSTANTS="${ETCDOPS_KILL_SIGNAL_INSTANTS:-2}"
# The migration end-to-end tests (tests/migrate.rs), kill-anywhere and tests/lab_systemd.rs
# boot 3-node systemd-nspawn labs (docs/lab.md); without systemd-nspawn they fail, never skip.
cargo test --all-targets -- --test-threads="${ETCDOPS_TEST_THREADS:-4}"
# The .deb: build, dpkg -i, --version, man, units, dpkg -r.
scripts/test-deb.sh
