#!/usr/bin/env bash
# The .deb as an operator meets it, on this machine: build it (scripts/build-deb.sh),
# `dpkg -i`, then `etcdops --version` names this commit, `man etcdops-migrate` renders, the
# bash completion loads, the units pass `systemd-analyze verify` and are installed but not
# enabled, and `dpkg -r` leaves none of the package's files behind. Refuses to run where an
# etcdops package is already installed (it would replace someone's etcdops); removes its
# own on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "test-deb: $*" >&2
  exit 1
}

if dpkg-query -W -f='${Status}' etcdops 2>/dev/null | grep -q 'installed'; then
  fail "an etcdops package is already installed here; not replacing it (dpkg -r etcdops first)"
fi
for tool in dpkg man systemd-analyze cargo-deb; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found: run scripts/install-deps.sh"
done

deb=$(scripts/build-deb.sh | tail -n1)
[ -f "$deb" ] || fail "build-deb.sh printed no package (got: $deb)"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

installed=
cleanup() {
  if [ -n "$installed" ]; then dpkg -r etcdops >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

dpkg -i "$deb" >/dev/null
installed=1
mapfile -t files < <(dpkg -L etcdops)

# The lab is a test tool: it must not ship.
if printf '%s\n' "${files[@]}" | grep -q 'etcdops-lab'; then fail "the package ships etcdops-lab"; fi

version=$(etcdops --version)
want="(commit $commit; tested against etcd 3.5.36, 3.6.17 and 3.7.4; 3.4 and 3.5 before 3.5.26 are not supported)"
[[ $version == *"$want"* ]] || fail "etcdops --version: '$version', expected '$want'"
[ "$(command -v etcdops)" = /usr/bin/etcdops ] || fail "etcdops is $(command -v etcdops), not /usr/bin/etcdops"

page=$(MANPAGER=cat MANWIDTH=100 man etcdops-migrate 2>&1) || fail "man etcdops-migrate: $page"
grep -q 'etcdops-migrate' <<<"$page" || fail "man etcdops-migrate does not name the command: $page"
man -w etcdops-migrate-apply >/dev/null || fail "no man page etcdops-migrate-apply"

bash -c 'source /usr/share/bash-completion/completions/etcdops && complete -p etcdops' >/dev/null ||
  fail "the bash completion does not register for etcdops"

units=()
for f in "${files[@]}"; do
  case "$f" in /lib/systemd/system/*.service | /lib/systemd/system/*.timer) units+=("$f") ;; esac
done
# Every unit that build-deb.sh packs (contrib/systemd and contrib/prometheus), no more, no less.
want=$(find contrib/systemd contrib/prometheus -maxdepth 1 \( -name '*.service' -o -name '*.timer' \) | wc -l)
[ "${#units[@]}" -eq "$want" ] || fail "expected $want units (contrib/), the package has: ${units[*]}"
# The textfile unit's ReadWritePaths must exist for systemd to start it, not to verify it.
if ! out=$(systemd-analyze verify --man=no "${units[@]}" 2>&1) || [ -n "$out" ]; then
  fail "systemd-analyze verify: $out"
fi
for u in "${units[@]}"; do
  state=$(systemctl --root=/ is-enabled "$(basename "$u")" 2>/dev/null || true)
  # Timers and the textfile service have [Install] (disabled); the maintain service is
  # started by its timer only (static). Neither starts at boot until the operator enables.
  case "$state" in disabled | static) ;; *) fail "$(basename "$u") is '$state' after install" ;; esac
done

dpkg -r etcdops >/dev/null
installed=
status=$(dpkg-query -W -f='${Status}' etcdops 2>/dev/null || true)
case "$status" in "" | *not-installed) ;; *) fail "after dpkg -r: status '$status'" ;; esac
left=()
for f in "${files[@]}"; do
  # dpkg -L lists shared dirs too (/usr, /usr/share/man/man1): only ours must be gone.
  if [ -e "$f" ] && { [ ! -d "$f" ] || [[ $f == *etcdops* ]]; }; then left+=("$f"); fi
done
[ "${#left[@]}" -eq 0 ] || fail "left behind by dpkg -r: ${left[*]}"
echo "test-deb: $(basename "$deb"): installs, runs, man and units OK, removes cleanly"
