#!/usr/bin/env bash
# The README's test command: install torch (CPU build) first, then every extra, then every test,
# notebooks included, then the mutation check (scripts/mutants.py). Its measured time is in the
# README ("Tests: a quick suite and the full one"); `bash scripts/quick.sh` is the inner loop.
# -v prints each test's name as it starts, so a notebook running for minutes shows which one it is;
# --durations=15 ends with the slowest tests.
# TORCH_INDEX_URL: a pip index to get torch from (PyTorch's CPU wheel index on a machine where the
# plain `pip install torch` would fetch the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install -e ".[all]"
python -m pytest -v --durations=15 "$@"
# Mutation check (a few minutes): each listed bug, put back into a copy of the code, must make a test fail.
python scripts/mutants.py
