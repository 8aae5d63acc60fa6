#!/usr/bin/env bash
# Runs a command the way a Kubernetes node with containerd would run the
# runner pod's container (src/sandbox/pod.rs), with runc and an OCI config
# from ocispec/ (containerd's and kubelet's own code; see README.md).
#
#   e2e/podsandbox/run.sh [--variant NAME] [--secrets DIR] [--mount SRC:DST:ro|rw]...
#                         [--env K=V]... [--cwd DIR] [--volumes DIR] [--keep] -- command args...
#
# --variant   a pod-spec variant (run.sh --list shows them); default runtime-default
# --secrets   a directory whose files become the Secret volume at
#             /run/claude-operator/secrets (kubelet's layout: ..data symlinks, 0440, group fsGroup)
# --volumes   where the emptyDirs (workspace, home, tmp) and termination-log live on
#             the host (default: inside the temporary bundle, removed afterwards)
# --mount     more read-only or writable binds, e.g. the runner binary
# --keep      keep the bundle (prints its path)
# --list      print the variants; --admit NAME: Pod Security's verdict on the pod in that variant;
#             --seccomp-profile default|localhost: the RuntimeDefault profile, or the Localhost
#             one of the localhost* variants (RuntimeDefault + what bubblewrap needs), as OCI JSON
# The root file system is read-only: the host's /usr and /etc (Debian's
# merged /usr: /bin, /lib, /lib64 and /sbin are symlinks into it), empty
# mount points, and what --mount adds. The host's network namespace is
# shared so that loopback servers are reachable; everything else is the
# pod's own. Needs root and runc (apt-get install runc). Exit status: the
# command's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

variant=runtime-default secrets="" volumes="" cwd=/workspace keep=0 list=0 admit="" profile=""
mounts=() envs=()
while (($#)); do
  case "$1" in
    --variant) variant="$2"; shift 2 ;;
    --secrets) secrets="$2"; shift 2 ;;
    --volumes) volumes="$2"; shift 2 ;;
    --mount) mounts+=("$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --cwd) cwd="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --list) list=1; shift ;;
    --admit) admit="$2"; shift 2 ;;
    --seccomp-profile) profile="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

# The generator, built once per (sources, Go version) into a cache directory.
key="$( { cat "$here"/ocispec/go.mod "$here"/ocispec/go.sum "$here"/ocispec/*.go; go version; } | sha256sum | cut -c1-16)"
cache="${CLAUDE_OPERATOR_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/claude-operator/e2e}/podsandbox-$key"
spec="$cache/podsandbox-spec"
if [[ ! -x "$spec" ]]; then
  echo "run.sh: building the OCI config generator (containerd, kubelet, pod-security-admission libraries) ..." >&2
  mkdir -p "$cache"
  partial="$(mktemp "$spec.XXXXXX")"
  (cd "$here/ocispec" && CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false -mod=readonly" go build -o "$partial" .)
  mv -f "$partial" "$spec"
fi
if ((list)); then "$spec" variants; exit 0; fi
if [[ -n "$admit" ]]; then "$spec" admit -variant "$admit"; exit; fi
if [[ -n "$profile" ]]; then "$spec" "seccomp-$profile"; exit; fi
(($#)) || { echo "run.sh: no command given (after --)" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "run.sh: needs root (runc)" >&2; exit 2; }
command -v runc >/dev/null || { echo "run.sh: needs runc (apt-get install runc)" >&2; exit 2; }
"$spec" variants | cut -f1 | grep -qx -- "$variant" || { echo "run.sh: unknown variant $variant" >&2; exit 2; }

uid=10001
userns_base=$((65536 * 8))
case "$variant" in
  *userns*) host_uid=$((userns_base + uid)) ;;
  *) host_uid=$uid ;;
esac

bundle="$(mktemp -d /tmp/podsandbox.XXXXXX)"
id="podsandbox-$(basename "$bundle" | cut -d. -f2)"
cleanup() {
  runc --root "$bundle/state" delete --force "$id" >/dev/null 2>&1 || true
  if ((keep)); then echo "run.sh: bundle kept at $bundle" >&2; else rm -rf "$bundle"; fi
}
trap cleanup EXIT
chmod 755 "$bundle"

# The image: empty mount points and merged-/usr symlinks.
root="$bundle/rootfs"
mkdir -p "$root"/{usr,etc,opt,proc,dev,sys,tmp,workspace,home/runner,run/claude-operator/secrets}
for d in bin lib lib64 sbin; do ln -s "usr/$d" "$root/$d"; done
chmod -R a+rX "$root"

# The pod's volumes: emptyDirs (0777, group fsGroup, as kubelet makes
# them), the termination log, and the Secret.
volumes="${volumes:-$bundle/volumes}"
mkdir -p "$volumes"/{workspace,home,tmp}
chgrp "$host_uid" "$volumes"/{workspace,home,tmp}
chmod 2777 "$volumes"/{workspace,home,tmp}
touch "$volumes/termination-log"
chmod 666 "$volumes/termination-log"
args=(
  -bundle-id "$id" -variant "$variant" -uid "$uid" -userns-base "$userns_base" -cwd "$cwd"
  -mount "bind:/usr:/usr:ro" -mount "bind:/etc:/etc:ro"
  -mount "bind:$volumes/workspace:/workspace:rw"
  -mount "bind:$volumes/home:/home/runner:rw"
  -mount "bind:$volumes/tmp:/tmp:rw"
  -mount "bind:$volumes/termination-log:/dev/termination-log:rw"
)
if [[ -n "$secrets" ]]; then
  # kubelet's atomic writer: the files in a timestamped directory, ..data
  # pointing at it, and each key a symlink through ..data.
  sec="$bundle/secrets"
  ts="..$(date -u +%Y_%m_%d_%H_%M_%S).000000001"
  mkdir -p "$sec/$ts"
  for f in "$secrets"/*; do
    name="$(basename "$f")"
    cp "$f" "$sec/$ts/$name"
    ln -s "..data/$name" "$sec/$name"
  done
  ln -s "$ts" "$sec/..data"
  # defaultMode 0400 with fsGroup: kubelet adds group read, group = fsGroup.
  chown -h "0:$host_uid" "$sec"/"$ts"/* && chmod 440 "$sec"/"$ts"/*
  chmod 1777 "$sec"
  chmod 755 "$sec/$ts"
  args+=(-mount "bind:$sec:/run/claude-operator/secrets:ro")
fi
for m in ${mounts[@]+"${mounts[@]}"}; do
  IFS=: read -r src dst mode <<<"$m"
  args+=(-mount "bind:$src:$dst:${mode:-ro}")
  # The mount point, in the image (runc could not make it under a
  # read-only or, in a user namespace, foreign-owned parent).
  if [[ -d "$src" ]]; then mkdir -p "$root$dst"; else mkdir -p "$(dirname "$root$dst")" && touch "$root$dst"; fi
done
# In a user-namespaced pod the image's files belong to the pod's ids (the
# runtime maps or chowns the snapshot); the host's /usr and /etc stay
# root's, which the pod sees as nobody.
if [[ $host_uid -ne $uid ]]; then chown -hR "$userns_base:$userns_base" "$root"; fi
for e in ${envs[@]+"${envs[@]}"}; do args+=(-env "$e"); done

"$spec" spec "${args[@]}" -- "$@" >"$bundle/config.json"
set +e
runc --root "$bundle/state" run --bundle "$bundle" "$id" </dev/null
status=$?
set -e
exit "$status"
