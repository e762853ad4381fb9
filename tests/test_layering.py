"""The layering holds: every module of ``harness`` imports only modules of its own floor or the floors below it,
counting imports anywhere in a file (inside functions too) and those made through ``importlib.import_module``; no
two modules import each other in a circle; and no file outside ``parallel/`` compares against a method's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top to bottom. A floor is a list of module prefixes (a folder, or one module).
FLOORS = [
    ("apps", ["harness.bench", "harness.device", "harness.calibrate", "harness.config", "harness.record",
              "harness.train"]),
    ("sweep", ["harness.sweep"]),
    ("report", ["harness.report"]),
    ("store and rank", ["harness.store", "harness.rank"]),
    ("spec", ["harness.spec"]),
    ("network", ["harness.network"]),
    ("parallel", ["harness.parallel"]),
    ("emulation, launch, options", ["harness.emulation", "harness.launch", "harness.options"]),
    ("models and comm", ["harness.models", "harness.comm"]),
    ("ground", ["harness.errors", "harness.paths", "harness"]),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in (REPO / "harness").rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


def floor_of(module: str) -> int:
    """The index of the floor holding ``module`` (the longest matching prefix decides)."""
    best, length = None, -1
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = i, len(p)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best


def imported(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """The harness modules ``path`` (module ``module``) imports, statically or through ``importlib``."""
    is_pkg = path.name == "__init__.py"
    out = set()

    def add(name: str) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("harness"):
                for a in node.names:
                    add(f"{target}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("harness"):
                    add(a.name)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) \
                == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.FormattedValue) and \
                    getattr(arg.values[0].value, "id", None) == "__name__":
                continue  # a package loading its own submodules (the method and backend registries)
            else:
                raise AssertionError(f"{path}:{node.lineno}: import_module with a name this test cannot read")
    return out


GRAPH = {m: imported(p, m, modules()) for m, p in modules().items()}


def own_submodule(m: str, d: str) -> bool:
    return d.startswith(m + ".")  # a package's __init__ importing its own submodules


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_floors(module):
    up = [d for d in GRAPH[module] if floor_of(d) < floor_of(module) and not own_submodule(module, d)]
    assert not up, (f"{module} ({FLOORS[floor_of(module)][0]}) imports from a floor above it: "
                    + ", ".join(f"{d} ({FLOORS[floor_of(d)][0]})" for d in sorted(up)))


def test_no_import_circle():
    graph = {m: {d for d in deps if not own_submodule(m, d) and not own_submodule(d, m)} for m, deps in GRAPH.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


def test_the_test_sees_imports_inside_functions_and_through_importlib(tmp_path):
    """The reader itself: a lazy import and an import_module call both count."""
    f = tmp_path / "m.py"
    f.write_text("import importlib\n\ndef g():\n    from harness.sweep import progress\n"
                 "    importlib.import_module('harness.report.plot')\n")
    known = {"harness.sweep.progress": f, "harness.report.plot": f, "harness.x": f}
    assert imported(f, "harness.x", known) == {"harness.sweep.progress", "harness.report.plot"}


def test_no_file_outside_parallel_names_a_method():
    """A method's name appears as a string only in ``parallel/`` (its own file and the registry): the rest asks the
    method class (``is_baseline``, ``communicates``, ``columns``...). Docstrings and comments may name methods, and
    astra-train, which trains ASTRA itself, names its own ``astra`` settings block."""
    from harness.parallel import METHODS

    bad = []
    for m, path in modules().items():
        if m.startswith(("harness.parallel", "harness.train")):
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in METHODS and id(node) not in docs:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} names {node.value!r}")
    assert not bad, bad
