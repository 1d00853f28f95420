"""Lessons stay true to the code: links resolve, marked regions are well formed, every lesson has a notebook."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]-*.md"))
SOURCES = sorted((ROOT / "litetorch").rglob("*.py"))


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_links_resolve(lesson):
    text = lesson.read_text()
    links = re.findall(r"\]\((\.\./[^)#\s]+)", text)
    missing = [l for l in links if not (lesson.parent / l).resolve().exists()]
    assert not missing, f"{lesson.name} links to files that do not exist: {missing}"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_lesson_has_a_notebook(lesson):
    number = lesson.name[:2]
    assert list((ROOT / "notebooks").glob(f"{number}-*.py")), f"no notebooks/{number}-*.py for {lesson.name}"


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_lesson_markers_are_paired(source):
    begins = re.findall(r"#\s*lesson (\d+): begin(.*)", source.read_text())
    ends = re.findall(r"#\s*lesson (\d+): end(.*)", source.read_text())
    assert sorted((n, l.strip()) for n, l in begins) == sorted((n, l.strip()) for n, l in ends), \
        f"{source.name}: unpaired '# lesson NN: begin/end' markers"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_quoted_definitions_match_the_source(lesson):
    """A fenced python block that quotes a `def`/`class` from a marked region must be that region's text."""
    regions = []
    for src in SOURCES:
        text = src.read_text()
        for m in re.finditer(r"#\s*lesson \d+: begin[^\n]*\n(.*?)\n\s*#\s*lesson \d+: end", text, re.S):
            regions.append(m.group(1))
    for block in re.findall(r"```python\n(.*?)```", lesson.read_text(), re.S):
        first = block.strip().splitlines()[0] if block.strip() else ""
        if not first.startswith(("def ", "class ")):
            continue
        holders = [r for r in regions if first in r]
        if not holders:
            continue  # a definition written in the lesson itself (e.g. a from-scratch version)
        ok = any(_is_abridged_copy(block, r) for r in holders)
        assert ok, f"{lesson.name}: the quoted `{first}` no longer matches its marked region in the source"


def _is_abridged_copy(block: str, region: str) -> bool:
    """Every code line of the quote appears in the region, in order (docstrings/comments may be cut)."""
    src = [line.strip() for line in region.splitlines() if line.strip()]
    i = 0
    for line in (l.strip() for l in block.splitlines()):
        if not line or line in ("...", "# ...") or line.startswith("#"):
            continue
        while i < len(src) and src[i] != line and src[i].split("  #")[0].rstrip() != line.split("  #")[0].rstrip():
            i += 1
        if i == len(src):
            return False
        i += 1
    return True


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_images_are_committed_figures(lesson):
    """Every embedded picture exists, and none is a notebook's output (notebooks/_out/ is git-ignored:
    a lesson embeds lessons/figures/, which scripts/make_figures.py writes)."""
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", lesson.read_text())
    missing = [i for i in images if not (lesson.parent / i).resolve().exists()]
    ignored = [i for i in images if "_out/" in i or "_executed/" in i]
    assert not missing, f"{lesson.name} embeds pictures that do not exist: {missing}"
    assert not ignored, f"{lesson.name} embeds git-ignored notebook outputs: {ignored}"


def test_make_figures_draws_every_diagram_and_each_is_embedded(tmp_path):
    pytest.importorskip("matplotlib")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "scripts" / "make_figures.py")
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    make_figures.FIGURES = tmp_path
    for name, draw in make_figures.DIAGRAMS.items():
        assert draw() == tmp_path / name and (tmp_path / name).stat().st_size > 10_000
        lesson = next((ROOT / "lessons").glob(f"{name[:2]}-*.md"))
        assert f"](figures/{name})" in lesson.read_text(), f"{lesson.name} does not embed {name}"
