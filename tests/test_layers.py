"""Imports inside ``edgekd/`` run one way: down the layers, never up, never in a circle.

Checked statically with :mod:`ast`, so nothing in the package is imported to run it.
See ``docs/layers.md`` for the rule in prose.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "edgekd"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("experiment", "bench"),
    ("pipeline",),
    ("selection",),
    ("attribution", "distill", "train", "export", "ship"),
    ("config",),
    ("data", "models"),
    ("errors", "io", "distributed", "recipes", "version", "runfiles", "plotting"),
)
"""The design's layer order, top to bottom.

A module may import modules of its own layer or of any layer below it, never one
above it. The layer of a module is the first name after ``edgekd.``
(``edgekd.pipeline.stages.ig`` -> ``pipeline``). ``edgekd/__init__.py`` and
``edgekd/__main__.py`` belong to the top. What two layers share lives in the
lower one. A new bottom-layer helper module goes into the last row.
"""

TOP = -1  # rank of edgekd/__init__.py and edgekd/__main__.py: above everything
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> str | None:
    """``edgekd.x.y`` -> ``x``; ``edgekd`` itself and ``edgekd.__main__`` -> None (top)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None
    return parts[1]


def _rank(module: str) -> int:
    layer = _layer(module)
    return TOP if layer is None else RANK[layer]


def _imports_in(source: str, module: str, is_pkg: bool, known) -> list[tuple[int, str]]:
    """Every ``edgekd`` module named by an import in ``source``, anywhere in it.

    Imports inside functions and ``if`` blocks count too. ``from edgekd.x import y``
    yields ``edgekd.x.y`` when that is a module, else ``edgekd.x``; relative imports
    are resolved against ``module`` (``is_pkg``: the source is a package's ``__init__``).
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known else target))
    return [(line, name) for line, name in found if name.split(".")[0] == PACKAGE]


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    return _imports_in(source, module, path.name == "__init__.py", _modules())


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The module an import of ``name`` loads: itself, or its nearest existing parent."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_layer_table_covers_every_top_level_name() -> None:
    names = {_layer(m) for m in _modules()} - {None}
    missing = sorted(names - RANK.keys())
    assert not missing, f"edgekd modules with no layer in LAYERS: {missing}"


def test_no_upward_imports() -> None:
    bad = []
    for module, path in _modules().items():
        for line, target in sorted(set(_imports(path, module))):
            if _layer(target) is not None and _layer(target) not in RANK:
                continue  # reported by test_layer_table_covers_every_top_level_name
            if _rank(target) < _rank(module):
                rel = path.relative_to(ROOT.parent)
                bad.append(
                    f"{rel}:{line}: {module} (layer {_layer(module) or 'top'}) imports "
                    f"{target} (layer {_layer(target) or 'top'}, above it)"
                )
    assert not bad, "upward imports:\n" + "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for _, target in _imports(path, module):
            target = _resolve(target, known)
            if target != module and target in known:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles: list[list[str]] = []
    for comp in components:
        for start in comp:
            cycle = _shortest_cycle(graph, set(comp), start)
            i = cycle.index(min(cycle[:-1]))  # the same circle found from another member
            cycle = cycle[i:-1] + cycle[:i] + [cycle[i]]
            if cycle not in cycles:
                cycles.append(cycle)
    return cycles


def _shortest_cycle(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """start -> ... -> start by the fewest imports, inside one strongly connected component."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle but none was found")


def test_cycle_finder_spells_out_the_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # data/ before the loaders registered themselves: every circle through dataset is named
    star = {"dataset": {"cifar10", "digits"}, "cifar10": {"dataset"}, "digits": {"dataset"}}
    assert _cycles(star) == [["cifar10", "dataset", "cifar10"], ["dataset", "digits", "dataset"]]


def test_import_parser_sees_every_form() -> None:
    known = {"edgekd.data", "edgekd.data.dataset", "edgekd.data.digits", "edgekd.io"}
    source = (
        "import edgekd.io\n"
        "from edgekd.data import dataset, Dataset\n"
        "from . import digits\n"
        "from ..io import atomic_write\n"
        "def f():\n"
        "    from .dataset import register\n"
        "import os\n"
    )
    got = _imports_in(source, "edgekd.data.cifar10", False, known)
    assert got == [
        (1, "edgekd.io"),
        (2, "edgekd.data.dataset"),
        (2, "edgekd.data"),
        (3, "edgekd.data.digits"),
        (4, "edgekd.io"),
        (6, "edgekd.data.dataset"),
    ]
    assert _imports_in("from . import dataset", "edgekd.data", True, known) == [
        (1, "edgekd.data.dataset")
    ]
    assert _resolve("edgekd.data.dataset.Something", {m: Path() for m in known}) == (
        "edgekd.data.dataset"
    )


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
