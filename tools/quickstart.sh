#!/usr/bin/env bash
# The demo command: set up the environment, then run the whole pipeline on the small built-in default
# (generate ~1.5k samples, train BCR-Net with 2 processes, evaluate, plot). Extra arguments go to `bcrdist demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/bcrdist demo "$@"
