"""What a finished run reports: the ``metrics.json`` dict, the method's diagnostics, the learning curve.

``run_metrics`` turns the test evaluation and the phase summaries into the metrics of the run
(test/valid AUC and logloss, bytes, compression, speed, epochs, the oracle's metrics);
``write_outputs`` writes ``diagnostics.json`` (the method's own, plus the collision statistics
of the train vocabularies for a hashing method that reports them) and the run's
``learning_curve.png`` (rank 0; the diagnostics are gathered on every rank).
"""

from __future__ import annotations

import json
from typing import Any

from recsys.embeddings import EmbeddingMethod, Phase
from recsys.storage import location, read_parquet
from recsys.training.collectives import is_main
from recsys.training.experiment import Experiment
from recsys.training.loop import EvalResult, FitResult


def fit_summary(result: FitResult) -> dict[str, Any]:
    """The ``fit`` entry of a train phase's ``summary.json``."""
    best = result.best
    return {
        "epochs": len(result.epochs),
        "best_epoch": best.epoch,
        "valid_auc": best.valid.auc,
        "valid_logloss": best.valid.logloss,
        "train_samples_per_s": result.train_samples_per_s,
        "stopped_early": result.stopped_early,
    }


def oracle_auc(exp: Experiment, split: str) -> float | None:
    oracle = exp.spec.splits[split].oracle
    return oracle.auc if oracle else None


def run_metrics(
    exp: Experiment,
    method: EmbeddingMethod,
    test: EvalResult,
    summaries: dict[str, dict[str, Any]],
    phases: list[Phase],
    method_choice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's metrics: the test split's, the last fit's, ``auto``'s choice and, with several phases, each phase's summary."""
    fits = [s["fit"] for s in summaries.values() if "fit" in s]
    method_bytes = method.memory_bytes()
    metrics: dict[str, Any] = {
        "test_auc": test.auc,
        "test_logloss": test.logloss,
        "test_rows": test.rows,
        "valid_auc": fits[-1]["valid_auc"] if fits else float("nan"),
        "valid_logloss": fits[-1]["valid_logloss"] if fits else float("nan"),
        "embedding_bytes": method_bytes,
        "full_embedding_bytes": exp.ctx.full_bytes,
        "compression_ratio": exp.ctx.full_bytes / max(method_bytes, 1),
        "train_samples_per_s": fits[-1]["train_samples_per_s"] if fits else 0.0,
        "epochs": sum(f["epochs"] for f in fits),
        "best_epoch": fits[-1]["best_epoch"] if fits else -1,
        "stopped_early": any(f["stopped_early"] for f in fits),
    }
    if method_choice is not None:
        metrics["method_choice"] = method_choice
    test_oracle = exp.spec.splits["test"].oracle
    if test_oracle is not None:
        metrics["oracle_test_auc"] = test_oracle.auc
        metrics["oracle_test_logloss"] = test_oracle.logloss
    if len(phases) > 1:
        metrics["phases"] = {name: {k: v for k, v in s.items() if k != "phase"} for name, s in summaries.items()}
    return metrics


def write_outputs(exp: Experiment, method: EmbeddingMethod, last: Phase) -> None:
    """``diagnostics.json`` (when the method has any) and the last phase's figure as the run's ``learning_curve.png``."""
    plot = exp.folder.phase(last.name).learning_curve
    diagnostics = method.diagnostics()  # on every rank: it may gather sharded tables
    if not is_main():
        return
    diagnostics = with_collisions(exp, method, diagnostics)
    if plot.exists():
        exp.folder.learning_curve.write_bytes(plot.read_bytes())
    if diagnostics:
        exp.folder.diagnostics.write_text(json.dumps(diagnostics, indent=2, default=str) + "\n")


def with_collisions(exp: Experiment, method: EmbeddingMethod, diagnostics: dict[str, Any]) -> dict[str, Any]:
    """``diagnostics`` plus, for a hashing method that reports them (``reports_collisions``, e.g.
    ``unified``, also wrapped by ``dsl``/``optembed``), the collision statistics of the train
    vocabularies' raw ids."""
    if not method.reports_collisions():
        return diagnostics
    folder = location(exp.cfg.data.path)
    ids = {f.name: read_parquet(folder / f.vocabulary, columns=["id"]).column("id").to_numpy() for f in exp.spec.sparse_fields if f.vocabulary}
    return diagnostics | {"collisions": method.collision_stats(ids)}
