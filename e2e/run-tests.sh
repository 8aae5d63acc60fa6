#!/usr/bin/env bash
# Runs the end-to-end suite (tests/e2e_*.rs, cargo feature `e2e`) against the
# local control plane: brings it up (building it if needed), runs the tests,
# and takes it down again, on failure too. A control plane that was already up
# (`make dev-cluster`) is used as it is and left running.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

# Each stage's time goes to stderr (docs/real-node.md records cold and warm figures).
stage() { echo "e2e: stage $1: $2s" >&2; }

# The images of the real-node job (e2e/images.sh, tests/e2e_realnode.rs) take the
# longest cold, and much of it is downloads (Debian, npm): their build starts first,
# beside the control plane's and the node's builds, in its own process group (stopped
# by that id on exit), and the tests wait for it. Only where the real node can run. A
# failed build fails nothing here: the tests run `e2e/images.sh build` themselves
# (it waits for this one, flock) and fail, or skip outside CI, with its reason.
images_pid=""
images_log="${CLAUDE_OPERATOR_E2E_STATE:-$here/.state}/images-build.log"
if "$here/node.sh" check >/dev/null 2>&1; then
  mkdir -p "$(dirname "$images_log")"
  setsid bash -c 't=$SECONDS; "$1" build >/dev/null 2>"$2"; rc=$?
    echo "e2e: stage images build: $((SECONDS - t))s" >&2; exit $rc' images "$here/images.sh" "$images_log" &
  images_pid=$!
fi
stop_images() {
  if [[ -n "$images_pid" ]]; then kill -- "-$images_pid" 2>/dev/null || true; wait "$images_pid" 2>/dev/null || true; fi
}
trap stop_images EXIT
wait_images() {
  [[ -n "$images_pid" ]] || return 0
  wait "$images_pid" ||
    { echo "e2e: the images did not build here (the real-node tests will say why); $images_log:" >&2
      tail -n 20 "$images_log" >&2; }
  images_pid=""
}

t=$SECONDS
bin="$("$here/tools/build.sh")"
stage "control plane build" $((SECONDS - t))
export PATH="$bin:$PATH"
export E2E_BIN="$bin"

# Skipped tests are listed at the end (`make test` lists them after the demo).
own_skips=0
if [[ -z "${CLAUDE_OPERATOR_SKIP_FILE:-}" ]]; then
  export CLAUDE_OPERATOR_SKIP_FILE="$root/target/skipped-tests.txt"
  own_skips=1
  "$here/skipped.sh" reset
fi

started=0 node_started=0
if ! "$here/cluster.sh" status >/dev/null 2>&1; then
  t=$SECONDS
  "$here/cluster.sh" up
  stage "control plane up" $((SECONDS - t))
  started=1
fi
cleanup() {
  local rc=$?
  stop_images
  if ((node_started)) && [[ -z "${E2E_KEEP:-}" ]]; then "$here/node.sh" down || rc=1; fi
  if ((rc != 0)); then
    echo "e2e: failed; control plane logs are in ${CLAUDE_OPERATOR_E2E_STATE:-$here/.state}/logs" >&2
    [[ -n "${CI:-}" ]] && for f in "${CLAUDE_OPERATOR_E2E_STATE:-$here/.state}"/{logs,node/logs}/*.log; do
      echo "--- last lines of $f" >&2; tail -n 20 "$f" >&2 || true
    done
  fi
  if ((started)) && [[ -z "${E2E_KEEP:-}" ]]; then "$here/cluster.sh" down; fi
  if ((own_skips)); then "$here/skipped.sh" report; fi
  exit $rc
}
trap cleanup EXIT

# The real node (tests/e2e_node.rs): where the machine allows it (root, cgroups). Outside
# CI a machine that cannot run it skips those tests with the reason; under CI it fails.
if reason="$("$here/node.sh" check)"; then
  t=$SECONDS
  export E2E_NODE_BIN="$("$here/tools/build-node.sh")"
  stage "node build" $((SECONDS - t))
  if ! "$here/node.sh" status >/dev/null 2>&1; then
    t=$SECONDS
    node_started=1
    "$here/node.sh" up
    stage "node up" $((SECONDS - t))
  fi
  eval "$("$here/node.sh" env)"
  export CLAUDE_OPERATOR_E2E_NODE="$E2E_NODE_NAME"
else
  if [[ "${CI:-}" == true ]]; then
    echo "e2e: the real node cannot run on this machine: $reason" >&2
    exit 1
  fi
  echo "e2e: SKIP real-node tests (tests/e2e_node.rs): $reason" >&2
  export CLAUDE_OPERATOR_E2E_NODE_UNAVAILABLE="$reason"
fi

export CLAUDE_OPERATOR_E2E_KUBECONFIG="$("$here/cluster.sh" kubeconfig)"
cd "$root"
# The test binaries compile while the images may still build; the tests wait for them.
cargo test --no-run --features e2e --test 'e2e_*'
t=$SECONDS
wait_images
stage "images wait" $((SECONDS - t))
cargo test --no-fail-fast --features e2e --test 'e2e_*' -- --test-threads "${E2E_TEST_THREADS:-4}" \
  --skip restarting_the_apiserver_and_etcd "$@"
# The chaos run's apiserver and etcd restart takes the control plane away from
# every other test: alone, after them (and not when a filter picks tests).
if (($# == 0)); then
  E2E_CONTROL_PLANE_RESTART=1 cargo test --features e2e --test e2e_chaos -- --test-threads 1 \
    restarting_the_apiserver_and_etcd
fi
