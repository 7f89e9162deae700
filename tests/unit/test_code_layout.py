"""The code's shape: no import cycle between project modules, no file over 500 lines, no private name
imported from another module (read statically, ``tests/import_graph.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import cycles, describe, edges, modules, private_imports

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500


@pytest.fixture(scope="module")
def graph():
    return edges(ROOT)


def test_the_graph_sees_every_layer(graph) -> None:
    mods = modules(ROOT)
    assert {"recsys.cli", "recsys.training.run", "recsys.serving.app", "recsys.training.tune.search", "bench.ray_bench"} <= set(mods)
    targets = {(e.source, e.target) for e in graph}
    assert ("recsys.training.ray_trainer", "recsys.training.phases") in targets  # a module-level import
    assert ("recsys.training.run", "recsys.training.ray_trainer") in targets  # a function-level one


def test_no_import_cycle_between_project_modules(graph) -> None:
    found = cycles(graph, top_only=True)
    assert not found, "import cycles at module level:\n" + "\n".join(map(describe, found))


def test_no_import_cycle_through_function_level_imports_either(graph) -> None:
    found = cycles(graph, top_only=False)
    assert not found, "import cycles (counting imports inside functions):\n" + "\n".join(map(describe, found))


def test_no_file_over_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules(ROOT).values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by job): {long}"


def test_no_private_name_imported_across_modules(graph) -> None:
    found = [f"{e.where}: {e.source} imports {e.name} from {e.target}" for e in private_imports(graph)]
    assert not found, "private names imported from another module (make them public or move them):\n" + "\n".join(found)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "recsys/__init__.py": "",
            "recsys/a.py": "from recsys.b import thing\n",
            "recsys/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from recsys import c\nfrom . import a\n",
            "recsys/c.py": "def f():\n    from recsys.d import _hidden\n",
            "recsys/d.py": "import recsys.c as c\n",
            "training/__init__.py": "",
            "training/x.py": "from ..training import y\n",
            "training/y.py": "from recsys.training.x import value\n",
        },
    )
    roots = {"recsys": "recsys", "training": "recsys.training"}
    graph = edges(root, roots)
    top = sorted(sorted(e.source for e in c) for c in cycles(graph, top_only=True))
    assert top == [["recsys.a", "recsys.b"], ["recsys.training.x", "recsys.training.y"]]  # relative imports resolved
    every = sorted(sorted(e.source for e in c) for c in cycles(graph, top_only=False))
    assert ["recsys.c", "recsys.d"] in every and len(every) == 3  # the function-level one too; TYPE_CHECKING left out
    assert [(e.source, e.name) for e in private_imports(graph)] == [("recsys.c", "_hidden")]
    assert "recsys/c.py:2, in a function" in describe(next(c for c in cycles(graph, top_only=False) if c[0].source == "recsys.c"))
