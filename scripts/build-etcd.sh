#!/usr/bin/env bash
# Builds etcd, etcdctl and etcdutl of one release from their published Go modules into a
# cache outside the clone, keyed by version; does nothing when that version is there already.
#
#   scripts/build-etcd.sh 3.6.17        # -> $ETCDOPS_DEPS/etcd-3.6.17/{etcd,etcdctl,etcdutl}
#
# `go install go.etcd.io/etcd/server/v3@vX` fails: etcd's go.mod files carry replace
# directives (../api, ../pkg, ...). So each release gets a small main module of ours that
# requires server, etcdctl and etcdutl at that version (they are tagged together at one
# commit, so their requirements agree), with the `go` line of that release's server/go.mod.
# GitSHA: the module proxy does not say which commit a version was tagged at, and the tools
# print "GitNotFound" when built outside git; we say where the binary came from instead.
set -euo pipefail

version=${1:?usage: build-etcd.sh VERSION (e.g. 3.6.17)}
deps=${ETCDOPS_DEPS:-/var/cache/etcdops-deps}
out="$deps/etcd-$version"
built() { [ -x "$out/etcd" ] && [ -x "$out/etcdctl" ] && [ -x "$out/etcdutl" ]; }
built && exit 0
# One build of a version at a time on this machine (two checkouts' install-deps may race).
mkdir -p "$deps"
exec 9>"$deps/.etcd-$version.lock"
flock 9
built && exit 0
command -v go >/dev/null 2>&1 || { echo "build-etcd: go not found (Go 1.26 is needed)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

server=go.etcd.io/etcd/server/v3
if ! mod=$(go mod download -json "$server@v$version" 2>&1); then
  echo "build-etcd: module $server@v$version: $(printf '%s' "$mod" | tr '\n' ' ')" >&2
  exit 1
fi
gomod=$(printf '%s' "$mod" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
goline=$(grep -m1 -E '^go [0-9.]+' "$gomod")

cat >go.mod <<MOD
module etcdops.local/etcd-build

$goline

require (
	go.etcd.io/etcd/server/v3 v$version
	go.etcd.io/etcd/etcdctl/v3 v$version
	go.etcd.io/etcd/etcdutl/v3 v$version
)
MOD
cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
GO
for m in server etcdctl etcdutl; do
  if ! log=$(go mod download "go.etcd.io/etcd/$m/v3@v$version" 2>&1); then
    echo "build-etcd: module go.etcd.io/etcd/$m/v3@v$version: $(printf '%s' "$log" | tr '\n' ' ')" >&2
    exit 1
  fi
done
if ! log=$(go mod tidy 2>&1); then
  echo "build-etcd: go mod tidy for etcd $version: $(printf '%s' "$log" | tail -n 5 | tr '\n' ' ')" >&2
  exit 1
fi
ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gomod-v$version"
mkdir -p "$out.tmp"
for pair in etcd:go.etcd.io/etcd/server/v3 etcdctl:go.etcd.io/etcd/etcdctl/v3 etcdutl:go.etcd.io/etcd/etcdutl/v3; do
  bin=${pair%%:*}
  pkg=${pair#*:}
  if ! log=$(CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/$bin" "$pkg" 2>&1); then
    echo "build-etcd: go build $pkg@v$version: $(printf '%s' "$log" | tail -n 5 | tr '\n' ' ')" >&2
    exit 1
  fi
done
got=$("$out.tmp/etcd" --version | sed -n 's/^etcd Version: //p')
if [ "$got" != "$version" ]; then
  echo "build-etcd: built etcd says version '$got', wanted $version (api/v3 selected at another version?)" >&2
  exit 1
fi
cp go.mod go.sum "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-etcd: etcd $version in $out"
