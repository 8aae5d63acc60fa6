#!/usr/bin/env bash
# Installs the few system packages the tests and the demo need that a fresh
# machine of this kind may lack: openssl and curl (control plane), git (runner
# tests), bubblewrap and socat (Claude Code's subprocess sandbox, used by the
# runner tests with the real CLI), npm (installs that CLI and GitHub's
# published webhook and OpenAPI descriptions), runc (tests/runner_pod_sandbox.rs
# runs the runner pod's container with it; the real node's containers too;
# e2e/images.sh verifies images with it), iptables, ipset, gcc (the real node:
# kube-proxy, kube-router, containerd's cgo and the pause binary), busybox-static
# and python3 (the real node's test image and test host), mmdebstrap, buildah,
# skopeo, umoci and jq (e2e/images.sh builds the images without a registry).
# Does nothing when all are there.
set -euo pipefail
declare -A pkg=([openssl]=openssl [curl]=curl [git]=git [bwrap]=bubblewrap [socat]=socat [npm]=npm [setsid]=util-linux [runc]=runc
  [iptables]=iptables [ipset]=ipset [gcc]=gcc [busybox]=busybox-static [python3]=python3
  [mmdebstrap]=mmdebstrap [buildah]=buildah [skopeo]=skopeo [umoci]=umoci [jq]=jq)
missing=()
for tool in "${!pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg[$tool]}")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "missing tools; install these packages first: ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
