#!/usr/bin/env bash
# The main job: set up (as root: Mininet, venv, pinned torch), run the paper's headline setting on Mininet — single,
# tp, sp and astra on ViT-Base with 1024 tokens, 4 one-core devices (time-dilated to fit this machine), 10 / 100 /
# 1000 Mbit/s, plus the 2-device single / sp / astra points and the overlapped baselines (galaxy, ring_attn) at 4
# devices, 100 and 1000 Mbit/s — then print the results table (with each point's fidelity verdict) and draw the
# speedup plots. Extra arguments go to both astra-bench sweeps (e.g.
# network=analytic to run without root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${ASTRA_OUT:-results/main}
mkdir -p "$OUT"
.venv/bin/astra-bench -m experiment=main results.path="$OUT/results.parquet" "$@"
.venv/bin/astra-bench -m experiment=main devices=2 method=single,sp,astra results.path="$OUT/results.parquet" "$@"
.venv/bin/astra-bench -m experiment=main method=galaxy,ring_attn network.bandwidth_mbps=100,1000 \
    results.path="$OUT/results.parquet" "$@"
.venv/bin/astra-plot "$OUT/results.parquet" --out "$OUT"
