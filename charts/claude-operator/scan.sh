#!/usr/bin/env bash
# Static security scan of the chart: renders it with the default values and
# with ci/full-values.yaml and runs checkov (a maintained Kubernetes scanner,
# from PyPI at a pinned version, installed into a venv under the cache) over
# the manifests. Exits non-zero on any failed check. Checks kept on purpose
# are skipped with checkov.io/skipN annotations in the templates, each with
# its reason, and listed in README.md.
#
# Needs helm and python3 (>= 3.9) on PATH. Usage: charts/claude-operator/scan.sh
set -euo pipefail

CHECKOV_VERSION=3.3.30
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/claude-operator"
venv="$cache/checkov-$CHECKOV_VERSION"

if [[ ! -f "$venv/.installed" ]]; then
  echo "installing checkov $CHECKOV_VERSION into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  touch "$venv/.installed"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
helm template claude-operator "$here" --namespace claude-operator --kube-version 1.37.0 \
  --set github.existingSecret=claude-operator-github >"$out/default.yaml"
helm template claude-operator "$here" --namespace claude-operator --kube-version 1.37.0 \
  -f "$here/ci/full-values.yaml" >"$out/full.yaml"

# Offline: no guideline look-ups, no version check, no upload.
export BC_SKIP_MAPPING=TRUE CHECKOV_NO_UPDATE_CHECK=true
status=0
for f in default full; do
  echo "== checkov: $f values" >&2
  "$venv/bin/checkov" --framework kubernetes --file "$out/$f.yaml" \
    --compact --quiet --skip-download || status=1
done
exit "$status"
