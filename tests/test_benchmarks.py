"""The benchmarks live in litetorch/bench/; benchmarks/*.py in the source checkout are thin wrappers.
The end-to-end smoke run of the suite on a tiny random model (it asserts no speed) is `litetorch bench
--tiny`, run as a user runs it, in tests/test_cli.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, writes_results", [("run.py", True), ("chat_prompt_cache.py", True),
                                                    ("train_gpt.py", True), ("decode_split.py", False)])
def test_the_checkout_scripts_run_the_package_benchmarks(script, writes_results):
    """benchmarks/*.py are thin wrappers: the code is litetorch/bench/, the results land in benchmarks/results/
    (`litetorch bench`, run anywhere, writes to ./litetorch-bench/: tests/test_cli.py runs it end to end)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    text = "".join(out.stdout.split())  # (argparse wraps long lines, even inside a path)
    assert ("".join(str(ROOT / "benchmarks" / "results").split()) in text) == writes_results
    wrapper = (ROOT / "benchmarks" / script).read_text()
    assert f"from litetorch.bench.{script[:-3]} import main" in wrapper and len(wrapper.splitlines()) < 20


@pytest.mark.parametrize("script", ["weight_modes.py", "distill_d20.py", "prefill_pair.py", "prefill_workers.py"])
def test_the_checkout_only_scripts_import_what_they_use(script):
    """benchmarks/weight_modes.py and distill_d20.py stay checkout scripts (they use scripts/ and write
    benchmarks/results/); what they share with `litetorch bench` they import from litetorch.bench."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "usage:" in out.stdout


@pytest.mark.slow
def test_decode_split_runs_on_a_tiny_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from litetorch.bench.run import tiny_checkpoint
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_split.py"), "--model", str(ckpt),
                          "--context", "16", "--tokens", "3", "--reps", "2"],  # its own process: it pins BLAS threads
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["reps"] == 2 and res["step_ms_min"] > 0
    # with two repetitions the median is the mean, so the split adds up: step = matmuls + everything else
    assert res["weight_matmuls_ms_median"] + res["other_ms_median"] == pytest.approx(res["step_ms_median"])
    assert 0 < res["weight_matmuls_ms_min"] < res["step_ms_min"]
    # the same steps with stored matmul outputs (no weights read): only "everything else" is timed
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_split.py"), "--model", str(ckpt),
                          "--context", "16", "--tokens", "3", "--reps", "2", "--without-weight-traffic"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["without_weight_traffic"] and 0 < res["other_ms_min"] <= res["other_ms_median"]


def test_a_workers_peak_rss_is_its_own_not_its_parents():
    """Linux keeps ru_maxrss across exec: a worker spawned by a 2.4 GB pytest process reported 2.4 GB
    (a CI failure of the TinyLlama memory test). The probe reads the worker's own high-water mark."""
    np = pytest.importorskip("numpy")
    big = np.ones(400 * 2**20 // 8)  # this process now holds 400 MiB
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from litetorch.bench.run import peak_rss_mb; "
            f"print(peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = float(out.stdout.strip().splitlines()[-1])
    assert big.nbytes == 400 * 2**20 and child < 300, f"the child reported {child:.0f} MiB, its parent's 400 MiB"
