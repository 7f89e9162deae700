"""``recsys feast ...``: a Feast repo for an artifact, materialization into any Feast online store,
and Feast offline data into a training dataset (needs the ``feast`` extra)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def _store(artifact: str, tracking_uri: str | None) -> Any:
    from recsys.export.loader import load_artifact
    from recsys.serving.source import resolve_source
    from recsys.serving.store import Store

    version, folder = resolve_source(artifact, tracking_uri=tracking_uri)
    return Store(load_artifact(folder), version)


def cmd_init(args: argparse.Namespace) -> int:
    from recsys.serving.feast_repo import artifact_fields, init_repo

    store = _store(args.artifact, args.tracking_uri)  # loaded and verified: a broken artifact stops here
    artifact = args.artifact if args.artifact.startswith("models:/") else os.path.abspath(args.artifact)  # a symlink stays one (hot reload)
    try:
        out = init_repo(
            artifact,
            Path(args.out),
            artifact_fields(store),
            online=args.online_store,
            project=args.project,
            redis=args.redis,
            poll_interval_s=args.poll_interval,
            tracking_uri=args.tracking_uri,
            overwrite=args.overwrite,
        )
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None  # a usage error: reported without a traceback
    print(f"wrote Feast repo {out} ({len(store.features)} feature views, online store {args.online_store}); next: cd {out} && feast apply")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from recsys.serving.feast_materialize import materialize

    store = _store(args.artifact, args.tracking_uri)
    report = materialize(store, Path(args.repo), Path(args.values), batch_size=args.batch_size, progress=not args.no_progress)
    skipped = sum(report.skipped_oov.values())
    print(
        f"materialized {report.total:,} vectors into {args.repo} ({len(report.written)} feature views)"
        + (f"; {skipped:,} values out of the vocabulary skipped" if skipped else "")
    )
    return 0


def cmd_training_data(args: argparse.Namespace) -> int:
    from recsys.data.feast_offline import historical_to_parquet, parquet_to_dataset

    features = [f for f in args.features.split(",") if f]
    parquet = historical_to_parquet(Path(args.repo), Path(args.entities), features, Path(args.parquet))
    spec = parquet_to_dataset(parquet, Path(args.schema), Path(args.out), min_count=args.min_count, split=args.split, overwrite=args.overwrite)
    print(f"retrieved {sum(s.rows for s in spec.splits.values()):,} rows into {parquet}; dataset at {args.out}")
    return 0


def add_feast_commands(sub: Any, split_type: Any) -> None:
    """Register ``recsys feast init | materialize | training-data`` under the top-level subparsers."""
    feast = sub.add_parser("feast", help="Feast feature store: repo for an artifact, materialization, offline data into training")
    cmds = feast.add_subparsers(dest="feast_command", required=True)

    init = cmds.add_parser("init", help="write a Feast repo whose feature views are the artifact's sparse fields")
    init.add_argument("--artifact", required=True, help="artifact folder, models:/NAME@ALIAS or models:/NAME/VERSION")
    init.add_argument("--out", required=True, help="repo folder to write")
    init.add_argument(
        "--online-store",
        choices=["recsys", "sqlite", "redis"],
        default="recsys",
        help="recsys: vectors answered from the compressed table (default); sqlite/redis: Feast's stores, filled by `recsys feast materialize`",
    )
    init.add_argument("--redis", default="127.0.0.1:6379", help="Redis connection string (--online-store redis)")
    init.add_argument("--project", default="recsys", help="Feast project name")
    init.add_argument("--poll-interval", type=float, default=30.0, help="seconds between hot-reload polls of the artifact (0 = off)")
    init.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ sources")
    init.add_argument("--overwrite", action="store_true")
    init.set_defaults(func=cmd_init)

    mat = cmds.add_parser("materialize", help="write raw values' vectors into the online store of a Feast repo")
    mat.add_argument("--artifact", required=True, help="artifact folder or models:/... URI")
    mat.add_argument("--repo", required=True, help="Feast repo (made by `recsys feast init --online-store sqlite|redis`, then `feast apply`)")
    mat.add_argument("--values", required=True, help="CSV or Parquet with columns feature,value (the raw values to write)")
    mat.add_argument("--batch-size", type=int, default=10_000, help="rows read and written at a time")
    mat.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ sources")
    mat.add_argument("--no-progress", action="store_true")
    mat.set_defaults(func=cmd_materialize)

    td = cmds.add_parser("training-data", help="point-in-time historical retrieval (Parquet) converted into a training dataset")
    td.add_argument("--repo", required=True, help="Feast repo (file offline store)")
    td.add_argument("--entities", required=True, help="Parquet entity/label table with an event_timestamp column")
    td.add_argument("--features", required=True, help="comma-separated view:feature references")
    td.add_argument("--parquet", required=True, help="where the retrieval is written (Parquet)")
    td.add_argument("--schema", required=True, help="schema YAML of the retrieved columns (label, dense, sparse, drop)")
    td.add_argument("--out", required=True, help="dataset folder to write")
    td.add_argument("--min-count", type=int, default=1)
    td.add_argument("--split", type=split_type, default=(0.8, 0.1, 0.1))
    td.add_argument("--overwrite", action="store_true")
    td.set_defaults(func=cmd_training_data)
