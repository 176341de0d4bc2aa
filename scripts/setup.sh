#!/usr/bin/env bash
# Creates .venv (if missing) and installs nash_jax with its test tools from
# the project's own files (setup.cfg pins the JAX stack).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -e '.[test]'
