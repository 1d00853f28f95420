"""The exercise list cannot drift from the code, and a student copy behaves as the course says.

Claims:
- every region tagged `exercise` in the source is in litetorch/exercises.py, and every exercise there
  names a tagged region of its lesson, with tests that exist;
- blanking keeps each exercise's signature and docstring, and the blanked package still imports;
- the student's lessons no longer show the code they are asked to write;
- each blanked exercise makes its own tests fail (with its own NotImplementedError, not another
  error), and restoring it from the library (which is the solution) makes them pass: for three
  exercises here, and (slow) for the whole course in order, as a student walks it: in a copy where
  exercises 1..K-1 are filled in and K.. are blank, K's tests fail because of K and K-1's pass.
"""
import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from litetorch import student
from litetorch.errors import ConfigError
from litetorch.exercises import EXERCISES, get

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "litetorch").rglob("*.py"))


def _tagged_regions():
    """{(path, lesson, label)} of every region tagged `exercise` in the package."""
    found = set()
    for src in SOURCES:
        lines = src.read_text().split("\n")
        for r in student.find_regions(lines, str(src)):
            if r.exercise:
                found.add((str(src.relative_to(ROOT)), r.lesson, r.label))
    return found


def test_every_tagged_region_is_an_exercise_and_every_exercise_a_tagged_region():
    listed = {(ex.path, ex.lesson, ex.label) for ex in EXERCISES}
    tagged = _tagged_regions()
    assert not tagged - listed, f"regions tagged 'exercise' but not in litetorch/exercises.py: {sorted(tagged - listed)}"
    assert not listed - tagged, f"exercises whose region is not tagged in the source: {sorted(listed - tagged)}"


def test_exercises_are_numbered_in_lesson_order_with_unique_names():
    assert [ex.number for ex in EXERCISES] == list(range(1, len(EXERCISES) + 1))
    assert len({ex.name for ex in EXERCISES}) == len(EXERCISES)
    lessons = [ex.lesson for ex in EXERCISES]
    assert lessons == sorted(lessons), "exercises must follow the lessons' order (a student works in order)"
    assert len([ex for ex in EXERCISES if ex.lesson <= 18]) >= 30
    assert get(3) is get("3") is get(EXERCISES[2].name)


def test_every_listed_test_function_exists():
    missing = []
    for ex in EXERCISES:
        assert ex.tests, f"exercise {ex.number} has no tests"
        for node in ex.tests:
            path, _, name = node.partition("::")
            func = name.split("[")[0]
            text = (ROOT / path).read_text() if (ROOT / path).exists() else ""
            if not re.search(rf"^def {re.escape(func)}\(", text, re.M):
                missing.append(f"exercise {ex.number}: {node}")
    assert not missing, "listed tests that do not exist:\n  " + "\n  ".join(missing)


def test_pytest_collects_every_listed_test_id():
    """Parametrized ids drift when a grid changes; pytest itself says whether each id still exists."""
    ids = sorted({node for ex in EXERCISES for node in ex.tests})
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                          cwd=ROOT, capture_output=True, text=True, env=_env(ROOT))
    collected = set(proc.stdout.splitlines())
    whole = {line.split("[")[0] for line in collected}  # an id without [...] selects every parametrization
    missing = [i for i in ids if i not in collected and i not in whole]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("ERROR", "E "))]
    assert proc.returncode == 0 and not missing, f"{len(missing)} ids not collected: {missing[:5]}\n" + "\n".join(errors)


def test_blanking_keeps_the_signature_and_docstring_and_raises_the_hint():
    for ex in EXERCISES:
        text = (ROOT / ex.path).read_text()
        new = student.blank(text, [ex])
        compile(new, ex.path, "exec")
        lines, blanked = text.split("\n"), new.split("\n")
        region = student.exercise_region(lines, ex)
        first, stop, _ = student.body_span(lines, region)
        assert lines[:first] == blanked[:first], f"exercise {ex.number}: lines before the body changed"
        assert lines[stop:] == blanked[first + 3:], f"exercise {ex.number}: lines after the body changed"
        assert f"raise NotImplementedError({ex.message!r})" in new
        body = "\n".join(lines[region.begin + 1:region.end])
        if body.lstrip().startswith(("def ", "@")):  # a whole function: its contract stays
            after = student.exercise_region(blanked, ex)
            fn = ast.parse(textwrap.dedent(body)).body[0]
            kept = ast.parse(textwrap.dedent("\n".join(blanked[after.begin + 1:after.end]))).body[0]
            assert (fn.name, ast.dump(fn.args)) == (kept.name, ast.dump(kept.args)), f"exercise {ex.number}: signature changed"
            assert ast.get_docstring(fn) == ast.get_docstring(kept), f"exercise {ex.number}: docstring changed"


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    return student.start(tmp_path_factory.mktemp("student") / "course")


