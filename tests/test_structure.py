"""The package's structure: imports point one way (no module imports, directly or through others, a module
that imports it back), and the speed that is not a definition stays in one place.

Imports inside functions count too: a lazy import is still a dependency, and a cycle hidden in a function
is still a cycle a reader has to untangle.
"""
import ast
import builtins
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "litetorch"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set) -> set:
    """The litetorch modules `path` imports (absolute names), wherever in the file the import is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            root = ".".join(base + ([node.module] if node.module else []))
            named = [f"{root}.{a.name}" for a in node.names]  # `from . import functional`: modules by name
            targets = named if all(t in known for t in named) else [root]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `from .ops import x`: x is a name in litetorch.ops, not a module
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, known) for f in files}


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def without_packages(graph: dict) -> dict:
    """Package __init__ files only hand names on; an import of a package means an import of what it
    re-exports, so cycles are judged between the modules that define things."""
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    out = {}
    for m, deps in graph.items():
        if m in packages:
            continue
        flat = set()
        for d in deps:
            flat |= graph[d] - packages if d in packages else {d}
        out[m] = flat - {m}
    return out


def test_the_import_graph_has_no_cycles():
    found = cycles(without_packages(import_graph()))
    assert not found, "import cycles (each group imports itself through the others): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_sees_imports_inside_functions():
    graph = import_graph()
    assert "litetorch.io.hub" in graph["litetorch.models.loading"]  # imported inside load_model()
    assert "litetorch.nn.sdpa" in graph["litetorch.nn.attention"]  # a module-level `from .sdpa import ...`


NN_LAYERS = sorted((PACKAGE / "nn").glob("*.py"))


@pytest.mark.parametrize("path", NN_LAYERS, ids=[p.name for p in NN_LAYERS])
def test_layers_carry_no_speed_switches(path):
    """Layers have one forward: no routing on grad mode, no module-level flags flipped from outside."""
    text = path.read_text()
    assert "is_grad_enabled" not in text, f"{path.name} routes on is_grad_enabled(): one forward for training and inference"
    flags = re.findall(r"^([A-Z][A-Z_]+)\s*=\s*(True|False|\d+|\"[^\"]*\")\s*(#.*)?$", text, re.M)
    assert not flags, f"{path.name} has module-level switches {flags}; pass arguments instead"


# ---- errors: everything litetorch raises on purpose is a LitetorchError --------------------------------
BUILTIN_ERRORS = {name for name, value in vars(builtins).items()
                  if isinstance(value, type) and issubclass(value, BaseException)} | {"Exception"}
ALLOWED_BUILTIN = {"NotImplementedError",  # an abstract method a subclass must define: a contract, not an error
                   "SystemExit"}  # a command line's main() ending the program with a message
ATTRIBUTE_PROTOCOL = {"__getattr__", "__getattribute__", "__setattr__", "__delattr__"}  # Python expects AttributeError


def builtin_raises(path: Path, root: Path = ROOT) -> list[str]:
    """`raise ValueError(...)` and friends in a file: raises of a builtin exception class, by line."""
    found = []

    def visit(node, function=None):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = target.id if isinstance(target, ast.Name) else None
            protocol = name == "AttributeError" and function in ATTRIBUTE_PROTOCOL
            if name in BUILTIN_ERRORS - ALLOWED_BUILTIN and not protocol:
                found.append((node.lineno, f"{path.relative_to(root)}:{node.lineno} raises {name}"))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text()))
    return [hit for _, hit in sorted(found)]


def test_every_error_litetorch_raises_on_purpose_is_a_litetorch_error():
    """litetorch.errors classes subclass the matching builtin, so nothing is lost by raising them; a bare
    ValueError would slip past `except LitetorchError`. (testing.py's assert_close and gradcheck raise
    AssertionError on purpose: they are assertions.)"""
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in builtin_raises(path)
             if not (path.name == "testing.py" and hit.endswith("AssertionError"))]
    assert not found, "raise a litetorch.errors class instead:\n  " + "\n  ".join(found)


def test_the_raise_finder_finds_a_builtin_raise(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g(x):\n    if x:\n        raise ValueError('bad')\n    raise KeyError\n    raise NotImplementedError\n"
                 "def __getattr__(name):\n    raise AttributeError(name)\n")
    assert builtin_raises(f, tmp_path) == ["m.py:3 raises ValueError", "m.py:4 raises KeyError"]
