#!/usr/bin/env bash
# Every check CI runs: dependencies, formatting, lints, then every test (unit and
# integration, against real etcd 3.4 and 3.5 processes), then the Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# Lints of the scripts, the Vagrantfile and the systemd units (no hypervisor here).
scripts/lint-ops.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets -- --test-threads="${ETCDOPS_TEST_THREADS:-4}"
# The .deb: build, dpkg -i, --version, man, units, dpkg -r.
scripts/test-deb.sh
