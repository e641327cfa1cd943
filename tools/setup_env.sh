#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install bcrdist with its test tools.
#
# PyTorch first, so that pip does not pick a build for you: a plain `pip install torch==X` from PyPI brings
# the CUDA build on Linux x86_64 (several GB of CUDA libraries), the CPU build elsewhere; a machine whose pip
# is configured with a local wheel directory or index (as this project's CI machines are) gets what that
# serves. Choose explicitly with BCRDIST_TORCH_INDEX (PyTorch's own indexes) or BCRDIST_TORCH:
#   BCRDIST_TORCH_INDEX=https://download.pytorch.org/whl/cpu   bash tools/setup_env.sh    # CPU only
#   BCRDIST_TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash tools/setup_env.sh    # CUDA 12.8
#   BCRDIST_TORCH="torch==2.13.0+cu128" bash tools/setup_env.sh                           # from your own index
#
# Extras (BCRDIST_EXTRAS, default test,mpi,mpich): `mpich` installs an MPICH runtime and its mpiexec into
# .venv/bin, which the tests and the demo use. On a cluster, load the site's MPI and leave it out, so that
# the site's mpiexec and libmpi are used: `module load openmpi; BCRDIST_EXTRAS=test,mpi bash tools/setup_env.sh`
# (docs/slurm.md: mpi4py against the site's MPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q ${BCRDIST_TORCH_INDEX:+--index-url "$BCRDIST_TORCH_INDEX"} \
        "${BCRDIST_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[${BCRDIST_EXTRAS:-test,mpi,mpich}]"
echo "bcrdist environment ready: $(pwd)/.venv"
