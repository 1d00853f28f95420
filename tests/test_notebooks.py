"""Every notebook runs top to bottom in a real Jupyter kernel, its assertions hold, and its figures show.

Notebooks are jupytext py:percent files. Each test converts one to .ipynb with jupytext, executes it
with nbclient in a `python3` (ipykernel) kernel, as a learner's "Run all" would, and writes the
executed notebook to `notebooks/_executed/` (git-ignored) to be opened when something looks wrong.
A failing cell or assert fails the test, with that cell's printed output and its traceback.

This is *the* notebook test: running every notebook as a script as well would double the time for
little (the script path differs only in `__file__` being defined). CI exports `MPLBACKEND=Agg`; the
kernel gets the environment without it, so matplotlib uses Jupyter's inline backend, and a notebook
that draws must show at least one `image/png` output — a notebook that forced the Agg backend shows
none. The kernel starts in `notebooks/` (where `jupytext --to ipynb` puts a learner's copy) with this
checkout first on PYTHONPATH, so it imports this tree's litetorch whatever else is installed.

A notebook whose inputs are missing (no model file) prints `SKIP: ...` and stops with `sys.exit(0)`;
the test then skips with that line. Bigger runs behind a notebook's environment variable (e.g.
`LOOP_BIG=1`) run here too if that variable is set.
"""
import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.py"))
EXECUTED = ROOT / "notebooks" / "_executed"
CELL_TIMEOUT = 900  # seconds for one cell; the whole notebook's budget is 3 min on 2 quiet cores
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def test_no_notebook_forces_a_matplotlib_backend():
    """A forced backend (matplotlib.use("Agg")) hides every figure in Jupyter; the slow run below would
    catch it after minutes, this catches it in the quick suite. Scripts get Agg from MPLBACKEND."""
    forced = [p.name for p in NOTEBOOKS if re.search(r"matplotlib\.use\(|plt\.switch_backend\(", p.read_text())]
    assert not forced, f"these notebooks force a matplotlib backend, so Jupyter shows no figures: {forced}"


def test_notebooks_use_no_removed_module_globals():
    """Speed switches moved from module globals into Runtime objects (docs/ARCHITECTURE.md); a notebook
    that still sets one fails only when it runs, minutes into the slow suite."""
    removed = ("DECODE_BLAS_THREADS", "CAUSAL_CHUNK", "fused.ENABLED")
    found = [(p.name, g) for p in NOTEBOOKS for g in removed if g in p.read_text()]
    assert not found, f"notebooks use removed globals: {found}"


def kernel_env() -> dict:
    """The caller's environment, minus MPLBACKEND (inline figures), with this checkout first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONHASHSEED"] = "0"
    return env


def cell_report(cell) -> str:
    """The failing cell's source (last lines), what it printed, and its traceback, as plain text."""
    printed = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    trace = "\n".join(ANSI.sub("", line) for o in errors for line in o.get("traceback", []))
    source = "\n".join(cell.source.splitlines()[-15:])
    return f"--- cell (last lines) ---\n{source}\n--- printed ---\n{printed[-3000:]}\n--- traceback ---\n{trace[-5000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_jupyter(path):
    pytest.importorskip("matplotlib")
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(path.parent)}})
    EXECUTED.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        client.execute(env=kernel_env())
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        failing = next((c for c in nb.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))),
                       None)
        if failing is not None and _skipped_itself(failing):
            pytest.skip(_skip_line(nb) or f"{path.name} stopped itself with sys.exit(0)")
        detail = cell_report(failing) if failing is not None else str(e)[-5000:]
        pytest.fail(f"{path.name} failed in Jupyter after {time.perf_counter() - t0:.0f} s "
                    f"(executed copy: {EXECUTED / path.with_suffix('.ipynb').name}):\n{detail}", pytrace=False)
    finally:
        nbformat.write(nb, EXECUTED / path.with_suffix(".ipynb").name)

    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    if "savefig" in path.read_text() and _skip_line(nb) is None:
        assert images >= 1, (f"{path.name} saves figures but showed none inline in Jupyter: is the "
                             f"matplotlib backend forced (matplotlib.use) or every figure closed before the cell ends?")
    print(f"{path.name}: {time.perf_counter() - t0:.0f} s in Jupyter, {images} inline figures")


def _skipped_itself(cell) -> bool:
    """True if the cell ended in `sys.exit(0)` (how a notebook says its inputs are missing)."""
    return any(o.get("ename") == "SystemExit" and o.get("evalue") in ("0", "") for o in cell.get("outputs", [])
               if o.get("output_type") == "error")


def _skip_line(nb) -> str | None:
    """The first printed line starting with SKIP, if any."""
    for c in nb.cells:
        for o in c.get("outputs", []):
            for line in o.get("text", "").splitlines() if o.get("output_type") == "stream" else ():
                if line.startswith("SKIP"):
                    return line
    return None
