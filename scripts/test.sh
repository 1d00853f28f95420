#!/usr/bin/env bash
# The README's test command: install torch (CPU build) first, then every extra, then every test,
# notebooks included (about 25 minutes on 2 cores; README, "Set up").
# -v prints each test's name as it starts, so a notebook running for minutes shows which one it is;
# --durations=15 ends with the slowest tests. `bash scripts/quick.sh` is the 3-minute inner loop.
# TORCH_INDEX_URL: a pip index to get torch from (PyTorch's CPU wheel index on a machine where the
# plain `pip install torch` would fetch the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install -e ".[all]"
python -m pytest -v --durations=15 "$@"
