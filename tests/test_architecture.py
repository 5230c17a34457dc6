"""The layout is part of the design (docs/ARCHITECTURE.md): these tests read the source, not
run it, and fail on an import cycle (imports inside functions count), an import that points
up the layers, a component that imports the CLI, and files or functions past their size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lmtune"

# Top to bottom, as docs/ARCHITECTURE.md draws them. A module may import its own unit (its
# subpackage, or itself) and any unit of a lower layer; units that share a layer do not import
# each other, except at the bottom, whose small modules may build on one another.
LAYERS = [
    ["__main__"],
    ["cli"],
    ["demo"],
    ["api"],
    ["serving"],
    ["finetune"],
    ["training"],
    ["analysis", "deploy"],
    ["tasks", "vocab"],
    ["models"],
    ["run", "data", "fast"],
    ["config", "device", "cpu", "distributed", "trust", "home", "atomic", "errors", "version",
     "progress"],
]
BOTTOM = set(LAYERS[-1])
MAX_ROOT_MODULES = 14
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every lmtune module `name` imports, at any depth of its code (lazy imports included).
    `from pkg import sub` counts as an import of the module pkg.sub when there is one."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def unit(name: str) -> str:
    """`lmtune.training.loop` -> `training`; `lmtune.config` -> `config`; root -> ``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(u: str) -> int:
    for i, names in enumerate(LAYERS):
        if u in names:
            return i
    raise AssertionError(f"{u!r} is in no layer of LAYERS: add it where it belongs, and to "
                         f"docs/ARCHITECTURE.md")


def test_every_unit_has_a_layer():
    for name in MODULES:
        if name != "lmtune":
            layer(unit(name))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_counting_imports_inside_functions():
    assert _cycles(GRAPH) == []


def test_cycle_finder_finds_a_lazy_cycle():
    # The checker itself: a cycle closed by an import inside a function is one.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_imports_point_down_the_layers():
    wrong = []
    for name, targets in GRAPH.items():
        if name == "lmtune":  # the package root is the facade's lazy front door
            continue
        here = unit(name)
        for target in targets:
            there = unit(target)
            if not there or there == here:
                continue
            if layer(there) > layer(here) or (layer(there) == layer(here) and here in BOTTOM):
                continue
            wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_subpackage_inits_import_only_their_own_package():
    # Importing lmtune.x.y runs lmtune/x/__init__.py first; if that reached up or across, an
    # import of any module of x could close a cycle that the graph above does not show. The
    # bottom layer is safe: its modules import nothing above it.
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "lmtune":
            outside = {t for t in GRAPH[name]
                       if not t.startswith(name + ".") and unit(t) not in BOTTOM}
            assert outside == set(), name


def test_no_component_imports_the_cli():
    users = [n for n, targets in GRAPH.items() if any(unit(t) == "cli" for t in targets)
             and unit(n) not in ("cli", "__main__")]
    assert users == []


def test_few_modules_at_the_top_of_the_package():
    root = sorted(p.name for p in SRC.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_functions_stay_small(name):
    path = MODULES[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path} is over {MAX_FILE_LINES} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path}:{node.lineno} {node.name} is " \
                                                 f"{length} lines"