def _env(directory):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(directory)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTEST_ADDOPTS", None)
    return env


def test_the_blanked_package_imports_and_is_the_one_imported(copy):
    proc = subprocess.run([sys.executable, "-c", "import litetorch, litetorch.student; print(litetorch.__file__)"],
                          cwd=copy, capture_output=True, text=True, env=_env(copy))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve().parent == copy / "litetorch"
    rows = [line for line in (copy / "EXERCISES.md").read_text().splitlines() if line.startswith("| ") and "check" in line]
    assert len(rows) == len(EXERCISES) + 1  # the header and one row per exercise


def test_the_students_lessons_do_not_show_the_code_to_write(copy):
    shown = 0
    for ex in EXERCISES:
        lines = (ROOT / ex.path).read_text().split("\n")
        first, stop, _ = student.body_span(lines, student.exercise_region(lines, ex))
        body = [x.strip() for x in lines[first:stop] if len(x.strip()) > 30]
        for lesson in (ROOT / "lessons").glob(f"{ex.lesson:02d}-*.md"):
            original, copied = lesson.read_text(), (copy / "lessons" / lesson.name).read_text()
            if body and all(x in original for x in body):
                shown += 1
                left = [x for x in body if copied.count(x) >= original.count(x)]  # each line shown once less
                assert not left, f"{lesson.name} still shows exercise {ex.number}'s code: {left[:2]}"
                assert ex.message in copied
    assert shown >= 15, f"only {shown} exercises are quoted whole in their lessons"


def test_check_outside_a_student_copy_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="not a student copy.*exercises start"):
        student.check(1, tmp_path)


def test_start_refuses_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        student.start(tmp_path)


def outcomes_of(node: str, outcomes) -> list:
    """The results of a listed node id: itself, or every parametrization of a function listed without [...]."""
    return [o for o in outcomes if o.nodeid == node or o.nodeid.startswith(node + "[")]


# ---- the course, walked as a student walks it -----------------------------------------------------------
def restore(copy_dir: Path, done: set) -> None:
    """Fill in exercises `done` (from the library: it is the solution); the others stay blank."""
    for path in sorted({ex.path for ex in EXERCISES}):
        blank_here = [ex for ex in EXERCISES if ex.path == path and ex.number not in done]
        (copy_dir / path).write_text(student.blank((ROOT / path).read_text(), blank_here))


def walk_problems(copy_dir: Path, numbers) -> list[str]:
    """Walk exercises `numbers` in order. Before exercise K is filled in (1..K-1 are), its tests fail with
    its own NotImplementedError; after, they pass. One pytest run per step checks K-1's pass and K's fail."""
    problems, done = [], {ex.number for ex in EXERCISES if ex.number < numbers[0]}
    previous = None
    for ex in [get(n) for n in numbers] + [None]:
        restore(copy_dir, done)
        nodes = (previous.tests if previous else ()) + (ex.tests if ex else ())
        outcomes, code, output = student.run_tests(copy_dir, nodes)
        missing = [n for n in nodes if not outcomes_of(n, outcomes)]
        if missing:
            problems.append(f"step {ex.number if ex else 'end'}: pytest ran none of {missing[:3]} "
                            f"(exit {code}): {output[-1500:]}")
        for node in previous.tests if previous else ():
            for o in outcomes_of(node, outcomes):
                if o.status != "passed":
                    problems.append(f"exercise {previous.number} filled in, {o.nodeid} {o.status}: "
                                    f"{' / '.join(student.explain_failure(previous, o))}")
        for node in ex.tests if ex else ():
            for o in outcomes_of(node, outcomes):
                if o.status not in ("failed", "error") or ex.message not in o.text + o.message:
                    why = " / ".join(student.explain_failure(ex, o)) if o.status in ("failed", "error") else o.status
                    problems.append(f"exercise {ex.number} blank, {o.nodeid}: expected its NotImplementedError, got: {why}")
        if ex is None:
            break
        done.add(ex.number)
        previous = ex
    return problems


