"""`python benchmarks/run.py [options]`: litetorch vs HF transformers on SmolLM2-135M, same run (`litetorch bench`).

The code is litetorch/bench/run.py (so that it also runs after `pip install`); this script runs
it with this checkout's litetorch and writes benchmarks/results/. `--help` lists the options.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's litetorch, whatever else is installed

from litetorch.bench.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_out=ROOT / "benchmarks" / "results"))  # the results the README and lessons quote
