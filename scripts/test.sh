#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ASTRA_EXTRAS=${ASTRA_EXTRAS:-test,mininet,cluster} bash scripts/setup.sh  # cluster: the Ray launcher's tests
exec .venv/bin/python -m pytest -q --durations=25 "$@"
