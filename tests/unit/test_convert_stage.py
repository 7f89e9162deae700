"""The staged rows between the passes: held in memory up to a budget, spilled to disk past it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recsys.data import stages
from recsys.data.convert import convert
from recsys.data.stages import StageWriter
from tests.unit.test_convert import criteo_rows, write_criteo

SCHEMA = pa.schema([("label", pa.float32()), ("C1__id", pa.int64())])


def _batch(start: int, n: int) -> pa.RecordBatch:
    label = (np.arange(start, start + n) % 3 == 0).astype(np.float32)
    return pa.RecordBatch.from_arrays([pa.array(label), pa.array(np.arange(start, start + n), pa.int64())], schema=SCHEMA)


def _stage(folder: Path, budget: int) -> StageWriter:
    stage = StageWriter(folder, SCHEMA, memory_budget=budget)
    for i in range(4):
        stage.write(_batch(10 * i, 10), np.arange(10, dtype=np.int64) % 3)
    stage.close()
    return stage


@pytest.mark.parametrize("budget", [0, 250, 1 << 30])  # spilled from the start, after two batches held, never
def test_stage_keeps_rows_in_order_held_or_spilled(tmp_path: Path, budget: int) -> None:
    stage = _stage(tmp_path / "stage", budget)
    assert stage.spilled == (budget < 4 * _batch(0, 10).nbytes)
    assert all(p.exists() for p in stage.paths.values()) == stage.spilled
    for k, split in enumerate(("train", "valid", "test")):
        ids = np.concatenate([b.column(1).to_numpy() for b in stage.batches(split)])
        np.testing.assert_array_equal(ids, np.arange(40)[np.arange(40) % 10 % 3 == k])
        assert stage.rows[split] == len(ids)
        assert stage.clicks[split] == float(np.sum(ids % 3 == 0))
        stage.release(split)
        assert not stage.paths[split].exists()
        if not stage.spilled:
            assert list(stage.batches(split)) == []  # held batches are handed over once


def _libffm_lines(n: int) -> list[str]:
    rng = np.random.default_rng(2)
    lines = []
    for _ in range(n):
        feats = [f"{f}:{int(rng.integers(0, 30))}:{rng.random():.3f}" for f in range(4) if rng.random() < 0.8]
        lines.append(" ".join([str(int(rng.random() < 0.3)), *feats]))
    return lines


@pytest.mark.parametrize("fmt", ["criteo", "libffm"])  # single-valued fields; multi-valued weighted bags
def test_spilled_and_held_conversions_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    if fmt == "criteo":
        src = write_criteo(tmp_path / "in.txt", criteo_rows(300, seed=5))
    else:
        src = tmp_path / "in.ffm"
        src.write_text("\n".join(_libffm_lines(300)) + "\n")
    args = {"progress": False, "chunk_rows": 40, "rows_per_file": 70, "min_count": 2}
    convert(fmt, src, tmp_path / "held" / "ds", **args)  # type: ignore[arg-type]
    monkeypatch.setattr(stages, "STAGE_MEMORY_BYTES", 0)
    convert(fmt, src, tmp_path / "spilled" / "ds", **args)  # type: ignore[arg-type]
    held = sorted(p.relative_to(tmp_path / "held") for p in (tmp_path / "held").rglob("*") if p.is_file())
    spilled = sorted(p.relative_to(tmp_path / "spilled") for p in (tmp_path / "spilled").rglob("*") if p.is_file())
    assert held == spilled and len(held) > 5
    for rel in held:
        assert (tmp_path / "held" / rel).read_bytes() == (tmp_path / "spilled" / rel).read_bytes(), rel
