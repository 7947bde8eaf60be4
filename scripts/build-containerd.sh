#!/usr/bin/env bash
# Builds containerd, its runc shim and ctr of one release from the published Go module into a
# cache outside the clone, keyed by version; does nothing when that version is there already.
#
#   scripts/build-containerd.sh 2.3.7   # -> $ETCDOPS_DEPS/containerd-2.3.7/{containerd,containerd-shim-runc-v2,ctr}
#
# Why not Debian's: bookworm ships containerd 1.6.20 and kubelet 1.36+ no longer supports
# containerd 1.x (docs/lab-real-kubelet.md). containerd's go.mod has no replace directives,
# so the commands build straight from the module. Built the way its Makefile's static
# release is: no cgo (which also leaves out the btrfs snapshotter), no docs in the CLI, and a
# shim without gRPC. runc itself comes from Debian (`apt-get install runc`).
set -euo pipefail

version=${1:?usage: build-containerd.sh VERSION (e.g. 2.3.7)}
deps=${ETCDOPS_DEPS:-/var/cache/etcdops-deps}
out="$deps/containerd-$version"
bins=(containerd containerd-shim-runc-v2 ctr)
have=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || have=0; done
[ "$have" = 1 ] && exit 0
command -v go >/dev/null 2>&1 || { echo "build-containerd: go not found (Go 1.26 is needed)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

mod=github.com/containerd/containerd/v2
if ! log=$(go mod download -json "$mod@v$version" 2>&1); then
  echo "build-containerd: module $mod@v$version: $(printf '%s' "$log" | tr '\n' ' ')" >&2
  exit 1
fi
src=$(printf '%s' "$log" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
ldflags="-s -w -X $mod/version.Version=v$version -X $mod/version.Revision=gomod-v$version -X $mod/version.Package=$mod"
mkdir -p "$out.tmp"
# Build inside the module's own directory (read-only in the module cache, but `go build -o`
# writes only the output); its go.mod and go.sum pin every dependency.
cd "$src"
for b in "${bins[@]}"; do
  tags="urfave_cli_no_docs osusergo netgo"
  [ "$b" = containerd-shim-runc-v2 ] && tags="$tags no_grpc"
  if ! log=$(go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$out.tmp/$b" "./cmd/$b" 2>&1); then
    echo "build-containerd: go build $mod/cmd/$b@v$version: $(printf '%s' "$log" | tail -n 5 | tr '\n' ' ')" >&2
    exit 1
  fi
done
got=$("$out.tmp/containerd" --version | awk '{print $3}')
if [ "$got" != "v$version" ]; then
  echo "build-containerd: built containerd says version '$got', wanted v$version" >&2
  exit 1
fi
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-containerd: containerd $version in $out"
