#!/usr/bin/env bash
# Runs the criterion bench of the receiver's pure intake path
# (benches/webhook_intake.rs: verify + parse + trigger + match of a ~10 KiB
# issue_comment) in criterion's quick mode and prints one JSON object with the
# per-operation times and operations per second of each function.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
log="${BENCH_WORK_DIR:-/tmp/claude-operator-bench}/criterion.log"
mkdir -p "$(dirname "$log")"

marker="$(mktemp)"
trap 'rm -f "$marker"' EXIT
sleep 1 # estimates written in the same second as the marker still count as newer below
(cd "$repo" && cargo bench --bench webhook_intake -- --quick --noplot) >"$log" 2>&1 || {
  echo "criterion: cargo bench failed; see $log" >&2
  exit 1
}

results="[]"
while IFS= read -r bj; do
  dir="$(dirname "$bj")"
  id="$(jq -r .full_id "$bj")"
  est="$dir/estimates.json"
  [[ -f "$est" ]] || continue
  results="$(jq -c --arg id "$id" --slurpfile e "$est" '. + [{
      id: $id,
      median_ns: ($e[0].median.point_estimate | . * 10 | round / 10),
      mean_ns: ($e[0].mean.point_estimate | . * 10 | round / 10),
      mean_ci95_ns: [($e[0].mean.confidence_interval.lower_bound | round), ($e[0].mean.confidence_interval.upper_bound | round)],
      ops_per_s: (1e9 / $e[0].median.point_estimate | round)
    }]' <<<"$results")"
done < <(find "$target/criterion/webhook_intake" -path '*/new/benchmark.json' -newer "$marker" 2>/dev/null | sort)

if [[ "$(jq length <<<"$results")" == 0 ]]; then
  echo "criterion: no fresh estimates under $target/criterion/webhook_intake; see $log" >&2
  exit 1
fi

jq -cn --argjson r "$results" --arg cores "$(nproc)" '{
  benchmark: "webhook_intake_criterion",
  command: "cargo bench --bench webhook_intake -- --quick --noplot",
  profile: "bench (release)",
  results: $r,
  intake_ops_per_s_one_core: ([$r[] | select(.id | contains("verify+parse")) | .ops_per_s] | first),
  target_ops_per_s_per_core: 20000,
  within_target: (([$r[] | select(.id | contains("verify+parse")) | .ops_per_s] | first // 0) >= 20000),
  machine_cores: ($cores | tonumber),
  note: "single-threaded criterion loop: ops/s is per core; the machine is shared, so figures are noisy"
}'
