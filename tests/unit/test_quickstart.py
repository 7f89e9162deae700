"""The quickstart on a tiny dataset: full, hash and the recommended configuration at 10x, side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.training.bench.methods import sweep_method
from recsys.training.quickstart import RECOMMENDED, RUNS, quickstart, run_config


def test_quickstart_prints_full_hash_and_the_recommended_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {path: unused}\nmodel: model/dlrm.yaml\nembedding: {method: full}\n"
        "training: {epochs: 1, batch_size: 256, progress: false}\ntracking: {enabled: false}\n"
    )
    table = quickstart(6000, tmp_path / "data", tmp_path / "runs", config)
    assert [r["method"] for r in table] == ["full", "hash", f"{RECOMMENDED} (recommended)"]
    full_bytes = table[0]["embedding_bytes"]
    assert table[0]["compression_ratio"] == 1.0
    for row in table[1:]:
        assert row["embedding_bytes"] <= full_bytes // 10 and 0 < row["test_auc"] < 1
    printed = capsys.readouterr().out
    assert f"{RECOMMENDED} (recommended)" in printed and "hash" in printed and "oracle AUC" in printed
    assert (tmp_path / "runs" / RECOMMENDED.replace("+", "_") / "metrics.json").exists()


def test_runs_get_the_bench_methods_options_and_budget(tmp_path: Path) -> None:
    assert [m for m, _ in RUNS] == ["full", "hash", RECOMMENDED] and all(c == 10.0 for _, c in RUNS[1:])
    full = run_config(Path("quickstart"), tmp_path, "full", None, 64_000, 16)
    assert full.embedding.method == "full" and full.embedding.compression is None and full.data.path == str(tmp_path)
    hashed = run_config(Path("quickstart"), tmp_path, "hash", 10.0, 64_000, 16)
    assert hashed.embedding.method == "hash" and hashed.embedding.compression == 10 and hashed.model.name == full.model.name
    recommended = run_config(Path("quickstart"), tmp_path, RECOMMENDED, 10.0, 64_000, 16).embedding
    assert recommended.method == sweep_method(RECOMMENDED).spec().method and recommended.compression == 10
