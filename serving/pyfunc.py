"""The artifact as an MLflow ``pyfunc`` model, so ``mlflow models serve`` works too.

The model is logged "from code" (``serving/pyfunc_entry.py``), so nothing is pickled: the
artifact folder is logged as the model's artifact ``recsys_artifact`` and loaded (checksums
verified) by ``Store`` in ``load_context``. ``predict`` takes a DataFrame with one request per
row: a column per feature (dense numbers, sparse raw values; null = missing), or the two
columns ``dense`` and ``sparse`` holding objects.

Example:
    >>> info = log_model("artifacts/dlrm-hash-int8", "model", registered_model_name="ctr")  # doctest: +SKIP
    >>> mlflow.pyfunc.load_model("models:/ctr/1").predict(frame)                           # doctest: +SKIP
"""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from recsys.export.artifact import read_manifest
from recsys.export.loader import load_artifact
from recsys.serving.store import Store

ARTIFACT_KEY = "recsys_artifact"
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
_PINNED = ("torch", "torchrec", "fbgemm-gpu-cpu", "numpy", "pandas", "pyarrow", "pydantic", "safetensors", "mlflow")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class RecsysPyfunc(mlflow.pyfunc.PythonModel):
    """Scores requests with the in-process lookup layer."""

    store: Store

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[ARTIFACT_KEY])
        self.store = Store(load_artifact(folder), read_manifest(folder).manifest_sha256[:12])

    def _requests(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        if {"dense", "sparse"} >= set(frame.columns):
            return [{k: v for k, v in row.items() if isinstance(v, dict)} for row in frame.to_dict("records")]
        buckets = set(self.store.encoder.buckets)  # bucketed dense columns: numbers, read as dense
        dense, sparse = set(self.store.dense_features) | buckets, set(self.store.features) - buckets
        unknown = sorted(set(frame.columns) - dense - sparse)
        if unknown:
            raise ValueError(f"unknown feature columns {unknown[:5]}; features: {sorted(dense | sparse)}")
        out = []
        for row in frame.to_dict("records"):
            out.append(
                {
                    "dense": {k: None if _missing(v) else float(v) for k, v in row.items() if k in dense},
                    "sparse": {
                        k: (list(v) if isinstance(v, (list, np.ndarray)) else None if _missing(v) else v) for k, v in row.items() if k in sparse
                    },
                }
            )
        return out

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  (untyped: MLflow infers no schema from hints)
        """Click probability of each row."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.store.score(self._requests(frame))


def _requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in _PINNED]


def log_model(artifact_dir: str | Path, name: str = "model", registered_model_name: str | None = None, code_paths: list[str] | None = None) -> Any:
    """Log ``artifact_dir`` as a pyfunc model in the active MLflow run (one is started if none).

    The artifact is verified first. ``code_paths`` can ship the ``recsys``/``serving`` sources
    for environments without the project installed. Returns MLflow's ``ModelInfo``.
    """
    load_artifact(artifact_dir)
    kwargs: dict[str, Any] = dict(
        name=name,
        python_model=str(ENTRY),
        artifacts={ARTIFACT_KEY: str(artifact_dir)},
        registered_model_name=registered_model_name,
        pip_requirements=_requirements(),
        code_paths=code_paths,
    )
    if mlflow.active_run() is None:
        with mlflow.start_run():
            return mlflow.pyfunc.log_model(**kwargs)
    return mlflow.pyfunc.log_model(**kwargs)
