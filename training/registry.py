"""Register a finished run in the MLflow model registry, under a name with an alias.

The run folder is exported to a serving artifact (``recsys.export.export_run``, fp32, into
``<run>/export``) and logged as the run's ``model`` through ``recsys.serving.pyfunc.log_model`` (a
models-from-code pyfunc: nothing is pickled); a new version of the registered model ``name``
gets ``alias``, so ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` loads it (MLflow 3
aliases, not stages).
"""

from __future__ import annotations

from pathlib import Path

from recsys.runfolder import RunFolder


def register_model(uri: str, run_id: str, run_dir: Path, name: str, alias: str) -> str:
    """Export ``run_dir``, log it into run ``run_id`` at ``uri`` and register it; returns the version."""
    import mlflow

    from recsys.export import export_run
    from recsys.serving.pyfunc import log_model

    artifact = Path(RunFolder(Path(run_dir)).export)
    export_run(run_dir, artifact, overwrite=True)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            info = log_model(artifact, "model")
        version = mlflow.register_model(info.model_uri, name)
        mlflow.MlflowClient(tracking_uri=uri).set_registered_model_alias(name, alias, version.version)
        return str(version.version)
    finally:
        mlflow.set_tracking_uri(previous)
