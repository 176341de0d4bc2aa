#!/usr/bin/env bash
# Sets up .venv and runs the test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rc=0
.venv/bin/python -m pytest -q "$@" || rc=$?
# pytest exits 5 when it collected no test (e.g. a -k that matches none).
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests"
  exit 0
fi
exit "$rc"
