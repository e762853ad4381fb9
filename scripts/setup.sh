#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for astra-bench: system packages (Mininet, Linux bridge, iperf3; as root),
# a virtual environment in .venv with the pinned CPU build of torch, and the project with its test extras.
# Idempotent: a second run only checks. Set ASTRA_SKIP_APT=1 to skip the system packages. ASTRA_EXTRAS names the
# project's extras to install (default test,mininet; scripts/test.sh adds cluster: Ray and the Hydra Ray launcher,
# and tracking: MLflow).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="python3-venv mininet bridge-utils iperf3 ethtool iputils-ping iproute2 nftables rt-tests"
TORCH_PIN="torch==2.13.0"

if [ "${ASTRA_SKIP_APT:-0}" != "1" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    missing=""
    for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
      echo "[setup] apt-get install$missing"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
  else
    echo "[setup] not root (or no apt-get): skipping system packages ($APT_PACKAGES);" \
         "Mininet runs need them, loopback and analytic runs do not"
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # a venv made without pip (no python3-venv then)
  echo "[setup] .venv has no pip: adding it"
  .venv/bin/python -m ensurepip --upgrade >/dev/null 2>&1 || { rm -rf .venv; $PY -m venv .venv; }
  rm -f .venv/.astra-setup-*
fi
EXTRAS=${ASTRA_EXTRAS:-test,mininet}
stamp=.venv/.astra-setup-$( (cat pyproject.toml scripts/setup.sh; echo "$EXTRAS") | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing $TORCH_PIN and the project (pip)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_PIN"
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
.venv/bin/python -c "import torch, harness; print('[setup] ok: torch', torch.__version__)"
