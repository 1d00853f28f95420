"""Exercise mode: a student copy of litetorch with the exercises blanked, and the check that grades one.

    litetorch exercises list                   # every exercise: lesson, what to write, the check command
    litetorch exercises start DIR              # DIR/litetorch with the bodies blanked, DIR/tests, DIR/lessons
    litetorch exercises check N [--dir DIR]    # run exercise N's tests against DIR's copy, in plain words

The exercises themselves (which regions, which tests) are listed in `exercises.py`. Here:

- `find_regions` reads the `# lesson NN: begin (label) [exercise]` / `end` markers of a file (regions
  may nest: an exercise inside a region a lesson quotes);
- `blank` replaces an exercise's body by `raise NotImplementedError("lesson NN, exercise K: hint")`,
  keeping the signature and the docstring (the contract); a region that is not a whole function
  (part of a body) is replaced as a whole;
- `start` copies the package, its tests and the lessons (whose quotes of the blanked code are blanked
  too, so the student works from the text, the equations and the contract);
- `check` runs the exercise's tests in a fresh interpreter whose `litetorch` is the student's copy
  (DIR first on PYTHONPATH), and explains the first failure: a blank body, another exercise the test
  needs first, an error in the student's code, or the assertion that failed and what it says.
"""
from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tokenize
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .exercises import EXERCISES, Exercise, get

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout this package was imported from
STATE_FILE = ".litetorch-exercises.json"  # written by `start`: marks a directory as a student copy
MARKER = re.compile(r"^(?P<indent>[ \t]*)#\s*lesson (?P<lesson>\d+): (?P<kind>begin|end)(?P<rest>[^\n]*)$")
QUOTE = re.compile(r"<!--\s*quote:\s*(\S+)\s*(?:\(([^)]*)\))?\s*-->\s*\n```python\n(.*?)```", re.S)
BLANKED = re.compile(r"lesson (\d+), exercise (\d+): ")


# ------------------------------------------------------------------------------------------------------
# Regions
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A marked region: lines begin+1 .. end-1 of a file (begin, end: the marker lines' indices)."""

    lesson: int
    label: str  # without parentheses; "" for an unlabelled region
    exercise: bool  # the begin marker ends with the `exercise` tag
    begin: int
    end: int


def _parse_rest(rest: str) -> tuple[str, bool]:
    """" (rms_norm) exercise" -> ("rms_norm", True); " (mask)" -> ("mask", False); "" -> ("", False)."""
    rest = rest.strip()
    exercise = rest.endswith("exercise") and not rest.endswith("(exercise)")
    if exercise:
        rest = rest[:-len("exercise")].strip()
    label = rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest
    return label, exercise


def find_regions(lines: list[str], name: str = "<source>") -> list[Region]:
    """Every marked region of a file's lines, nested ones included. Unpaired markers raise ConfigError."""
    regions, open_ = [], []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        key = (int(m["lesson"]), m["rest"].strip())
        if m["kind"] == "begin":
            open_.append((key, i))
            continue
        if not open_ or open_[-1][0] != key:
            raise ConfigError(f"{name}:{i + 1}: '{line.strip()}' does not close the innermost open region")
        (lesson, rest), begin = open_.pop()
        label, exercise = _parse_rest(rest)
        regions.append(Region(lesson, label, exercise, begin, i))
    if open_:
        raise ConfigError(f"{name}:{open_[-1][1] + 1}: a region is never closed")
    return sorted(regions, key=lambda r: r.begin)


def exercise_region(lines: list[str], ex: Exercise) -> Region:
    """The tagged region of `ex` in its file's lines (ConfigError if missing or not tagged)."""
    for r in find_regions(lines, ex.path):
        if r.lesson == ex.lesson and r.label == ex.label and r.exercise:
            return r
    raise ConfigError(f"{ex.path} has no region '{ex.marker}' (exercise {ex.number}, {ex.name})")


# ------------------------------------------------------------------------------------------------------
# Blanking
# ------------------------------------------------------------------------------------------------------
def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _signature_end(code: list[str], fn: ast.FunctionDef) -> int:
    """1-based line (within `code`) of the ':' that ends `fn`'s header (multi-line signatures too)."""
    source = "\n".join(code[fn.lineno - 1:]) + "\n"
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
            return fn.lineno + tok.start[0] - 1
    raise ConfigError(f"cannot find the end of the signature of {fn.name}")


def body_span(lines: list[str], region: Region) -> tuple[int, int, str]:
    """(first, stop, indent): the lines [first, stop) an exercise's blank replaces, and its indentation.

    A region that holds one function (or method) keeps its decorators, signature and docstring; the
    rest of the function goes. Any other region (part of a body) goes whole."""
    code = lines[region.begin + 1:region.end]
    if any(MARKER.match(line) for line in code):
        raise ConfigError(f"exercise region '{region.label}' contains other markers: an exercise must not nest regions")
    base = min((len(_indent(x)) for x in code if x.strip()), default=0)
    tree = ast.parse(textwrap.dedent("\n".join(code)))
    if len(tree.body) == 1 and isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        fn = tree.body[0]
        doc = fn.body[0] if (isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant)
                             and isinstance(fn.body[0].value.value, str)) else None
        keep = doc.end_lineno if doc is not None else _signature_end([x[base:] for x in code], fn)
        indent = " " * (base + fn.body[0].col_offset)
        return region.begin + 1 + keep, region.begin + 1 + fn.end_lineno, indent
    first = next(i for i, x in enumerate(code) if x.strip())
    last = max(i for i, x in enumerate(code) if x.strip())
    return region.begin + 1 + first, region.begin + 2 + last, _indent(code[first])


