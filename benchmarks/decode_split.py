"""`python benchmarks/decode_split.py [options]`: where a decode step goes: the weight matmuls vs everything else.

The code is litetorch/bench/decode_split.py (so that it also runs after `pip install`); this script runs
it with this checkout's litetorch and prints its numbers. `--help` lists the options.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's litetorch, whatever else is installed

from litetorch.bench.decode_split import main  # noqa: E402

if __name__ == "__main__":
    main()
