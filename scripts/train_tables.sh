#!/usr/bin/env bash
# The paper's accuracy tables at small scale (about 35 minutes on 2 cores): the digits ViT with every ablation,
# then the byte-level GPT2 and the byte-level Llama over G and device count. Tables: results/train/<task>/tables.md; rows:
# results/accuracy.parquet; checkpoints: results/train/<task>/runs/<variant>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/astra-train task=digits suite=paper "$@"
.venv/bin/astra-train task=pydoc suite=groups "$@"
.venv/bin/astra-train task=pydoc_llama suite=groups "$@"