def blank_lines(ex: Exercise, indent: str) -> list[str]:
    """What a blanked body holds: the task as a comment, and the hint in the error."""
    return [f"{indent}# Exercise {ex.number} (lesson {ex.lesson:02d}): {ex.task}.",
            f"{indent}# Check it with: {ex.command}",
            f"{indent}raise NotImplementedError({ex.message!r})"]


def blank(text: str, exercises) -> str:
    """`text` (a source file) with the bodies of `exercises` (all in this file) blanked."""
    lines = text.split("\n")
    spans = []
    for ex in exercises:
        first, stop, indent = body_span(lines, exercise_region(lines, ex))
        spans.append((first, stop, blank_lines(ex, indent)))
    for first, stop, new in sorted(spans, reverse=True):  # bottom up: earlier indices stay valid
        lines[first:stop] = new
    return "\n".join(lines)


def blank_lesson(text: str, originals: dict, blanked: dict) -> str:
    """A lesson whose quotes of blanked code show the blanked code: `originals` / `blanked` map a source
    path to its lines before and after blanking. Each exercise body the quote shows is replaced (a quote
    that elides it with `# ...` is left as it is)."""
    def fix(m):
        path, label, quote = m.group(1), (m.group(2) or ""), m.group(3)
        if path not in originals:
            return m.group(0)
        old = originals[path]
        regions = find_regions(old, path)
        region = next((r for r in regions if r.label == label), None)
        if region is None:
            return m.group(0)
        body = [x for x in old[region.begin + 1:region.end] if not MARKER.match(x)]
        base = min((len(_indent(x)) for x in body if x.strip()), default=0)  # the quote is dedented by this
        q = quote.rstrip("\n").split("\n")
        for r in regions:
            if not (r.exercise and region.begin <= r.begin and r.end <= region.end):
                continue
            ex = next((e for e in EXERCISES if (e.path, e.lesson, e.label) == (path, r.lesson, r.label)), None)
            if ex is None or path not in blanked:
                continue
            first, stop, indent = body_span(old, r)
            gone = [x[base:].rstrip() for x in old[first:stop]]
            for i in range(len(q) - len(gone) + 1):
                if [x.rstrip() for x in q[i:i + len(gone)]] == gone:
                    q[i:i + len(gone)] = [x[base:] for x in blank_lines(ex, indent)]
                    break
        return m.group(0)[: m.start(3) - m.start(0)] + "\n".join(q) + "\n```"

    return QUOTE.sub(fix, text)


# ------------------------------------------------------------------------------------------------------
# The student copy
# ------------------------------------------------------------------------------------------------------
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "_executed", "_out", ".pytest_cache", ".ipynb_checkpoints")


