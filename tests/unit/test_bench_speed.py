"""``recsys bench speed``: step-time ratios against full in one process, the report files."""

from __future__ import annotations

import json
from pathlib import Path

from recsys.cli import main
from recsys.data.synthetic import generate
from recsys.training.bench.speed_report import markdown
from recsys.training.bench.step_times import alternate


def test_alternate_ratios_against_the_baseline() -> None:
    calls: list[str] = []
    steppers = {"full": (lambda b: calls.append("full"), [1, 2]), "slow": (lambda b: calls.append("slow"), [1])}
    timing = alternate(steppers, steps=3, rounds=2, warmup=1)
    assert calls == ["full"] + ["slow"] + (["full"] * 3 + ["slow"] * 3) * 2  # warm-up, then alternating rounds
    assert timing["baseline"] == "full" and timing["ratio_median"]["full"] == 1.0 and set(timing["ratio_min"]) == {"full", "slow"}


def test_speed_command_writes_one_report(tmp_path: Path) -> None:
    data = tmp_path / "tiny"
    generate(data, rows=4000, profile="small", seed=2, progress=False)
    out = tmp_path / "speed"
    code = main(
        [
            "bench",
            "speed",
            "--data",
            str(data),
            "--methods",
            "hash,dsl",
            "--compression",
            "100",
            "--batch",
            "256",
            "--steps",
            "2",
            "--rounds",
            "2",
            "--skip-plain",
            "--skip-convert",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "speed.json").read_text())
    st = report["step_time"]
    assert set(st["ratio_median"]) == {"full", "hash"} and st["ratio_median"]["full"] == 1.0 and st["ratio_min"]["hash"] > 0
    assert "cannot fit the budget" in st["failed"]["dsl"]  # DSL on full cannot reach 100x: reported, not fatal
    assert st["embedding_bytes"]["hash"] <= st["embedding_bytes"]["full"] // 100
    md = (out / "speed.md").read_text()
    assert "| hash |" in md and "| dsl | — |" in md and md == markdown(report) + "\n"
