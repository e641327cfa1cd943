#!/usr/bin/env bash
# The test command: set up the environment, then run the whole test suite.
# As root with apt-get, the local two-node Slurm cluster (tools/local_slurm.sh) is started first for the
# `slurm` tests and stopped afterwards, even on failure, if this run started it (BCRDIST_SLURM=0: don't).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
SLURM_STARTED=0
stop_slurm() { if [ "$SLURM_STARTED" = 1 ]; then tools/local_slurm.sh stop || true; fi; }
trap stop_slurm EXIT
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${BCRDIST_SLURM:-1}" != 0 ] \
        && ! tools/local_slurm.sh status >/dev/null 2>&1; then
    SLURM_STARTED=1
    tools/local_slurm.sh start || echo "local Slurm did not start: the slurm tests will be skipped" >&2
fi
.venv/bin/python -m pytest -q "$@"
