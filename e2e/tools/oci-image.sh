#!/usr/bin/env bash
# Packs a directory into a single-layer OCI image archive that `ctr images import`
# accepts, without a registry or an image builder: the layer is a reproducible tar
# (sorted names, mtime 0, owner 0), the config and manifest are written by hand.
#
#   e2e/tools/oci-image.sh NAME ROOTFS OUT.tar [ENTRYPOINT...]
#
# NAME is the full image name containerd will list (e.g. localhost/claude-operator/pause:v1).
set -euo pipefail
(($# >= 3)) || { echo "usage: $0 NAME ROOTFS OUT.tar [ENTRYPOINT...]" >&2; exit 2; }
name="$1" rootfs="$2" out="$3"; shift 3
[[ -d "$rootfs" ]] || { echo "oci-image: $rootfs is not a directory" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
blobs="$work/blobs/sha256"
mkdir -p "$blobs"
put() { # file -> prints "sha256:<hex> <size>", moves the file into blobs/
  local hex size
  hex="$(sha256sum "$1" | cut -d' ' -f1)"
  size="$(stat -c %s "$1")"
  mv "$1" "$blobs/$hex"
  echo "sha256:$hex $size"
}
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer" .
read -r layer_digest layer_size < <(put "$work/layer")

entry=""
if (($#)); then
  entry="$(printf '"%s",' "$@")"
  entry="\"Entrypoint\":[${entry%,}],"
fi
printf '{"architecture":"amd64","os":"linux","config":{%s"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"e2e/tools/oci-image.sh"}],"created":"1970-01-01T00:00:00Z"}' \
  "$entry" "$layer_digest" >"$work/config"
read -r config_digest config_size < <(put "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest"
read -r manifest_digest manifest_size < <(put "$work/manifest")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$name" "${name##*:}" >"$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf "$out" oci-layout index.json blobs
