#!/usr/bin/env bash
# The adversarial soak and the chaos run at full size, against the local
# control plane (started here if it is not up, and stopped again).
#
#   e2e/soak/run.sh            soak (10,000 deliveries) and chaos run (SIGKILLs)
#   e2e/soak/run.sh soak       the soak only
#   e2e/soak/run.sh chaos      the SIGKILL chaos run only
#   e2e/soak/run.sh restart    the apiserver/etcd restart (takes the apiserver
#                              away: nothing else may use this control plane)
#
# Sizes: SOAK_DELIVERIES (10000), SOAK_RATE (40 per second), SOAK_SEED;
# CHAOS_RUNS (200), CHAOS_KILLS (60), CHAOS_SEED. The soak's figures are
# saved under e2e/soak/results/. E2E_CARGO_FLAGS goes to cargo test (for
# example `--release`, to run the operator as it ships).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
e2e="$(dirname "$here")"
root="$(dirname "$e2e")"
what="${1:-all}"

bin="$("$e2e/tools/build.sh")"
export PATH="$bin:$PATH" E2E_BIN="$bin"
started=0
if ! "$e2e/cluster.sh" status >/dev/null 2>&1; then
  "$e2e/cluster.sh" up
  started=1
fi
cleanup() { if ((started)) && [[ -z "${E2E_KEEP:-}" ]]; then "$e2e/cluster.sh" down; fi; }
trap cleanup EXIT
export CLAUDE_OPERATOR_E2E_KUBECONFIG="$("$e2e/cluster.sh" kubeconfig)"
cd "$root"

if [[ "$what" == all || "$what" == soak ]]; then
  SOAK_DELIVERIES="${SOAK_DELIVERIES:-10000}" SOAK_RATE="${SOAK_RATE:-40}" \
    SOAK_SETTLE_SECONDS="${SOAK_SETTLE_SECONDS:-900}" SOAK_RESULTS_DIR="${SOAK_RESULTS_DIR:-$here/results}" \
    cargo test ${E2E_CARGO_FLAGS:-} --features e2e --test e2e_soak -- --nocapture
fi
if [[ "$what" == all || "$what" == chaos ]]; then
  CHAOS_RUNS="${CHAOS_RUNS:-200}" CHAOS_KILLS="${CHAOS_KILLS:-60}" \
    cargo test ${E2E_CARGO_FLAGS:-} --features e2e --test e2e_chaos -- --nocapture sigkills
fi
if [[ "$what" == restart ]]; then
  E2E_CONTROL_PLANE_RESTART=1 CHAOS_RESTART_RUNS="${CHAOS_RESTART_RUNS:-120}" \
    cargo test ${E2E_CARGO_FLAGS:-} --features e2e --test e2e_chaos -- --nocapture --test-threads 1 restarting_the_apiserver_and_etcd
fi
