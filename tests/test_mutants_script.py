"""scripts/mutants.py stays runnable: every mutant's text occurs once in its file and every test it names
exists. The mutation run itself takes minutes (it ends the README's test command); a renamed test made it
stop with "the unmutated tests fail" after 15 minutes of green tests, so these checks run in seconds."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_mutants():
    spec = importlib.util.spec_from_file_location("litetorch_mutants", ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module.MUTANTS


MUTANTS = load_mutants()


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_applies_once_and_names_tests_that_exist(mutant):
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.path}: the text to mutate occurs {source.count(mutant.old)} times"
    for node in (n for n in mutant.tests if n.startswith("tests/")):  # others are pytest options (-k EXPR)
        path, _, name = node.partition("::")
        assert (ROOT / path).exists(), f"{node}: no file {path}"
        if name:
            function = re.sub(r"\[.*\]$", "", name.split("::")[-1])
            assert re.search(rf"^def {re.escape(function)}\(", (ROOT / path).read_text(), re.M), \
                f"{node}: {path} has no test named {function}"
