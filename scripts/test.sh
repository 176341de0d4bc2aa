#!/usr/bin/env bash
# Sets up .venv and runs the test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rc=0
# Two workers (one per core of the CI machine), each taking whole files, so
# that a file's module-scoped fixtures are built once; `-n 0` as an argument
# runs everything in one process.
.venv/bin/python -m pytest -q -n 2 --dist=loadfile "$@" || rc=$?
# pytest exits 5 when it collected no test (e.g. a -k that matches none).
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests"
  exit 0
fi
exit "$rc"
