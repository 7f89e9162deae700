"""Checks shared by the tests of the converter's compiled fast paths (fastcat, fastparse)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CONVERT_WITHOUT = (
    "import sys; sys.modules[sys.argv[1]] = None; from pathlib import Path; from recsys.data.convert import convert; "
    "convert('criteo', Path(sys.argv[2]), Path(sys.argv[3]), progress=False, min_count=2)"
)


def digests(folder: Path) -> dict[str, str]:
    """md5 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_without(module: str, tmp_path: Path, rows: int, seed: int) -> None:
    """A random Criteo file converts to the same bytes in this process and in a fresh one where
    ``module`` cannot be imported, which warns once that it is not built."""
    from recsys.data.convert import convert
    from recsys.training.bench.convert_bench import write_random_criteo

    source = tmp_path / "in.tsv"
    write_random_criteo(source, rows, seed=seed)
    convert("criteo", source, tmp_path / "a" / "out", progress=False, min_count=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", _CONVERT_WITHOUT, module, str(source), str(tmp_path / "b" / "out")]
    run = subprocess.run(args, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count(f"{module} is not built") == 1, run.stderr
    assert digests(tmp_path / "a" / "out") == digests(tmp_path / "b" / "out")
