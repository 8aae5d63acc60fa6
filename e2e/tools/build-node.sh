#!/usr/bin/env bash
# Builds the real node's binaries from the Go module proxy at the versions pinned by
# the go.mod/go.sum files under node/: containerd, ctr and containerd-shim-runc-v2
# (node/containerd), the CNI plugins bridge, host-local, loopback and portmap
# (node/cni), kubelet and kube-proxy (node/kubernetes, the control plane's Kubernetes
# release) and kube-router (node/kube-router, NetworkPolicy only), plus a static
# `pause` from the pinned Kubernetes source. Same cache scheme as build.sh: a
# directory outside the repository keyed by a hash of the pins; a second call with
# the same pins is a no-op. Prints the bin directory on stdout; progress on stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

key="node-$( { cat "$here"/node/*/go.mod "$here"/node/*/go.sum "$here/build-node.sh"; go version; gcc --version | head -1; } | sha256sum | cut -c1-16)"
cache_root="${CLAUDE_OPERATOR_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/claude-operator/e2e}"
out="$cache_root/$key"
bin="$out/bin"
if [[ -f "$out/.complete" ]]; then
  echo "$bin"
  exit 0
fi

modver() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }
k8s_version="$(modver node/kubernetes k8s.io/kubernetes)"
plane_version="$(modver kubernetes k8s.io/kubernetes)"
# A kubelet newer or older than the apiserver is a different test: refuse rather than drift.
[[ "$k8s_version" == "$plane_version" ]] || {
  echo "node/kubernetes pins $k8s_version but the control plane pins $plane_version" >&2; exit 1; }
[[ "$k8s_version" == v1.* ]] || { echo "cannot tell the pinned Kubernetes version" >&2; exit 1; }
minor="$(echo "$k8s_version" | cut -d. -f2)"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
ctrd_version="$(modver node/containerd github.com/containerd/containerd/v2)"
cni_version="$(modver node/cni github.com/containernetworking/plugins)"
kr_version="$(modver node/kube-router github.com/cloudnativelabs/kube-router/v2)"

mkdir -p "$bin.partial"
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
build() { # module dir, output (a file, or the bin dir for several packages), ldflags, packages...
  local dir="$1" output="$2" flags="$3"; shift 3
  echo "building $* ..." >&2
  local start=$SECONDS
  (cd "$here/$dir" && go build -ldflags "$flags" -o "$output" "$@")
  echo "built $dir in $((SECONDS - start))s" >&2
}
# containerd needs cgo (its snapshotters and seccomp); the storage drivers we do not use
# (btrfs, devmapper, zfs, aufs) are left out so no extra C headers are needed.
CGO_ENABLED=1 GOFLAGS="$GOFLAGS -tags=no_btrfs,no_devmapper,no_zfs,no_aufs" build node/containerd "$bin.partial/" \
  "-s -w -X github.com/containerd/containerd/v2/version.Version=$ctrd_version" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/ctr \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
export CGO_ENABLED=0
mkdir -p "$bin.partial/cni"
build node/cni "$bin.partial/cni/" \
  "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version" \
  github.com/containernetworking/plugins/plugins/main/bridge \
  github.com/containernetworking/plugins/plugins/ipam/host-local \
  github.com/containernetworking/plugins/plugins/main/loopback \
  github.com/containernetworking/plugins/plugins/meta/portmap
build node/kube-router "$bin.partial/kube-router" \
  "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$kr_version -X github.com/cloudnativelabs/kube-router/v2/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
  github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
build node/kubernetes "$bin.partial/" "$k8s_ldflags" \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy

# The pod sandbox's "pause" process, from the pinned Kubernetes source (no registry to pull
# registry.k8s.io/pause from). Static so the image needs nothing but the binary.
k8s_dir="$(cd "$here/node/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
gcc -Os -static -Wall -Werror -DVERSION="\"$k8s_version\"" -o "$bin.partial/pause" "$k8s_dir/build/pause/linux/pause.c"
strip "$bin.partial/pause"

rm -rf "$bin"
mv "$bin.partial" "$bin"
touch "$out/.complete"
echo "$bin"
