#!/usr/bin/env bash
# Builds the local control plane's binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, helm) from the Go module proxy at the versions
# pinned by the go.mod/go.sum files beside this script, into a cache directory outside
# the repository keyed by a hash of those pins. A second call with the same pins is a
# no-op. Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The key covers every input that changes the binaries: the pins, this script and Go itself.
key="$( { cat "$here"/*/go.mod "$here"/*/go.sum "$here/build.sh"; go version; } | sha256sum | cut -c1-16)"
cache_root="${CLAUDE_OPERATOR_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/claude-operator/e2e}"
out="$cache_root/$key"
bin="$out/bin"
if [[ -f "$out/.complete" ]]; then
  echo "$bin"
  exit 0
fi

k8s_version="$(cd "$here/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
[[ "$k8s_version" == v1.* ]] || { echo "cannot tell the pinned Kubernetes version" >&2; exit 1; }
minor="$(echo "$k8s_version" | cut -d. -f2)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
build() { # module dir, output (a file, or the bin dir for several packages), ldflags, packages...
  local dir="$1" output="$2" flags="$3"; shift 3
  echo "building $* ..." >&2
  local start=$SECONDS
  (cd "$here/$dir" && go build -ldflags "$flags" -o "$output" "$@")
  echo "built $dir in $((SECONDS - start))s" >&2
}
# etcd's main package is its module root, which go would name "server".
build etcd "$bin.partial/etcd" "-s -w" go.etcd.io/etcd/server/v3
build kwok "$bin.partial/kwok" "-s -w" sigs.k8s.io/kwok/cmd/kwok
build helm "$bin.partial/helm" "-s -w" helm.sh/helm/v3/cmd/helm
build kubernetes "$bin.partial/" "$ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl

rm -rf "$bin"
mv "$bin.partial" "$bin"
touch "$out/.complete"
echo "$bin"
