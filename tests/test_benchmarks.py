"""The benchmark suite runs end to end on a tiny random model (a smoke test: it asserts no speed)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_smoke_run_on_a_tiny_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "bench_tiny.json").read_text())
    run = res["runs"][0]
    # every speed row is paired with a token-identity check
    assert run["litetorch"]["decode_tokens"] == run["hf"]["decode_tokens"]
    assert run["litetorch"]["nocache_tokens"] == run["hf"]["nocache_tokens"]
    assert run["litetorch"]["nocache_equals_cached"]
    assert "| decode tok/s (KV cache) |" in out.stdout
