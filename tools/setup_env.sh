#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install bcrdist with its test tools.
# PyTorch is installed first so that pip does not pull a multi-GB CUDA build on CPU machines:
# set BCRDIST_TORCH to another requirement (e.g. "torch==2.13.0+cu128" from your index) for GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "${BCRDIST_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test,mpich]"
echo "bcrdist environment ready: $(pwd)/.venv"
