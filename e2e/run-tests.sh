#!/usr/bin/env bash
# Runs the end-to-end suite (tests/e2e_*.rs, cargo feature `e2e`) against the
# local control plane: brings it up (building it if needed), runs the tests,
# and takes it down again, on failure too. A control plane that was already up
# (`make dev-cluster`) is used as it is and left running.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

bin="$("$here/tools/build.sh")"
export PATH="$bin:$PATH"
export E2E_BIN="$bin"

# Skipped tests are listed at the end (`make test` lists them after the demo).
own_skips=0
if [[ -z "${CLAUDE_OPERATOR_SKIP_FILE:-}" ]]; then
  export CLAUDE_OPERATOR_SKIP_FILE="$root/target/skipped-tests.txt"
  own_skips=1
  "$here/skipped.sh" reset
fi

started=0
if ! "$here/cluster.sh" status >/dev/null 2>&1; then
  "$here/cluster.sh" up
  started=1
fi
cleanup() {
  local rc=$?
  if ((rc != 0)); then
    echo "e2e: failed; control plane logs are in ${CLAUDE_OPERATOR_E2E_STATE:-$here/.state}/logs" >&2
    [[ -n "${CI:-}" ]] && for f in "${CLAUDE_OPERATOR_E2E_STATE:-$here/.state}"/logs/*.log; do
      echo "--- last lines of $f" >&2; tail -n 20 "$f" >&2 || true
    done
  fi
  if ((started)) && [[ -z "${E2E_KEEP:-}" ]]; then "$here/cluster.sh" down; fi
  if ((own_skips)); then "$here/skipped.sh" report; fi
  exit $rc
}
trap cleanup EXIT

export CLAUDE_OPERATOR_E2E_KUBECONFIG="$("$here/cluster.sh" kubeconfig)"
cd "$root"
cargo test --features e2e --test 'e2e_*' -- --test-threads "${E2E_TEST_THREADS:-4}" "$@"