def test_a_few_blanked_exercises_make_their_own_tests_fail_and_restoring_them_makes_them_pass(copy):
    """The fast version: mul (lesson 01), the causal mask (03) and Q4_1 dequantisation (10) blank, the rest
    filled in: each one's tests fail with its own NotImplementedError; filled in, they pass (two pytest runs)."""
    chosen = [get("mul"), get("causal_mask"), get("q4_1")]
    nodes = tuple(n for ex in chosen for n in ex.tests)
    problems = []
    for blank in (True, False):
        restore(copy, {ex.number for ex in EXERCISES} - ({ex.number for ex in chosen} if blank else set()))
        outcomes, code, output = student.run_tests(copy, nodes)
        missing = [n for n in nodes if not outcomes_of(n, outcomes)]
        assert not missing, f"pytest ran none of {missing}: {output[-1500:]}"
        for ex in chosen:
            for o in (o for node in ex.tests for o in outcomes_of(node, outcomes)):
                if blank and (o.status not in ("failed", "error") or ex.message not in o.text + o.message):
                    problems.append(f"exercise {ex.number} blank, {o.nodeid}: {o.status}, not its NotImplementedError")
                if not blank and o.status != "passed":
                    problems.append(f"exercise {ex.number} filled in, {o.nodeid}: {' / '.join(student.explain_failure(ex, o))}")
    restore(copy, set())
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LITETORCH_COURSE_WALK"),
                    reason="the whole-course walk takes 6-10 minutes (two pytest runs per exercise); "
                           "LITETORCH_COURSE_WALK=1 runs it. The test above checks three exercises the same way")
def test_the_whole_course_in_order_each_exercise_fails_blank_and_passes_filled(tmp_path):
    """Exercise by exercise, in course order: with it blank (and every later one too) its tests fail with
    its own NotImplementedError; filled in, they pass. Run it after changing exercises.py or a region."""
    copy_dir = student.start(tmp_path / "course")
    problems = walk_problems(copy_dir, [ex.number for ex in EXERCISES])
    assert not problems, "\n".join(problems)


# ---- what a student reads --------------------------------------------------------------------------------
def test_a_failed_check_is_explained_in_plain_words():
    """Each kind of failure pytest can report gets its own sentence (synthetic reports, as junit gives them)."""
    mul, backward = get("mul"), get("backward")
    O = student.Outcome
    own = O("tests/test_tensor_ops.py::t", "failed", "NotImplementedError: " + mul.message,
            "litetorch/ops/arithmetic.py:55: in mul\n    raise NotImplementedError(...)\nE   NotImplementedError: "
            + mul.message)
    assert "Exercise 3 is still blank" in student.explain_failure(mul, own)[0]
    other = O("tests/test_tensor_ops.py::t", "failed", "", "E   NotImplementedError: " + backward.message)
    assert "also runs exercise 2" in student.explain_failure(mul, other)[0]
    assertion = O("tests/test_x.py::t", "failed", "AssertionError: out: max error 1.0 > 1e-10",
                  "tests/test_x.py:12: in t\n    assert_close(a, b)\nE   AssertionError: out: max error 1.0 > 1e-10")
    words = student.explain_failure(mul, assertion)
    assert words[0] == "It failed the assertion at tests/test_x.py:12 (in t):" and "max error 1.0" in words[-1]
    raised = O("tests/test_x.py::t", "failed", "TypeError: bad",
               "litetorch/ops/arithmetic.py:60: in mul\n    return a * q\nE   TypeError: bad operand")
    assert student.explain_failure(mul, raised)[:2] == ["Your code raised TypeError: bad operand",
                                                         "at litetorch/ops/arithmetic.py:60 (in mul):"]
    broken = O("tests.test_x", "error", "collection failure", 'E     File "litetorch/tensor.py", line 3\nE   SyntaxError: x')
    assert "does not import" in student.explain_failure(mul, broken)[0]


def test_the_command_line_lists_the_exercises_and_refuses_a_check_outside_a_copy(tmp_path, capsys):
    from litetorch.cli import main
    assert main(["exercises", "list"]) == 0
    out = capsys.readouterr().out
    assert all(ex.name in out and ex.command in out for ex in EXERCISES)
    assert main(["exercises", "check", "1", "--dir", str(tmp_path)]) == 1
    assert "not a student copy" in capsys.readouterr().err
