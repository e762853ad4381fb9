#!/usr/bin/env bash
# The main job: set up (as root: Mininet, venv, pinned torch), run the default Mininet sweep — single, tp, sp and
# astra on ViT-Base (196 tokens), 2 one-core devices, 10 / 100 / 1000 Mbit/s — then print the results table and
# draw the speedup plots. Extra arguments go to astra-bench (e.g. network=analytic to run without root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${ASTRA_OUT:-results/main}
mkdir -p "$OUT"
.venv/bin/astra-bench -m experiment=main results.path="$OUT/results.parquet" "$@"
.venv/bin/astra-plot "$OUT/results.parquet" --out "$OUT"
