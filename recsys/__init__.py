"""Compressed embedding tables for TorchRec CTR models.

One import root: the core is ``recsys.*``; the layers above it are ``recsys.training`` (the
``training/`` folder of the source tree) and ``recsys.serving`` (``serving/``), and the built-in
configs ``recsys.configs`` (``configs/``). An installed wheel holds them inside ``recsys/``
(pyproject's package-dir mapping). Run from a source checkout (``PYTHONPATH=.`` or an editable
install), the finder below maps those names onto the sibling folders of *this* checkout, so
that a second checkout on ``PYTHONPATH`` never picks up another one's ``training/``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
SUBPACKAGES = {"recsys.training": "training", "recsys.serving": "serving"}


def source_root() -> Path | None:
    """The source checkout this package runs from (the folder holding ``pyproject.toml``,
    ``training/`` and ``bench/``), or None when installed from a wheel."""
    root = _HERE.parent
    if (root / "pyproject.toml").is_file() and (root / "training").is_dir() and not (_HERE / "training").is_dir():
        return root
    return None


class SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``recsys.training`` and ``recsys.serving`` in the sibling folders of a checkout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        folder = SUBPACKAGES.get(fullname)
        if folder is None:
            return None
        init = self.root / folder / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


_root = source_root()
if _root is not None and not any(isinstance(f, SourceTreeFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, SourceTreeFinder(_root))
