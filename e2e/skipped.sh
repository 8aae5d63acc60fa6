#!/usr/bin/env bash
# The tests' skip file (tests/support/skip.rs appends one line per skipped
# test: "<test>: <reason>"). `reset` empties it before a run, `report` prints
# "N skipped: why" after it.
set -euo pipefail
file="${CLAUDE_OPERATOR_SKIP_FILE:?CLAUDE_OPERATOR_SKIP_FILE is not set}"
case "${1:-}" in
  reset) mkdir -p "$(dirname "$file")"; : >"$file" ;;
  report)
    if [[ -s "$file" ]]; then
      n="$(sort -u "$file" | wc -l)"
      echo
      echo "$n skipped:"
      sort -u "$file" | sed 's/^/  /'
    else
      echo "0 skipped"
    fi
    ;;
  *) echo "usage: $0 reset|report" >&2; exit 2 ;;
esac
