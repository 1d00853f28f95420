"""Lessons stay true to the code: links resolve, marked regions are well formed, every lesson has a notebook."""
import re
import textwrap
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


# ---- quotes: the code a lesson shows is the code that runs ---------------------------------------------
# A lesson quotes a marked region of the source with an HTML comment right before the code block:
#
#     <!-- quote: litetorch/nn/attention.py (forward) -->
#     ```python
#     ...the region's text, exactly...
#     ```
#
# The label is the text after `# lesson NN: begin` ("(forward)"; empty for an unlabelled region). The quote
# must equal the region line for line (both dedented), except where a line `# ...` stands for lines left
# out. A quoted `forward` is never elided. A tag whose file or region does not exist fails, and so does a
# code block that copies the start of a region without a tag (it would drift unnoticed).
QUOTE = re.compile(r"<!--\s*quote:\s*(\S+)\s*(\([^)]*\))?\s*-->\s*\n```python\n(.*?)```", re.S)
ELISION = "# ..."


MARKER = re.compile(r"^[ \t]*#\s*lesson (\d+): (begin|end)([^\n]*)$")


def _label(rest: str) -> str:
    """The label of a marker's trailing text: "(rms_norm) exercise" -> "(rms_norm)" (the exercise tag,
    litetorch/exercises.py, is not part of the label)."""
    rest = rest.strip()
    return rest[:-len("exercise")].strip() if rest.endswith("exercise") else rest


def _regions(path: Path) -> dict:
    """{label: region text} of a source file's `# lesson NN: begin (label)` / `end (label)` pairs.

    Regions may nest (an exercise inside a region a lesson quotes); marker lines are not part of any
    region's text."""
    lines = path.read_text().splitlines()
    out, open_ = {}, []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        key = (m.group(1), m.group(3).strip())
        if m.group(2) == "begin":
            open_.append((key, i))
        elif open_ and open_[-1][0] == key:
            _, b = open_.pop()
            body = [x for x in lines[b + 1:i] if not MARKER.match(x)]
            out[_label(key[1])] = "\n".join(body)
    return out


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in textwrap.dedent(text).strip("\n").splitlines()]


def quote_problem(quote: str, region: str) -> str | None:
    """None if `quote` is `region` with only `# ...` elisions; else what differs."""
    src, q = _lines(region), _lines(quote)
    if "def forward(" in quote and any(line.strip() == ELISION for line in q):
        return "a quoted forward must be complete (no '# ...' elisions)"
    # the quote's pieces between elisions must appear in the region, in order, each contiguous
    pieces, piece = [], []
    for line in q:
        if line.strip() == ELISION:
            pieces.append(piece)
            piece = []
        else:
            piece.append(line)
    pieces.append(piece)
    pos = 0
    for i, piece in enumerate(pieces):
        if not piece:
            continue
        starts = [j for j in range(pos, len(src) - len(piece) + 1) if src[j:j + len(piece)] == piece]
        anchored = i == 0  # no elision before the first piece: it must start the region
        if not starts or (anchored and starts[0] != 0):
            return f"these lines are not in the region (in order): {piece[0]!r} ... {piece[-1]!r}"
        pos = starts[0] + len(piece)
    if pieces[-1] and pos != len(src):
        return f"the quote stops before the region ends (next line: {src[pos]!r}); end it with '{ELISION}'"
    return None


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_quotes_equal_their_source_regions(lesson):
    text = lesson.read_text()
    problems = []
    for m in QUOTE.finditer(text):
        path, label, quote = ROOT / m.group(1), (m.group(2) or "").strip(), m.group(3)
        if not path.exists():
            problems.append(f"quote of {m.group(1)}: no such file")
            continue
        regions = _regions(path)
        if label not in regions:
            problems.append(f"quote of {m.group(1)} {label or '(unlabelled)'}: no such region; it has {sorted(regions)}")
            continue
        why = quote_problem(quote, regions[label])
        if why:
            problems.append(f"quote of {m.group(1)} {label}: {why}")
    assert not problems, f"{lesson.name}:\n  " + "\n  ".join(problems)


SKETCH = re.compile(r"<!--\s*sketch\s*-->\s*\n```python\n", re.S)


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_definition_shown_is_a_checked_quote_or_a_declared_sketch(lesson):
    """A block that shows a `def`/`class`, or copies any line that opens a marked region, must say what it
    is: a quote (checked above) or a sketch written for the lesson (`<!-- sketch -->`). Otherwise a quote of a
    function that was renamed or rewritten would go stale with no test noticing."""
    text = lesson.read_text()
    declared = {m.start(3) for m in QUOTE.finditer(text)} | {m.end() for m in SKETCH.finditer(text)}
    starts = {_lines(r)[0] for src in SOURCES for r in _regions(src).values() if _lines(r)}
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        lines = [line for line in _lines(m.group(1)) if line.strip() and not line.strip().startswith("#")]
        if not lines or m.start(1) in declared:
            continue
        if lines[0] in starts or lines[0].lstrip().startswith(("def ", "class ")):
            pytest.fail(f"{lesson.name}: the block starting {lines[0]!r} shows a definition; tag it "
                        f"<!-- quote: path (label) --> (checked against the source) or <!-- sketch -->")


def test_region_labels_are_unique_in_each_file():
    for src in SOURCES:
        labels = re.findall(r"#\s*lesson \d+: begin([^\n]*)", src.read_text())
        labels = [_label(label) for label in labels]
        assert len(labels) == len(set(labels)), f"{src.name}: two regions share a label: {labels}"


def test_the_quote_checker_catches_drift():
    region = "def f(x):\n    y = x + 1\n    return y\n"
    assert quote_problem(region, region) is None
    assert quote_problem("def f(x):\n    # ...\n    return y\n", region) is None
    assert quote_problem("def f(x):\n    y = x + 2\n    return y\n", region)  # a changed line
    assert quote_problem("def f(x):\n    return y\n", region)  # a line dropped without '# ...'
    assert quote_problem("def f(x):\n    y = x + 1\n", region)  # stops early without '# ...'
    assert quote_problem("def forward(x):\n    # ...\n", "def forward(x):\n    return x\n")


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
