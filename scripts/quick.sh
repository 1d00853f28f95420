#!/usr/bin/env bash
# The quick suite: every test not marked slow (no real-model parity runs, no notebooks, no benchmark
# runs, no long training). The command lessons and exercises point to, for the inner loop of study
# and development: under 3 minutes on 2 quiet cores. It needs what `bash scripts/test.sh` installs
# (tests that need PyTorch skip, with the reason, when it is missing).
#   bash scripts/quick.sh                        # all quick tests
#   bash scripts/quick.sh tests/test_rope.py     # one file (any pytest arguments)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -m "not slow" -q --durations=10 "$@"
