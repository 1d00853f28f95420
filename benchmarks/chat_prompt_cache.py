"""`python benchmarks/chat_prompt_cache.py [options]`: a chat with and without prompt caching.

The code is litetorch/bench/chat_prompt_cache.py (so that it also runs after `pip install`); this script runs
it with this checkout's litetorch and writes benchmarks/results/. `--help` lists the options.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's litetorch, whatever else is installed

from litetorch.bench.chat_prompt_cache import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_out=ROOT / "benchmarks" / "results"))  # the results the README and lessons quote
