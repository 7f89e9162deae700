"""Learning-curve figure (PNG) of a training run."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recsys.storage import StoragePath  # noqa: E402
from recsys.training.loop import FitResult  # noqa: E402


def learning_curve(result: FitResult, path: Path | StoragePath, title: str, oracle_auc: float | None = None) -> Path:
    """Train loss by step (left) and validation AUC by epoch (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if result.step_losses:
        steps, losses = zip(*result.step_losses)
        left.plot(steps, losses)
    left.set_xlabel("step")
    left.set_ylabel("train loss (BCE)")
    epochs = [e.epoch + 1 for e in result.epochs]
    right.plot(epochs, [e.valid.auc for e in result.epochs], marker="o", label="valid AUC")
    if oracle_auc is not None:
        right.axhline(oracle_auc, color="gray", linestyle="--", label="oracle AUC")
    right.set_xlabel("epoch")
    right.set_ylabel("AUC")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    if isinstance(path, StoragePath):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        path.write_bytes(buffer.getvalue())
    else:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
