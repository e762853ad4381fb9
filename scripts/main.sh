#!/usr/bin/env bash
# The main job: set up, run the default sweep, print the results table and draw the speedup plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${ASTRA_OUT:-results/quickstart}
mkdir -p "$OUT"
.venv/bin/astra-bench -m experiment=quickstart results.path="$OUT/results.parquet" "$@"
.venv/bin/astra-plot "$OUT/results.parquet" --out "$OUT"
