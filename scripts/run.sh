#!/usr/bin/env bash
# Sets up .venv and runs the main job: experiments.compare on its defaults
# (extra arguments are passed on as flags).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.compare "$@"
