#!/usr/bin/env bash
# Builds one Kubernetes program (kubeadm or kubelet) of one release from the published Go
# module k8s.io/kubernetes into a cache outside the clone, keyed by version; does nothing when
# that binary is there already.
#
#   scripts/build-k8s.sh kubeadm 1.37.2   # -> $ETCDOPS_DEPS/kubernetes-1.37.2/kubeadm
#   scripts/build-k8s.sh kubelet 1.37.2   # -> $ETCDOPS_DEPS/kubernetes-1.37.2/kubelet
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# v0.0.0 and points them at ./staging/src/... with replace directives, which a module zip
# lacks and which only apply in its own repository. So each build gets a small main module
# of ours that requires k8s.io/kubernetes vX.Y.Z and replaces every staging module named in
# that release's own replace block with its published v0.Y.Z (one release for all k8s.io
# modules), with the `go` and `godebug` lines of that release's go.mod. go mod tidy picks
# the rest (k8s.io/kube-openapi and friends) from k8s.io/kubernetes's requirements.
#
# Version: without -X ldflags kubeadm calls itself v0.0.0-master and looks the release up on
# the network. We set what hack/lib/version.sh sets, for component-base and client-go:
# gitVersion, gitMajor, gitMinor, gitTreeState=archive (built from a source archive, as
# upstream says for tarball builds), buildDate = the release's tag time from the proxy, and
# gitCommit left empty: the module proxy does not say which commit a version was tagged at.
#
# Measured cold on the shared 2-core machine (load average 20-25 from other builds): kubeadm
# 1.37.2 1124 s, kubeadm 1.35.4 2596 s (niced), kubelet 1.37.2 about 34 minutes.
set -euo pipefail

usage="usage: build-k8s.sh kubeadm|kubelet VERSION (e.g. build-k8s.sh kubeadm 1.37.2)"
binary=${1:?$usage}
version=${2:?$usage}
version=${version#v}
case "$binary" in
  kubeadm | kubelet) ;;
  *) echo "build-k8s: unknown binary '$binary' ($usage)" >&2; exit 2 ;;
esac
if ! [[ "$version" =~ ^1\.([0-9]+)\.([0-9]+)$ ]]; then
  echo "build-k8s: version '$version' is not a release like 1.37.2 ($usage)" >&2
  exit 2
fi
minor=${BASH_REMATCH[1]}
patch=${BASH_REMATCH[2]}
staging_version="v0.$minor.$patch"

deps=${ETCDOPS_DEPS:-/var/cache/etcdops-deps}
out="$deps/kubernetes-$version"
if [ -x "$out/$binary" ]; then
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "build-k8s: go not found (Go 1.26 is needed)" >&2; exit 1; }
# One build of a binary and release at a time on the machine; a second caller waits for the
# first and then finds the binary.
mkdir -p "$deps"
exec 9>"$deps/.kubernetes-$version-$binary.lock"
flock 9
if [ -x "$out/$binary" ]; then
  exit 0
fi

start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}

k8s=k8s.io/kubernetes
if ! mod=$(go mod download -json "$k8s@v$version" 2>&1); then
  echo "build-k8s: module $k8s@v$version: $(printf '%s' "$mod" | tr '\n' ' ')" >&2
  exit 1
fi
gomod=$(printf '%s' "$mod" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
info=$(printf '%s' "$mod" | sed -n 's/.*"Info": "\(.*\)",*/\1/p')
goline=$(grep -m1 -E '^go [0-9.]+' "$gomod")
godebug=$(grep -E '^godebug ' "$gomod" || true)
# The staging modules: every `k8s.io/X => ./staging/src/k8s.io/X` of the release's go.mod.
staging=$(sed -n 's|^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*|\1|p' "$gomod")
if [ -z "$staging" ]; then
  echo "build-k8s: module $k8s@v$version: its go.mod has no ./staging replace block to follow" >&2
  exit 1
fi
build_date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")

{
  echo "module etcdops.local/k8s-build"
  echo
  echo "$goline"
  [ -z "$godebug" ] || { echo; echo "$godebug"; }
  echo
  echo "require $k8s v$version"
  echo
  echo "replace ("
  for m in $staging; do
    printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
  done
  echo ")"
} >go.mod
cat >tools.go <<GO
//go:build tools

package tools

import _ "$k8s/cmd/$binary"
GO

# Fetch each staging module first so that a missing one is named on its own.
for m in $staging; do
  case "$m" in
    # Examples: published, but nothing we build imports them; not worth a failure.
    k8s.io/sample-*) continue ;;
  esac
  if ! log=$(go mod download "$m@$staging_version" 2>&1); then
    echo "build-k8s: module $m@$staging_version (staging module of $k8s@v$version): $(printf '%s' "$log" | tr '\n' ' ')" >&2
    exit 1
  fi
done
if ! log=$(go mod tidy 2>&1); then
  echo "build-k8s: go mod tidy for $k8s@v$version ($binary): $(printf '%s' "$log" | tail -n 5 | tr '\n' ' ')" >&2
  exit 1
fi

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=archive -X $pkg.buildDate=$build_date"
done
mkdir -p "$out"
tmp="$out/.$binary.tmp.$$"
if ! log=$(CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp" "$k8s/cmd/$binary" 2>&1); then
  rm -f "$tmp"
  echo "build-k8s: go build $k8s/cmd/$binary@v$version: $(printf '%s' "$log" | tail -n 5 | tr '\n' ' ')" >&2
  exit 1
fi
case "$binary" in
  kubeadm) got=$("$tmp" version -o short 2>/dev/null || true) ;;
  kubelet) got=$("$tmp" --version 2>/dev/null | sed -n 's/^Kubernetes //p' || true) ;;
esac
if [ "$got" != "v$version" ]; then
  rm -f "$tmp"
  echo "build-k8s: built $binary says version '$got', wanted v$version (version ldflags not applied?)" >&2
  exit 1
fi
cp go.mod "$out/go.mod.$binary"
cp go.sum "$out/go.sum.$binary"
mv "$tmp" "$out/$binary"
echo "build-k8s: $binary v$version in $out ($(($(date +%s) - start)) s)"
