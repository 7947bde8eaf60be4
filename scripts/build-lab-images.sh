#!/usr/bin/env bash
# Builds the two container images the real-kubelet lab runs, as OCI image-layout archives that
# `ctr -n k8s.io images import` takes; nothing is pulled from a registry.
#
#   scripts/build-lab-images.sh ETCD_VERSION [K8S_VERSION]
#     -> $ETCDOPS_DEPS/images/etcd-<v>.oci.tar   tagged registry.k8s.io/etcd:<v>-0 (kubeadm's tag)
#     -> $ETCDOPS_DEPS/images/pause-<k8s>.oci.tar tagged registry.k8s.io/pause:3.10.2 (kubeadm's and containerd's sandbox image)
#
# etcd: our binaries from scripts/build-etcd.sh (static, CGO_ENABLED=0) in /usr/local/bin, as
# in the upstream image, so the manifest's `command: [etcd, ...]` finds them on PATH.
# pause: Kubernetes' own build/pause/linux/pause.c, read from the k8s.io/kubernetes module in
# the Go module cache, compiled with `gcc -static`. Each image is one layer; the archives are
# reproducible (sorted, mtime 0, uid/gid 0) and cached by name.
set -euo pipefail

etcd_version=${1:?usage: build-lab-images.sh ETCD_VERSION [K8S_VERSION]}
k8s_version=${2:-1.37.2}
deps=${ETCDOPS_DEPS:-/var/cache/etcdops-deps}
out="$deps/images"
pause_tag=${PAUSE_IMAGE:-registry.k8s.io/pause:3.10.2}
mkdir -p "$out"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }

# oci_archive NAME REF ROOTFS ENTRYPOINT_JSON ENV_JSON OUT: one-layer image of ROOTFS.
oci_archive() {
  local name=$1 ref=$2 rootfs=$3 entrypoint=$4 env=$5 dest=$6
  local lay="$work/$name-layout"
  mkdir -p "$lay/blobs/sha256"
  local layer="$work/$name-layer.tar"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$layer" .
  local diff_id
  diff_id=$(sha "$layer")
  gzip -n -9 -c "$layer" >"$work/$name-layer.tar.gz"
  local layer_digest layer_size
  layer_digest=$(sha "$work/$name-layer.tar.gz")
  layer_size=$(stat -c %s "$work/$name-layer.tar.gz")
  mv "$work/$name-layer.tar.gz" "$lay/blobs/sha256/$layer_digest"

  local config="$work/$name-config.json"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":%s,"Entrypoint":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"etcdops scripts/build-lab-images.sh"}]}' \
    "$env" "$entrypoint" "$diff_id" >"$config"
  local config_digest config_size
  config_digest=$(sha "$config")
  config_size=$(stat -c %s "$config")
  mv "$config" "$lay/blobs/sha256/$config_digest"

  local manifest="$work/$name-manifest.json"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$manifest"
  local manifest_digest manifest_size
  manifest_digest=$(sha "$manifest")
  manifest_size=$(stat -c %s "$manifest")
  mv "$manifest" "$lay/blobs/sha256/$manifest_digest"

  printf '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$ref" "${ref##*:}" >"$lay/index.json"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$lay" -cf "$dest.tmp" .
  mv "$dest.tmp" "$dest"
  echo "build-lab-images: $ref in $dest"
}

etcd_out="$out/etcd-$etcd_version.oci.tar"
if [ ! -s "$etcd_out" ]; then
  bin="$deps/etcd-$etcd_version"
  for b in etcd etcdctl etcdutl; do
    [ -x "$bin/$b" ] || { echo "build-lab-images: $bin/$b missing (run scripts/build-etcd.sh $etcd_version)" >&2; exit 1; }
  done
  root="$work/etcd-root"
  mkdir -p "$root/usr/local/bin" "$root/var/lib/etcd" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$bin/etcd" "$bin/etcdctl" "$bin/etcdutl" "$root/usr/local/bin/"
  oci_archive etcd "registry.k8s.io/etcd:$etcd_version-0" "$root" '["/usr/local/bin/etcd"]' \
    '["PATH=/usr/local/bin:/usr/bin:/bin"]' "$etcd_out"
fi

pause_out="$out/pause-$k8s_version.oci.tar"
if [ ! -s "$pause_out" ]; then
  command -v gcc >/dev/null 2>&1 || { echo "build-lab-images: gcc not found (apt-get install gcc libc6-dev)" >&2; exit 1; }
  mod=k8s.io/kubernetes
  if ! log=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$mod@v$k8s_version" 2>&1); then
    echo "build-lab-images: module $mod@v$k8s_version: $(printf '%s' "$log" | tr '\n' ' ')" >&2
    exit 1
  fi
  src=$(printf '%s' "$log" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')/build/pause/linux/pause.c
  [ -f "$src" ] || { echo "build-lab-images: $src missing from the module" >&2; exit 1; }
  root="$work/pause-root"
  mkdir -p "$root"
  gcc -Os -Wall -Werror -static -DVERSION="v$k8s_version-etcdops" -o "$root/pause" "$src"
  strip "$root/pause"
  oci_archive pause "$pause_tag" "$root" '["/pause"]' '["PATH=/"]' "$pause_out"
fi
