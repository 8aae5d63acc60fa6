#!/usr/bin/env bash
# The real-node benchmark (issue 15): the time from the signed webhook POST to
# the agent's first model request arriving at the gateway's upstream, p50/p99
# over BENCH_RUNS (default 20) runs on the warm real node, next to the floor
# measured in the same run: a bare pod of the same image created and reaching
# Running. Prints one JSON object on stdout and keeps it in
# e2e/bench/results/<date>-realnode.json. Figures, not assertions.
#
#   source <(e2e/node.sh env)      # or the real node's env file
#   e2e/bench/realnode.sh
#
# Needs the real node up (e2e/node.sh up) and root; builds and imports the
# images first (e2e/images.sh, a no-op when they are current). The benchmark
# itself is tests/e2e_realnode.rs::bench_webhook_to_first_model_request_on_the_real_node.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
[[ -n "${E2E_NODE_IP:-}" && -n "${CONTAINERD_ADDRESS:-}" ]] ||
  { echo "realnode.sh: the real node's environment is not set (source <(e2e/node.sh env))" >&2; exit 2; }
out="$here/results/$(date -u +%Y-%m-%d)-realnode.json"
mkdir -p "$here/results"
cd "$repo"
BENCH_OUT="$out" cargo test --features e2e --test e2e_realnode -- \
  --ignored --exact bench_webhook_to_first_model_request_on_the_real_node --nocapture >&2
cat "$out"
