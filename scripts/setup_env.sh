#!/usr/bin/env bash
# Create .venv at the repository root and install the project with every CPU-usable extra, all pinned.
# Idempotent: a second run only re-checks the install. The CUDA extra (mamba-ssm, causal-conv1d) is for CUDA
# machines only: `.venv/bin/pip install -e '.[cuda]'` there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.mfuser-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,ros,export,train,siglip,fleet]'
    touch "$stamp"
fi
