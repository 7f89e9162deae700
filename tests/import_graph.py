"""The project's import graph, read statically (``ast``): which module imports which, from where.

Folders map to their import names as installed (``training/`` is ``recsys.training``, ``serving/``
``recsys.serving``); ``from pkg import name`` points at ``pkg.name`` when that is a module, else at
``pkg``. Imports under ``if TYPE_CHECKING:`` never run and are left out; an import inside a function
is kept, marked ``top=False``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOTS = {"recsys": "recsys", "training": "recsys.training", "serving": "recsys.serving", "bench": "bench"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    name: str | None  # the imported name of ``from x import name``
    top: bool  # at module level (runs at import time)
    where: str  # file:line


def modules(root: Path, roots: dict[str, str] = ROOTS) -> dict[str, Path]:
    """Import name -> file of every module under the ``roots`` folders of ``root``."""
    found = {}
    for folder, name in roots.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = [name, *path.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[tuple[str, str | None, bool, int]]:
    """``(imported module, name or None, at module level, line)`` of every import in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, None, top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                out.extend((base, a.name, top, child.lineno) for a in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), True)
    return out


def edges(root: Path, roots: dict[str, str] = ROOTS) -> list[Edge]:
    """Every import of one project module by another."""
    mods = modules(root, roots)
    out = []
    for module, path in mods.items():
        for base, name, top, line in _imports(module, path):
            target = base
            if name is not None and f"{base}.{name}" in mods:
                target = f"{base}.{name}"
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.append(Edge(module, target, name, top, f"{path.relative_to(root)}:{line}"))
    return out


def cycles(graph: list[Edge], top_only: bool) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected group of modules; only module-level imports
    when ``top_only``."""
    succ: dict[str, list[Edge]] = {}
    for e in graph:
        if e.top or not top_only:
            succ.setdefault(e.source, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for e in succ.get(v, []):
            if e.target not in index:
                connect(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(succ):
        if v not in index:
            connect(v)
    return [_cycle_in(group, succ) for group in groups]


def _cycle_in(group: set[str], succ: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest cycle through the group's first module (breadth-first, inside the group)."""
    start = min(group)
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in succ.get(v, []):
                if e.target == start:
                    return [*paths[v], e]
                if e.target in group and e.target not in paths:
                    paths[e.target] = [*paths[v], e]
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source, *(f"{e.target} ({e.where}{'' if e.top else ', in a function'})" for e in cycle)])


def private_imports(graph: list[Edge]) -> list[Edge]:
    """``from a import _b`` of a private name of another module (dunders are not private)."""
    return [e for e in graph if e.name is not None and e.name.startswith("_") and not e.name.startswith("__")]
