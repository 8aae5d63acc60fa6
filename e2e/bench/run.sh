#!/usr/bin/env bash
# Runs every benchmark of e2e/bench/ (see README.md there) and prints one JSON
# object per benchmark on stdout, one per line; progress goes to stderr.
#
#   e2e/bench/run.sh                       all: latency intake memory criterion gateway
#   BENCH_ONLY="latency memory" e2e/bench/run.sh
#   BENCH_KUBECONFIG=/path/admin.kubeconfig e2e/bench/run.sh   on a running control plane
#   BENCH_LATENCY_ARGS="--reconcile-concurrency 50" e2e/bench/run.sh   flags of `bench_operator latency`
#
# It builds the operator and the load generators with --release, brings up a
# control plane of its own on ports apart from the default ones (so it neither
# disturbs nor is disturbed by the end-to-end suite's), and takes it down again
# unless BENCH_KEEP=1 or it was already running. With BENCH_KUBECONFIG it uses
# that control plane instead (it must run kwok with e2e/kwok/stages.yaml, as
# e2e/cluster.sh does) and deletes what it made there. Everything is on loopback.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export CLAUDE_OPERATOR_E2E_STATE="${CLAUDE_OPERATOR_E2E_STATE:-/tmp/claude-operator-bench-state}"
export E2E_APISERVER_PORT="${E2E_APISERVER_PORT:-46443}"
export E2E_ETCD_PORT="${E2E_ETCD_PORT:-43790}"
export E2E_ETCD_PEER_PORT="${E2E_ETCD_PEER_PORT:-43800}"
export E2E_KCM_PORT="${E2E_KCM_PORT:-50257}"
export E2E_SCHEDULER_PORT="${E2E_SCHEDULER_PORT:-50259}"
export E2E_KWOK_PORT="${E2E_KWOK_PORT:-50247}"
export BENCH_WORK_DIR="${BENCH_WORK_DIR:-/tmp/claude-operator-bench}"
only="${BENCH_ONLY:-latency intake memory criterion gateway}"
target="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$BENCH_WORK_DIR"

log() { echo "bench: $*" >&2; }
wants() { [[ " $only " == *" $1 "* ]]; }

log "building claude-operator and the load generator (--release)"
(cd "$repo" && cargo build --release --bin claude-operator --example bench_operator --example bench_gateway) >"$BENCH_WORK_DIR/build.log" 2>&1 || {
  tail -30 "$BENCH_WORK_DIR/build.log" >&2
  exit 1
}
gen="$target/release/examples/bench_operator"
gen_gw="$target/release/examples/bench_gateway"
export BENCH_OPERATOR_BIN="$target/release/claude-operator"

if wants latency || wants intake || wants memory || wants gateway; then
  cleanup=(--cleanup)
  if [[ -n "${BENCH_KUBECONFIG:-}" ]]; then
    log "using the control plane of $BENCH_KUBECONFIG"
    export KUBECONFIG="$BENCH_KUBECONFIG"
  else
    export PATH="$("$repo/e2e/tools/build.sh"):$PATH"
    started=0
    if ! "$repo/e2e/cluster.sh" status >/dev/null 2>&1; then
      log "starting the benchmark's control plane (apiserver 127.0.0.1:$E2E_APISERVER_PORT, state $CLAUDE_OPERATOR_E2E_STATE)"
      "$repo/e2e/cluster.sh" up >&2
      started=1
    fi
    if [[ "$started" == 1 && "${BENCH_KEEP:-0}" != 1 ]]; then
      # The control plane goes away with everything in it.
      cleanup=()
      trap '"$repo/e2e/cluster.sh" down >&2 || true' EXIT
    fi
    export KUBECONFIG="$("$repo/e2e/cluster.sh" kubeconfig)"
  fi
  for b in latency intake memory; do
    if wants "$b"; then
      log "running $b"
      extra=()
      [[ "$b" == latency ]] && read -r -a extra <<<"${BENCH_LATENCY_ARGS:-}"
      "$gen" "${cleanup[@]}" "$b" "${extra[@]}"
    fi
  done
  if wants gateway; then
    # The kube meter of ttfb uses KUBECONFIG's apiserver.
    for b in ttfb streams clone; do
      log "running gateway $b"
      "$gen_gw" "$b"
    done
  fi
fi

if wants criterion; then
  log "running the criterion bench (quick mode)"
  "$here/criterion.sh"
fi
