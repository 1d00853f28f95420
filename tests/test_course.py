"""The course around the lessons stays complete: COURSE.md schedules every lesson and exercise, and
every "What to try" prompt has an answer (solutions/NN-name.md, or inline in the lesson)."""
import re
from pathlib import Path

import pytest

from litetorch.exercises import EXERCISES

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]-*.md"))
COURSE = ROOT / "COURSE.md"


def prompts(lesson: Path) -> list[str]:
    """The bullets of a lesson's "What to try" section (or "Try it" / "Try")."""
    m = re.search(r"^## (?:What to try|Try it|Try)\n(.*?)(?=^## |\Z)", lesson.read_text(), re.S | re.M)
    assert m, f"{lesson.name} has no 'What to try' section"
    return [b.strip() for b in re.split(r"^[-*] ", m.group(1), flags=re.M)[1:]]  # each bullet with its lines


def test_the_readme_links_the_course():
    assert COURSE.exists()
    assert "](COURSE.md)" in (ROOT / "README.md").read_text()


def test_course_md_schedules_every_lesson_and_every_exercise():
    text = COURSE.read_text()
    missing = [p.name for p in LESSONS if f"lessons/{p.name}" not in text]
    assert not missing, f"COURSE.md does not link these lessons: {missing}"
    listed = set()
    for a, b in re.findall(r"exercises? (\d+)(?:[–-](\d+))?", text):
        listed |= set(range(int(a), int(b or a) + 1))
    unlisted = sorted({ex.number for ex in EXERCISES} - listed)
    assert not unlisted, f"COURSE.md's weeks leave out exercises {unlisted}"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_what_to_try_prompt_has_an_answer(lesson):
    asked = prompts(lesson)
    inline = sum("(Answer:" in p for p in asked)
    if inline == len(asked):  # the lesson answers each prompt where it asks it
        return
    key = ROOT / "solutions" / lesson.name
    assert key.exists(), f"{lesson.name}: {len(asked)} prompts and no solutions/{lesson.name}"
    answered = re.findall(r"^### (\d+)\. ", key.read_text(), re.M)
    assert [int(a) for a in answered] == list(range(1, len(asked) + 1)), \
        f"solutions/{lesson.name} answers {len(answered)} prompts, the lesson asks {len(asked)}"
    assert f"(../lessons/{lesson.name})" in key.read_text(), f"solutions/{lesson.name} does not link its lesson"