def start(dest, exercises=EXERCISES, source=SOURCE_ROOT) -> Path:
    """Write a student copy into `dest` (which must not exist or be empty): the package with the
    exercises blanked, the tests that grade them, the lessons (quotes blanked) and the notebooks."""
    source, dest = Path(source).resolve(), Path(dest).resolve()
    if not (source / "tests").is_dir() or not (source / "lessons").is_dir():
        raise ConfigError(f"exercises need the litetorch source checkout (its tests/ and lessons/); "
                          f"{source} has none. Clone the repository and install it with `pip install -e .`")
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty; give a new directory for the student copy")
    if dest == source or source in dest.parents and dest.parts[len(source.parts)] in ("litetorch", "tests"):
        raise ConfigError(f"{dest} is inside the library's own package or tests; choose a directory elsewhere")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "litetorch", dest / "litetorch", ignore=_IGNORE)
    shutil.copytree(source / "tests", dest / "tests", ignore=_IGNORE)
    shutil.copytree(source / "notebooks", dest / "notebooks", ignore=_IGNORE)
    for name in ("pyproject.toml", "README.md", "COURSE.md", "LICENSE"):
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)

    by_file: dict[str, list[Exercise]] = {}
    for ex in exercises:
        by_file.setdefault(ex.path, []).append(ex)
    originals, blanked = {}, {}
    for path, exs in by_file.items():
        text = (source / path).read_text()
        new = blank(text, exs)
        compile(new, path, "exec")  # a blanked file must still be valid Python
        (dest / path).write_text(new)
        originals[path], blanked[path] = text.split("\n"), new.split("\n")

    (dest / "lessons").mkdir()
    shutil.copytree(source / "lessons" / "figures", dest / "lessons" / "figures", ignore=_IGNORE)
    for lesson in sorted((source / "lessons").glob("*.md")):
        (dest / "lessons" / lesson.name).write_text(blank_lesson(lesson.read_text(), originals, blanked))

    (dest / "EXERCISES.md").write_text(exercise_table(exercises))
    state = {"exercises": [ex.number for ex in exercises], "source": str(source)}
    (dest / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    return dest


def exercise_table(exercises=EXERCISES) -> str:
    """EXERCISES.md of a student copy: one row per exercise."""
    rows = ["# Exercises", "",
            "Work in order: the tests of exercise K use only exercises 1..K. Each blank body says what to write;",
            "the lesson explains it. `litetorch exercises check K` (in this directory) grades one.", "",
            "| # | lesson | file | what to write | check |", "|---|---|---|---|---|"]
    for ex in exercises:
        rows.append(f"| {ex.number} | {ex.lesson:02d} | [`{ex.path}`]({ex.path}) | {ex.task} | `{ex.command}` |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------------------
# Checking one exercise
# ------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One test's result, from pytest's junit report."""

    nodeid: str
    status: str  # "passed", "failed", "error", "skipped"
    message: str = ""
    text: str = ""


@dataclass
class CheckResult:
    exercise: Exercise
    outcomes: list
    report: str
    returncode: int

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and all(o.status in ("passed", "skipped") for o in self.outcomes) \
            and any(o.status == "passed" for o in self.outcomes)


def student_dir(path=None) -> Path:
    """The student copy to check: `path`, or the current directory (ConfigError if it is not one)."""
    d = Path(path if path is not None else os.getcwd()).resolve()
    if not (d / STATE_FILE).exists():
        raise ConfigError(f"{d} is not a student copy (no {STATE_FILE}); make one with "
                          f"`litetorch exercises start DIR`, then `cd DIR` or pass --dir DIR")
    return d


def run_tests(directory: Path, node_ids, timeout: float = 900.0) -> tuple[list[Outcome], int, str]:
    """Run pytest on `node_ids` in `directory` with its litetorch first on the path; (outcomes, exit code,
    pytest's output). A fresh interpreter, so the student's code is imported as it is now."""
    directory = Path(directory).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "report.xml"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(directory)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.pop("PYTEST_ADDOPTS", None)
        cmd = [sys.executable, "-m", "pytest", *node_ids, "-q", "--tb=short", "-p", "no:cacheprovider",
               "-o", "addopts=", "--junitxml", str(xml)]
        proc = subprocess.run(cmd, cwd=directory, env=env, capture_output=True, text=True, timeout=timeout)
        outcomes = _read_junit(xml) if xml.exists() else []
    return outcomes, proc.returncode, proc.stdout + proc.stderr


def _read_junit(xml: Path) -> list[Outcome]:
    out = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        nodeid = f"{module}.py::{case.get('name')}" if module else case.get("name", "?")
        status, message, text = "passed", "", ""
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message, text = el.get("message", ""), el.text or ""
                break
        out.append(Outcome(nodeid, status, message, text))
    return out


def check(key, directory=None) -> CheckResult:
    """Grade exercise `key` (number or name) in the student copy `directory` (default: the current one)."""
    ex = key if isinstance(key, Exercise) else get(key)
    d = student_dir(directory)
    outcomes, code, output = run_tests(d, ex.tests)
    return CheckResult(ex, outcomes, explain(ex, outcomes, code, output), code)


# ---- the report ----------------------------------------------------------------------------------------
_FRAME = re.compile(r"^(?P<path>[^\s:][^:]*\.py):(?P<line>\d+): in (?P<func>\S+)$")


def _frames(text: str) -> list[tuple[str, str, str, str]]:
    """(path, line, function, source line) of each frame in a --tb=short traceback."""
    lines, frames = text.splitlines(), []
    for i, line in enumerate(lines):
        m = _FRAME.match(line.strip())
        if m:
            src = lines[i + 1].strip() if i + 1 < len(lines) and not lines[i + 1].startswith("E ") else ""
            frames.append((m["path"], m["line"], m["func"], src))
    return frames


def _error_lines(text: str) -> list[str]:
    return [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]


def _short(s: str, n: int = 300) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


_EXC = re.compile(r"^(?:E\s+)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))\b:?\s*(.*)$")


def explain_failure(ex: Exercise, o: Outcome) -> list[str]:
    """The first failure, in plain words."""
    errors = _error_lines(o.text) or [o.message]
    blob = "\n".join(errors) + "\n" + o.message
    m = BLANKED.search(blob)
    if m:
        n = int(m.group(2))
        if n == ex.number:
            return [f"Exercise {n} is still blank: its body raises NotImplementedError. Replace the `raise` in "
                    f"{ex.path} with your code.", f"Hint: {ex.hint}."]
        other = next((e for e in EXERCISES if e.number == n), None)
        what = f"exercise {n} (lesson {other.lesson:02d}, {other.name}: {other.task})" if other else f"exercise {n}"
        return [f"This test also runs {what}, which is still blank in your copy.",
                f"Do exercise {n} first: litetorch exercises check {n}."]
    frames = _frames(o.text)
    exc = next((_EXC.match(e) for e in reversed(errors) if _EXC.match(e)), None)
    name = exc.group(1) if exc else ""
    if "::" not in o.nodeid or name in ("SyntaxError", "IndentationError", "ImportError", "ModuleNotFoundError"):
        if "::" not in o.nodeid:  # a collection error: the test file could not even be imported
            head = "Your copy of litetorch does not import (pytest could not load the test file):"
        else:
            head = "Your copy of litetorch does not import:"
        return [head] + [f"    {_short(e, 400)}" for e in errors if e][:6]
    if not name or name == "AssertionError" or errors[0].startswith("assert "):
        where = next((f for f in reversed(frames) if f[0].startswith("tests/")), None)
        out = []
        if where:
            out.append(f"It failed the assertion at {where[0]}:{where[1]} (in {where[2]}):")
            if where[3]:
                out.append(f"    {where[3]}")
        message = [e for e in errors if e and not e.startswith(("+", "Use -v", "Full diff"))][:4]
        out.append("which says:")
        out += [f"    {_short(e, 400)}" for e in message] or [f"    {_short(o.message, 400)}"]
        return out
    mine = next((f for f in reversed(frames) if f[0].startswith(ex.path)), None) or \
        next((f for f in reversed(frames) if f[0].startswith("litetorch/")), None)
    out = [f"Your code raised {name}: {_short(exc.group(2), 400)}" if exc else f"Your code raised {_short(errors[0], 400)}"]
    if mine:
        out.append(f"at {mine[0]}:{mine[1]} (in {mine[2]}):")
        if mine[3]:
            out.append(f"    {mine[3]}")
    return out


def explain(ex: Exercise, outcomes: list, returncode: int, output: str) -> str:
    head = [f"Exercise {ex.number} of {len(EXERCISES)} (lesson {ex.lesson:02d}, {ex.name}): {ex.task}.",
            f"It lives in {ex.path}, between '{ex.marker}' and its end."]
    if not outcomes:
        tail = "\n".join(output.strip().splitlines()[-15:])
        return "\n".join(head + ["", "ERROR: pytest ran no tests (exit code %d). Its last words:" % returncode, tail])
    failed = [o for o in outcomes if o.status in ("failed", "error")]
    passed = [o for o in outcomes if o.status == "passed"]
    if not failed and passed:
        nxt = next((e for e in EXERCISES if e.number == ex.number + 1), None)
        more = f" Next: exercise {nxt.number} ({nxt.name}), `{nxt.command}`." if nxt else " That was the last one."
        return "\n".join(head + ["", f"PASS: all {len(passed)} tests pass.{more}"])
    if not failed:
        return "\n".join(head + ["", "SKIP: every test was skipped (is PyTorch installed?)."])
    body = [f"FAIL: {len(failed)} of {len(outcomes)} tests fail.", "",
            f"The first failing test: {failed[0].nodeid}"]
    body += ["  " + line for line in explain_failure(ex, failed[0])]
    return "\n".join(head + [""] + body)
