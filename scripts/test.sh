#!/usr/bin/env bash
# The README's test command: install torch (CPU build) first, then every extra, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.13.0
python -m pip install -e ".[all]"
python -m pytest -q "$@"
