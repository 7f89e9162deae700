"""Which MLflow store a run, an export or a replay talks to, when none is named: one rule.

``--tracking-uri`` / ``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the embedded
store ``sqlite:///mlflow.db`` in the working directory. ``absolute_uri`` pins a relative local
store to the working directory (Ray workers run elsewhere and must open the driver's store).
No MLflow import: the core and both layers above it read this.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri_of(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``DEFAULT_TRACKING_URI`` (as given, not made absolute)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str, cwd: Path | None = None) -> str:
    """``uri`` with a relative local store resolved against ``cwd`` (default: the working directory).

    ``sqlite:///mlflow.db`` becomes ``sqlite:////abs/mlflow.db``; a file store given as a path
    (``mlruns``, ``./mlruns``) or a relative ``file:`` URI becomes ``file:///abs/mlruns``. Servers,
    databases and absolute or in-memory stores are returned unchanged.
    """
    base = Path.cwd() if cwd is None else Path(cwd)
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{(base / path).resolve()}{sep}{query}"
        return uri
    if uri.startswith("file:"):
        rest = uri[len("file:") :]
        if rest.startswith("//"):  # file://host/abs or file:///abs
            return uri
        return (base / rest).resolve().as_uri() if not rest.startswith("/") else Path(rest).as_uri()
    plain = "://" not in uri and ":" not in uri.split("/", 1)[0] and not uri.startswith(("/", "databricks")) and uri != "uc"
    return (base / uri).resolve().as_uri() if plain else uri  # a relative plain path is a file store


# The help text of every command's --tracking-uri option.
TRACKING_HELP = f"MLflow tracking URI (default: MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})"
