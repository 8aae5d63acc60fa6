#!/usr/bin/env bash
# Builds the operator image (Dockerfile) and the runner image (Dockerfile.runner)
# without a container registry or engine: the base images are made here from
# Debian's packages with mmdebstrap, the Dockerfiles are built with buildah
# (chroot isolation, host network for RUN steps), and the results are written as
# docker archives that `ctr images import` (containerd) reads. docs/images.md.
#
#   e2e/images.sh build     # build if needed; prints the two archive paths
#   e2e/images.sh verify    # run each image's entrypoint with runc (read-only rootfs, non-root)
#   e2e/images.sh paths     # print the archive paths of the current inputs (built or not)
#   e2e/images.sh import    # import the archives into containerd (CONTAINERD_ADDRESS: e2e/node.sh env)
#
# Everything lives under the same cache root as e2e/tools/build.sh, keyed by
# the inputs (the base recipes, the host's Rust toolchain and Node.js, the
# repository's files), so a second `build` with the same inputs is a no-op.
# Progress goes to stderr and, when IMAGES_STATUS names a file, there too.
# Needs root (mmdebstrap, buildah, runc).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

cache_root="${CLAUDE_OPERATOR_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/claude-operator/e2e}"
img_root="$cache_root/images"
status_file="${IMAGES_STATUS:-}"

OPERATOR_IMAGE=localhost/claude-operator:dev
RUNNER_IMAGE=localhost/claude-operator-runner:dev
# Cargo.toml's profile for the test images (the Dockerfiles default to release).
CARGO_PROFILE="${IMAGES_CARGO_PROFILE:-test-image}"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# What rust:1-slim-bookworm adds to Debian for a cargo build (aws-lc-sys and ring
# compile C with cc; no cmake needed).
BUILDER_PACKAGES=ca-certificates,gcc,libc6-dev,make,pkg-config
# debian:bookworm-slim leaves out documentation, manual pages and translations.
SLIM_DPKG_OPTS=(
  "--dpkgopt=path-exclude=/usr/share/doc/*"
  "--dpkgopt=path-include=/usr/share/doc/*/copyright"
  "--dpkgopt=path-exclude=/usr/share/man/*"
  "--dpkgopt=path-exclude=/usr/share/info/*"
  "--dpkgopt=path-exclude=/usr/share/locale/*"
  "--dpkgopt=path-exclude=/usr/share/groff/*"
  "--dpkgopt=path-exclude=/usr/share/lintian/*"
)

log() {
  echo "images.sh: $*" >&2
  if [[ -n "$status_file" ]]; then echo "$(date -u +%H:%M:%SZ) $*" >>"$status_file"; fi
}
die() { log "FAILED: $*"; exit 1; }
need_root() { [[ $(id -u) -eq 0 ]] || die "needs root (mmdebstrap, buildah, runc)"; }
need_tools() {
  local t missing=()
  for t in mmdebstrap buildah skopeo umoci runc jq; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]} (e2e/ensure-deps.sh installs them)"
}

# buildah keeps its own storage under the cache root, apart from any system
# storage. overlay is tried first (fast); vfs (copies every layer) if the kernel
# or file system refuses overlay mounts.
storage_driver() {
  if [[ -n "${BUILDAH_STORAGE_DRIVER:-}" ]]; then echo "$BUILDAH_STORAGE_DRIVER"; return; fi
  local f="$img_root/storage-driver"
  if [[ -f "$f" ]]; then cat "$f"; return; fi
  mkdir -p "$img_root"
  local probe lower upper work merged driver=vfs
  probe="$(mktemp -d "$img_root/overlay-probe.XXXXXX")"
  lower="$probe/l" upper="$probe/u" work="$probe/w" merged="$probe/m"
  mkdir -p "$lower" "$upper" "$work" "$merged"
  if mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged" 2>/dev/null; then
    umount "$merged"
    driver=overlay
  fi
  rm -rf "$probe"
  echo "$driver" >"$f"
  echo "$driver"
}
bah() {
  buildah --root "$img_root/storage" --runroot "$img_root/run" --storage-driver "$(storage_driver)" "$@"
}
have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

