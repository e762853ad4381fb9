#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# cluster: the Ray launcher's tests; tracking: MLflow's; docs: mkdocs build --strict
ASTRA_EXTRAS=${ASTRA_EXTRAS:-test,mininet,cluster,tracking,docs} bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=25 "$@"
