"""The files a search writes: ``trials.csv``, ``pareto.png`` and ``best.yaml``.

``best.yaml`` is the picked trial's config (``recsys.training.tune.pick``: by validation AUC,
the test split only reports) with tracking and progress back at their defaults, so ``recsys train --config
DIR/best.yaml`` runs it as is.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from recsys.config import ExperimentConfig, TrackingConfig, TrainingConfig  # noqa: E402

COLUMNS = ("trial", "method", "status", "valid_auc", "test_auc", "embedding_bytes", "compression", "epochs", "wall_s", "options", "error")


@dataclass
class TrialResult:
    """One trial's outcome: ``ok`` (trained to the end), ``stopped`` (by ASHA), ``failed``."""

    trial: str
    method: str
    options: dict[str, Any]
    status: str = "failed"
    metrics: dict[str, Any] = field(default_factory=dict)
    last_valid_auc: float | None = None  # a stopped trial's last reported validation AUC
    wall_s: float | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        m = self.metrics
        valid = m.get("valid_auc", self.last_valid_auc)
        return {
            "trial": self.trial,
            "method": self.method,
            "status": self.status,
            "valid_auc": "" if valid is None else f"{valid:.6f}",
            "test_auc": f"{m['test_auc']:.6f}" if "test_auc" in m else "",
            "embedding_bytes": m.get("embedding_bytes", ""),
            "compression": f"{m['compression_ratio']:.3f}" if "compression_ratio" in m else "",
            "epochs": m.get("epochs", ""),
            "wall_s": "" if self.wall_s is None else f"{self.wall_s:.1f}",
            "options": json.dumps(self.options, sort_keys=True),
            "error": self.error or "",
        }


def write_csv(results: list[TrialResult], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(r.row() for r in results)
    return path


def best_trial(results: list[TrialResult]) -> TrialResult | None:
    done = [r for r in results if r.status == "ok" and "valid_auc" in r.metrics]
    return max(done, key=lambda r: (r.metrics["valid_auc"], -r.metrics.get("embedding_bytes", 0)), default=None)


def write_best(cfg: ExperimentConfig, path: Path) -> Path:
    """``cfg`` as a standalone YAML config, tracking and progress at their defaults."""
    dump = cfg.model_dump(mode="json")
    dump["tracking"] = TrackingConfig().model_dump(mode="json")
    dump["training"]["progress"] = TrainingConfig().progress
    path.write_text(yaml.safe_dump(dump, sort_keys=False))
    return path


def pareto_plot(results: list[TrialResult], path: Path, title: str, full_auc: float | None = None, picked: TrialResult | None = None) -> Path:
    """Test AUC against embedding bytes of every finished trial, by method; the pick (default: the best
    by validation AUC) is ringed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in results if r.status == "ok" and "test_auc" in r.metrics]
    for method in sorted({r.method for r in done}):
        pts = [r for r in done if r.method == method]
        ax.scatter([r.metrics["embedding_bytes"] for r in pts], [r.metrics["test_auc"] for r in pts], label=method, alpha=0.8)
    best = picked or best_trial(results)
    if best is not None and "test_auc" in best.metrics:
        ax.scatter([best.metrics["embedding_bytes"]], [best.metrics["test_auc"]], s=200, facecolors="none", edgecolors="black", label="pick")
    if full_auc is not None:
        ax.axhline(full_auc, color="gray", linestyle="--", label="full")
    if done:
        ax.set_xscale("log")
    ax.set_xlabel("embedding bytes")
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