hash_of() { sha256sum | cut -c1-16; }
# The recipe of each base, as text: a change to it changes the key.
base_recipe() {
  declare -p DEBIAN_SUITE DEBIAN_MIRROR DEBIAN_SECURITY_MIRROR SLIM_DPKG_OPTS
  sed -n '/^make_debian()/,/^}/p' "${BASH_SOURCE[0]}"
}
runtime_key() { { base_recipe; echo runtime; } | hash_of; }
builder_key() {
  { base_recipe; declare -p BUILDER_PACKAGES; rustc -vV; cargo -V; sed -n '/^make_builder()/,/^}/p' "${BASH_SOURCE[0]}"; } | hash_of
}
node_key() {
  { base_recipe; node --version; npm --version; sed -n '/^make_node()/,/^}/p' "${BASH_SOURCE[0]}"; } | hash_of
}
runtime_ref() { echo "localhost/claude-operator-base/debian:$DEBIAN_SUITE-slim-$(runtime_key)"; }
builder_ref() { echo "localhost/claude-operator-base/rust:$DEBIAN_SUITE-$(builder_key)"; }
node_ref() { echo "localhost/claude-operator-base/node:$DEBIAN_SUITE-slim-$(node_key)"; }

# The files of the build context: what git tracks or would track, as in the
# working tree (so a local change is built), less what .dockerignore leaves
# out (never target/ or .git). Only .dockerignore's plain top-level paths and
# root globs (`*.md`) are understood; anything else stops the build rather
# than letting this context differ from a Docker builder's.
ignored_patterns() {
  local line
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    [[ "$line" =~ ^[A-Za-z0-9._*-]+(/[A-Za-z0-9._-]+)*$ ]] ||
      die ".dockerignore: unsupported pattern '$line' (plain paths and root globs only)"
    printf '%s\n' "$line"
  done <"$repo/.dockerignore"
}
context_files() {
  local patterns
  mapfile -t patterns < <(ignored_patterns)
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do
      [[ -f "$f" ]] || continue
      for p in "${patterns[@]}"; do
        # A glob matches at the root only (a Docker `*` never crosses a `/`).
        if [[ "$f" == "$p" || "$f" == "$p"/* ]] || [[ "$p" == *'*'* && "$f" != */* && "$f" == $p ]]; then
          continue 2
        fi
      done
      printf '%s\0' "$f"
    done)
}
# The key: every context file's content, except the root files of the test,
# bench and example targets, which count by name only: cargo needs them to
# exist to read Cargo.toml, but no image holds anything built from them, so
# editing a test does not rebuild the images.
context_key() {
  { (cd "$repo" && context_files | sort -z | while IFS= read -r -d '' f; do
      case "$f" in tests/* | benches/* | examples/*) echo "name only: $f" ;; *) sha256sum "$f" ;; esac
    done); base_recipe; builder_key; runtime_key; node_key
    declare -p CARGO_PROFILE; sed -n '/^build_app()/,/^}/p' "${BASH_SOURCE[0]}"; } | hash_of
}
app_dir() { echo "$img_root/app-$(context_key)"; }

# A Debian root file system from Debian's packages, imported as an image.
make_debian() { # ref, extra packages (comma list, may be empty)
  local ref="$1" include="$2" tmp start=$SECONDS
  tmp="$(mktemp -d "$img_root/debootstrap.XXXXXX")"
  log "mmdebstrap $DEBIAN_SUITE minbase${include:+ + $include} -> $ref"
  mmdebstrap --quiet --variant=minbase ${include:+--include="$include"} "${SLIM_DPKG_OPTS[@]}" \
    --aptopt='APT::Install-Recommends "false"' \
    "$DEBIAN_SUITE" "$tmp/rootfs.tar" \
    "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" \
    "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main" \
    "deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main" >&2
  local ctr
  ctr="$(bah from scratch)"
  bah add "$ctr" "$tmp/rootfs.tar" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
  bah commit --quiet --rm "$ctr" "$ref" >/dev/null
  rm -rf "$tmp"
  log "made $ref in $((SECONDS - start))s"
}

# Stands in for rust:1-*-bookworm: Debian + this machine's Rust toolchain at the
# paths the official image uses (CARGO_HOME=/usr/local/cargo).
make_builder() {
  local ref="$1" sysroot ctr
  sysroot="$(rustc --print sysroot)"
  local base="$ref-debian"
  have_image "$base" || make_debian "$base" "$BUILDER_PACKAGES"
  log "copying the Rust toolchain ($(rustc -V)) into $ref"
  ctr="$(bah from "$base")"
  local mnt
  mnt="$(bah mount "$ctr")"
  mkdir -p "$mnt/usr/local/rust" "$mnt/usr/local/cargo/bin"
  # Documentation is most of a toolchain's size and no build reads it.
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$mnt/usr/local/rust" -xf -
  for b in cargo rustc rustdoc; do ln -sf "../../rust/bin/$b" "$mnt/usr/local/cargo/bin/$b"; done
  bah umount "$ctr" >/dev/null
  bah config --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  bah commit --quiet --rm "$ctr" "$ref" >/dev/null
  bah rmi "$base" >/dev/null
}

# Stands in for node:22-bookworm-slim: Debian slim + this machine's Node.js and
# npm, laid out as in that image (node in /usr/local/bin, so npm's global
# prefix, and with it the `claude` command, is /usr/local).
make_node() {
  local ref="$1" ctr mnt node_bin npm_dir
  node_bin="$(readlink -f "$(command -v node)")"
  npm_dir="$(cd "$(dirname "$(readlink -f "$(command -v npm)")")/.." && pwd)"
  [[ -f "$npm_dir/bin/npm-cli.js" ]] || die "cannot find npm's package directory (from $(command -v npm))"
  log "copying Node.js $(node --version) and npm $(npm --version) into $ref"
  ctr="$(bah from "$(runtime_ref)")"
  mnt="$(bah mount "$ctr")"
  install -D -m 0755 "$node_bin" "$mnt/usr/local/bin/node"
  mkdir -p "$mnt/usr/local/lib/node_modules"
  cp -a "$npm_dir" "$mnt/usr/local/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$mnt/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$mnt/usr/local/bin/npx"
  bah umount "$ctr" >/dev/null
  bah config --env NODE_VERSION="$(node --version)" --cmd node "$ctr"
  bah commit --quiet --rm "$ctr" "$ref" >/dev/null
}

# The runtime base (and the Node base on it) and the builder base are made
# side by side: both are mostly downloads and dpkg, not CPU.
ensure_bases() {
  local start=$SECONDS pid rc=0
  { have_image "$(runtime_ref)" || make_debian "$(runtime_ref)" ""
    have_image "$(node_ref)" || make_node "$(node_ref)"; } &
  pid=$!
  have_image "$(builder_ref)" || make_builder "$(builder_ref)" || rc=$?
  wait "$pid" || rc=$?
  ((rc == 0)) || die "making the base images"
  log "bases ready in $((SECONDS - start))s"
}

# One Dockerfile, as written, with the common arguments; its log in the
# output dir, its time on the status line.
bud() { # out dir, name, Dockerfile, image, extra arguments...
  local out="$1" name="$2" file="$3" image="$4" start=$SECONDS; shift 4
  log "building $image from $file"
  bah bud "${common[@]}" "$@" -f "$ctx/$file" -t "$image" "$ctx" >"$out.partial/$name-build.log" 2>&1 ||
    { tail -30 "$out.partial/$name-build.log" >&2; die "$name image build (log: $out.partial/$name-build.log)"; }
  log "built $image in $((SECONDS - start))s"
}

# The two Dockerfiles, as written, on the local bases, with the cheaper
# `test-image` cargo profile (Cargo.toml). The cargo registry and one target
# directory are mounted into both builds (the Dockerfiles copy the binary out
# of target/), so the binary is compiled once: the two builds run side by
# side, the runner's cargo step waits on cargo's lock and then finds the
# binary built, while its apt and npm steps (downloads) run next to the
# operator's compile (`--jobs 2`: a Dockerfile's stages in parallel). A
# rebuild compiles only what changed.
build_app() { # output dir
  local out="$1" ctx
  ctx="$(mktemp -d "$img_root/context.XXXXXX")"
  (cd "$repo" && context_files | tar --null -T - -cf -) | tar -C "$ctx" -xf -
  local cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  mkdir -p "$cargo_home/registry" "$img_root/cargo-target"
  local common=(--isolation chroot --network host --pull=never --layers=false --jobs 2
    -v "$cargo_home/registry:/usr/local/cargo/registry"
    -v "$img_root/cargo-target:/src/target"
    --build-arg "RUST_IMAGE=$(builder_ref)" --build-arg "CARGO_PROFILE=$CARGO_PROFILE")
  # A machine whose HTTPS goes through a proxy with its own CA (npm's
  # `cafile`): npm inside the build trusts that CA too, through a global
  # npmrc mounted for the RUN steps only (never part of an image).
  local cafile
  cafile="$(npm config get cafile 2>/dev/null || true)"
  if [[ -f "$cafile" ]]; then
    printf 'cafile=/usr/local/etc/build-ca.crt\n' >"$img_root/build-npmrc"
    common+=(-v "$img_root/build-npmrc:/usr/local/etc/npmrc:ro" -v "$cafile:/usr/local/etc/build-ca.crt:ro")
  fi
  local pid rc=0
  bud "$out" operator Dockerfile "$OPERATOR_IMAGE" --build-arg "RUNTIME_IMAGE=$(runtime_ref)" &
  pid=$!
  bud "$out" runner Dockerfile.runner "$RUNNER_IMAGE" --build-arg "NODE_IMAGE=$(node_ref)" || rc=$?
  wait "$pid" || rc=$?
  ((rc == 0)) || exit 1
  rm -rf "$ctx"
  bah push --quiet "$OPERATOR_IMAGE" "docker-archive:$out.partial/claude-operator.tar:$OPERATOR_IMAGE" >&2
  bah push --quiet "$RUNNER_IMAGE" "docker-archive:$out.partial/claude-operator-runner.tar:$RUNNER_IMAGE" >&2
}

cmd_build() {
  need_root; need_tools
  mkdir -p "$img_root"
  # One build at a time on this cache (e2e/run-tests.sh starts one early; a
  # test may ask for the same images): the second waits, then finds them built.
  exec 9>"$img_root/build.lock"
  flock 9
  local out
  out="$(app_dir)"
  if [[ -f "$out/.complete" ]]; then
    log "up to date: $out"
  else
    log "building (storage driver $(storage_driver), cache $img_root)"
    ensure_bases
    rm -rf "$out.partial"; mkdir -p "$out.partial"
    build_app "$out"
    sizes "$out.partial" >"$out.partial/sizes.txt"
    rm -rf "$out"; mv "$out.partial" "$out"
    touch "$out/.complete"
    log "sizes: $(tr '\n' ' ' <"$out/sizes.txt")"
    # The archives of older inputs and the images they replaced (about 2 GB a
    # build) would fill the disk: only the newest are kept.
    local old
    for old in "$img_root"/app-*; do
      [[ "$old" == "$out" || ! -d "$old" ]] || rm -rf "$old"
    done
    bah rmi --prune >/dev/null 2>&1 || true
  fi
  log "archives: $out/claude-operator.tar $out/claude-operator-runner.tar"
  echo "$out/claude-operator.tar"
  echo "$out/claude-operator-runner.tar"
}

# Each image's size as buildah stores it (uncompressed layers) and its archive's.
sizes() {
  local dir="$1" ref a
  for ref in "$OPERATOR_IMAGE" "$RUNNER_IMAGE"; do
    a="$(basename "${ref%%:*}")"
    echo "$a image $(bah images --noheading --format '{{.Size}}' "$ref") archive $(du -m "$dir/$a.tar" | cut -f1)MB"
  done
}

# Each archive is unpacked once per `verify` (into $verify_tmp), then run as
# often as needed on its read-only root file system.
unpacked() { # archive: prints the unpacked bundle's directory
  local dir
  dir="$verify_tmp/$(basename "$1" .tar)"
  if [[ ! -d "$dir/bundle" ]]; then
    mkdir -p "$dir"
    skopeo copy --quiet "docker-archive:$1" "oci:$dir/oci:img" >&2
    umoci unpack --image "$dir/oci:img" "$dir/bundle" >/dev/null
  fi
  echo "$dir/bundle"
}

# Runs an image's command with runc the way the chart's pods run it: the given
# uid, read-only root file system, no capabilities, no new privileges, emptyDirs
# (tmpfs here) only where the pod has them. Prints the command's output.
run_in() { # archive, uid, writable dirs (comma list), command...
  local archive="$1" uid="$2" writable="$3"; shift 3
  local image bundle id
  image="$(unpacked "$archive")"
  bundle="$(mktemp -d "$verify_tmp/run.XXXXXX")"
  id="images-verify-$(basename "$bundle" | cut -d. -f2)"
  local mounts='[]' d
  IFS=, read -ra dirs <<<"$writable"
  for d in "${dirs[@]}"; do
    mounts="$(jq --arg d "$d" --arg u "$uid" '. + [{destination: $d, type: "tmpfs", source: "tmpfs",
      options: ["nosuid", "nodev", "mode=1777", "size=64m"]}]' <<<"$mounts")"
  done
  local args
  args="$(printf '%s\n' "$@" | jq -R . | jq -s .)"
  jq --argjson uid "$uid" --argjson mounts "$mounts" --argjson args "$args" --arg rootfs "$image/rootfs" '
    .process.args = $args | .process.terminal = false
    | .process.user = {uid: $uid, gid: $uid} | .process.noNewPrivileges = true
    | .process.capabilities = {bounding: [], effective: [], inheritable: [], permitted: [], ambient: []}
    | .root = {path: $rootfs, readonly: true} | .mounts += $mounts
    | del(.process.oomScoreAdj)' <"$image/config.json" >"$bundle/config.json"
  local rc=0
  runc --root "$verify_tmp/state" run --bundle "$bundle" "$id" </dev/null || rc=$?
  runc --root "$verify_tmp/state" delete --force "$id" >/dev/null 2>&1 || true
  return "$rc"
}

cmd_verify() {
  need_root; need_tools
  local out
  out="$(app_dir)"
  [[ -f "$out/.complete" ]] || die "no archives for the current inputs; run e2e/images.sh build"
  verify_tmp="$(mktemp -d /tmp/images-verify.XXXXXX)"
  trap 'rm -rf "$verify_tmp"' EXIT
  local o
  o="$(run_in "$out/claude-operator.tar" 65532 /tmp /usr/local/bin/claude-operator --version)" ||
    die "operator image: claude-operator --version failed"
  log "operator image, uid 65532, read-only root: $o"
  o="$(run_in "$out/claude-operator.tar" 65532 /tmp /usr/bin/git --version)" || die "operator image: git --version failed"
  log "operator image: $o"
  o="$(run_in "$out/claude-operator-runner.tar" 10001 /tmp,/home/runner,/workspace /usr/local/bin/claude --version)" ||
    die "runner image: claude --version failed"
  log "runner image, uid 10001, read-only root: claude $o"
  o="$(run_in "$out/claude-operator-runner.tar" 10001 /tmp,/home/runner,/workspace /usr/local/bin/claude-operator --version)" ||
    die "runner image: claude-operator --version failed"
  log "runner image: $o"
  # The read-only root file system really is read-only to the image's user.
  if run_in "$out/claude-operator-runner.tar" 10001 /tmp /bin/sh -c 'echo x > /usr/local/bin/x' 2>/dev/null; then
    die "runner image: a write outside the emptyDirs succeeded"
  fi
  log "runner image: a write to /usr/local/bin fails, as it should"
  log "verified"
}

cmd_import() {
  local out
  out="$(app_dir)"
  [[ -f "$out/.complete" ]] || die "no archives for the current inputs; run e2e/images.sh build"
  [[ -n "${CONTAINERD_ADDRESS:-}" ]] || die "set CONTAINERD_ADDRESS (containerd's socket) to import into: eval \"\$(e2e/node.sh env)\""
  command -v ctr >/dev/null || die "ctr (containerd's client) is not on PATH"
  local a
  for a in claude-operator claude-operator-runner; do
    ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images import "$out/$a.tar" >&2 ||
      die "importing $a into containerd at $CONTAINERD_ADDRESS"
  done
  log "imported $OPERATOR_IMAGE and $RUNNER_IMAGE into containerd at $CONTAINERD_ADDRESS"
}

case "${1:-}" in
  build) cmd_build ;;
  verify) cmd_verify ;;
  paths) out="$(app_dir)"; echo "$out/claude-operator.tar"; echo "$out/claude-operator-runner.tar" ;;
  import) cmd_import ;;
  *) echo "usage: e2e/images.sh build|verify|paths|import" >&2; exit 2 ;;
esac
