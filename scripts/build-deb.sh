#!/usr/bin/env bash
# Builds target/debian/etcdops_<version>-1_<arch>.deb with cargo-deb (scripts/install-deps.sh
# installs it): the release binary `etcdops` (not the lab), then from that very binary the
# man pages (`etcdops man --out-dir`) and the bash/zsh/fish completions, and the contrib
# systemd units rewritten for the package's paths (/usr/bin/etcdops, /usr/sbin/etcdops-textfile
# instead of a hand install's /usr/local). Prints the path of the .deb on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --release --bin etcdops
bin=target/release/etcdops
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/systemd"

"$bin" man --out-dir "$assets/man" >/dev/null
# -n: no name or time in the gzip header, so the same binary gives the same package.
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/etcdops"
"$bin" completions zsh >"$assets/completions/_etcdops"
"$bin" completions fish >"$assets/completions/etcdops.fish"

for unit in contrib/systemd/*.service contrib/systemd/*.timer contrib/prometheus/*.service \
  contrib/prometheus/*.timer; do
  sed -e 's|/usr/local/bin/etcdops|/usr/bin/etcdops|g' \
    -e 's|/usr/local/sbin/etcdops-textfile|/usr/sbin/etcdops-textfile|g' \
    "$unit" >"$assets/systemd/$(basename "$unit")"
done
if grep -l '/usr/local' "$assets"/systemd/*; then
  echo "build-deb: a unit above still names /usr/local: teach this script its path" >&2
  exit 1
fi

cargo deb --no-build --quiet
