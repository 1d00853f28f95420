"""The README tells the truth: its links resolve, its test commands are the scripts' commands, and the
"Use it" example runs and prints what its comments say."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_links_to_files_that_exist():
    links = [link for link in re.findall(r"\]\(([^)#\s]+)\)", README) if "://" not in link]
    assert links, "no relative links found"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_two_test_commands_are_the_scripts():
    assert "bash scripts/quick.sh" in README and "bash scripts/test.sh" in README
    quick = (ROOT / "scripts" / "quick.sh").read_text()
    full = (ROOT / "scripts" / "test.sh").read_text()
    assert 'python -m pytest -m "not slow"' in quick
    assert re.search(r"python -m pytest -v --durations=15", full)  # names each test as it starts, ends with the slowest


def test_the_ci_script_is_described_as_it_is():
    """The README once said `.ci/run` "runs exactly these two commands"; it does more. Each thing it does
    is in the README's description of it."""
    ci = (ROOT / ".ci" / "run").read_text()
    section = README.split("`.ci/run` is the CI script", 1)[1].split("###", 1)[0]
    for step, described in [("export MPLBACKEND=Agg", "`MPLBACKEND=Agg`"),
                            ("pip install --upgrade pip", "upgrades pip"),
                            ("pip install torch==2.13.0\n", "installs `torch==2.13.0` with a plain `pip install`"),
                            ('pip install -e ".[model]"', '`pip install -e ".[model]"`'),
                            ('litetorch generate "What is the capital of France?" --max-new-tokens 24 --seed 0',
                             'litetorch generate "What\nis the capital of France?" --max-new-tokens 24 --seed 0'),
                            ("bash scripts/test.sh", "`bash scripts/test.sh`"),
                            ("CI wall time", "prints\nits wall time")]:
        assert step in ci, f".ci/run no longer does {step!r}: update the README and this test"
        assert " ".join(described.split()) in " ".join(section.split()), f"README does not say: {described!r}"



def test_the_list_of_gguf_types_is_the_loaders_list():
    """The README's "every type litetorch reads" once left out I8 and TQ2_0: it names exactly the loader's types."""
    from litetorch.io.quants import SUPPORTED_DEQUANTIZE
    sentence = " ".join(README.split("every\ntype litetorch reads:", 1)[1].split(".", 1)[0].split())
    named = set(re.findall(r"\b(?:[A-Z]+\d+(?:_[0-9A-Z]+)?)\b", sentence))
    assert named == set(SUPPORTED_DEQUANTIZE), f"README names {sorted(named)}, the loader reads {SUPPORTED_DEQUANTIZE}"


def test_the_measured_times_are_filled_in():
    """QUICK_TIME, TRAIN_TIME, TIMES_NOTE and FULL_TIME were placeholders for measured times."""
    for placeholder in ("QUICK_TIME", "TRAIN_TIME", "TIMES_NOTE", "FULL_TIME"):
        assert placeholder not in README


def use_it_example() -> str:
    section = README.split("## Use it", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_use_it_example_runs_and_prints_what_it_says(smollm2_path, monkeypatch, capsys):
    monkeypatch.setenv("LITETORCH_MODEL", str(smollm2_path))  # the example's lt.load_model() finds it
    exec(compile(use_it_example(), "README.md (Use it)", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("The capital of France is Paris.\n")  # as its comment says (HF's greedy answer)
    assert " raw\n" in out  # the raw continuation's prompt_format
    assert out.count("assistant> ") == 3
    assert "Venus is the largest planet in our solar system." in out  # the 135M model's answer, as HF's
    assert re.search(r"prompt \d+ tok \(\d+ reused, chat\)", out)  # the last turn reused the earlier ones
