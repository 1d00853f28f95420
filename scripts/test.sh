#!/usr/bin/env bash
# The README's test command: install torch (CPU build) first, then every extra, then pytest, then the
# mutation check (scripts/mutants.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.13.0
python -m pip install -e ".[all]"
python -m pytest -q "$@"
# Mutation check (a few minutes): each listed bug, put back into a copy of the code, must make a test fail.
python scripts/mutants.py
