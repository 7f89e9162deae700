"""The ``recsys`` command line: data conversion and generation, training, the quickstart.

Heavy modules are imported inside each command, so ``recsys --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from recsys.cli_bench import add_bench_commands
from recsys.cli_feast import add_feast_commands
from recsys.tracking_uri import DEFAULT_TRACKING_URI, TRACKING_HELP

Handler = Callable[[argparse.Namespace], int]


def _split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"--split {text!r}: expected three non-negative fractions summing to 1")
    return parts  # type: ignore[return-value]


def cmd_convert(args: argparse.Namespace) -> int:
    from recsys.data.convert import convert
    from recsys.features import DATASET_FILE
    from recsys.storage import published

    presplit = {s: getattr(args, s) for s in ("train", "valid", "test") if getattr(args, s)} or None
    split_by = "time" if args.time_column else "order" if args.split_by_order else "random"
    with published(args.out, DATASET_FILE, args.overwrite) as out:  # a URI: built locally, then published
        spec = convert(
            args.format,
            args.input,
            out,
            schema_path=Path(args.schema) if args.schema else None,
            min_count=args.min_count,
            split=args.split,
            on_bad_row=args.on_bad_row,
            seed=args.seed,
            overwrite=args.overwrite,
            presplit=presplit,
            split_by=split_by,
            time_column=args.time_column,
            time_cuts=args.time_cuts.split(",") if args.time_cuts else None,
            libfm_fields=args.libfm_fields,
        )
    _print_summary(spec, args.out)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from recsys.data.synthetic import generate
    from recsys.features import DATASET_FILE
    from recsys.storage import published

    with published(args.out, DATASET_FILE, args.overwrite) as out:
        spec = generate(
            out,
            rows=args.rows,
            profile=args.profile,
            seed=args.seed,
            scale=args.scale,
            min_count=args.min_count,
            overwrite=args.overwrite,
        )
    _print_summary(spec, args.out)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from recsys.features import load_dataset_spec

    _print_summary(load_dataset_spec(args.dataset), args.dataset)
    return 0


def _print_summary(spec, folder: str) -> None:  # type: ignore[no-untyped-def]
    print(f"dataset {spec.name} ({spec.source}) at {folder}")
    for name, split in spec.splits.items():
        oracle = f", oracle AUC {split.oracle.auc:.4f} logloss {split.oracle.logloss:.4f}" if split.oracle else ""
        print(f"  {name:5s} {split.rows:>10,} rows, label rate {split.label_rate:.4f}{oracle}")
    sparse = spec.sparse_fields
    print(f"  {len(spec.dense_fields)} dense fields, {len(sparse)} sparse fields")
    for f in sparse:
        print(f"    {f.name:16s} cardinality {f.cardinality:>10,}" + (" (multi-valued)" if f.multi_valued else ""))
    if spec.bad_rows:
        print(f"  bad rows skipped: {spec.bad_rows} {spec.bad_rows_by_reason}")


def cmd_train(args: argparse.Namespace) -> int:
    from recsys.config import ConfigError, load_experiment
    from recsys.features import load_dataset_spec
    from recsys.training.run import train_experiment

    overrides = list(args.set or [])
    if args.workers is not None:
        overrides.append(f"training.workers={args.workers}")
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.address:
        import os

        os.environ["RAY_ADDRESS"] = args.address
    from recsys.storage import location

    loaded = load_experiment(args.config, overrides)
    cfg = loaded.config
    try:  # before any run folder or MLflow run exists
        load_dataset_spec(cfg.data.path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{loaded.source_of('data.path')}: data.path: {exc}") from None
    out = location(args.out or f"runs/{cfg.model.name}-{cfg.embedding.method}")
    metrics = train_experiment(cfg, out, resume=args.resume)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        if isinstance(value, dict):
            continue
        print(f"{key:{width}s}  {value:.6g}" if isinstance(value, float) else f"{key:{width}s}  {value}")
    print(f"wrote {out / 'metrics.json'}")
    return 0


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from recsys.training.mlflow_server import run_server

    return run_server(args.port, args.backend_store_uri, args.artifacts_destination)


def cmd_mlflow_replay(args: argparse.Namespace) -> int:
    from recsys.training.tracking import replay_folder

    if not replay_folder(Path(args.run), args.tracking_uri):
        print(f"error: MLflow still unreachable; the spool stays in {args.run}", file=sys.stderr)
        return 1
    print(f"replayed the tracking calls spooled in {args.run}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from recsys.training.quickstart import quickstart

    quickstart(rows=args.rows, data_dir=Path(args.data), out_dir=Path(args.out), config=Path(args.config))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from recsys.config_reference import field_default, field_type
    from recsys.embeddings import WrappedMethod, available_methods, get_method

    for name in available_methods():
        cls = get_method(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`") if cls.__doc__ else ""
        ids = "base" if issubclass(cls, WrappedMethod) else cls.ids  # a wrapper reads the ids of its base
        print(f"{name:10s} ids={ids:5s} {doc}")
        for key, field in cls.Options.model_fields.items():
            description = " ".join((field.description or "").replace("``", "`").split())
            print(f"    {key}: {field_type(field)} = {field_default(field)}" + (f"  {description}" if description else ""))
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from recsys.config_reference import render_reference, write_reference

    if args.out:
        print(f"wrote {write_reference(args.out)}")
    else:
        sys.stdout.write(render_reference())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from recsys.export import RunNotFound, export_run, resolve_run
    from recsys.export.artifact import MANIFEST
    from recsys.storage import published

    try:
        with resolve_run(args.run, args.tracking_uri) as (run_dir, source), published(args.out, MANIFEST, args.overwrite) as out:
            manifest = export_run(run_dir, out, dtype=args.dtype, data_path=args.data, overwrite=args.overwrite, source=source)
    except RunNotFound as exc:
        print(f"recsys export: {exc}", file=sys.stderr)
        return 2
    size = sum(f.bytes for f in manifest.files.values())
    print(f"wrote {args.out}: method {manifest.method.name}, dtype {manifest.dtype}, {len(manifest.files)} files, {size:,} bytes")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError

    from recsys.export.artifact import ArtifactError
    from recsys.serving.fronts import serve
    from recsys.serving.settings import ServeSettings

    given = {k: v for k, v in vars(args).items() if k in ServeSettings.model_fields and v is not None}
    given.setdefault("token", os.environ.get("RECSYS_SERVE_TOKEN") or None)
    try:
        settings = ServeSettings(**given)
    except ValidationError as exc:
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            print(f"recsys serve: setting '{key}': {e['msg']} (got {e.get('input')!r})", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except (ArtifactError, TimeoutError) as exc:  # the model cannot be served (named file, or too slow to load)
        print(f"recsys serve: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser(with_speed: bool = True) -> argparse.ArgumentParser:
    """The parser; ``with_speed=False`` leaves out ``bench speed``'s own options (they import ``recsys.training``)."""
    parser = argparse.ArgumentParser(prog="recsys", description="Compressed embedding tables for TorchRec CTR models.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="convert raw logs or generate synthetic data").add_subparsers(dest="data_command", required=True)
    conv = data.add_parser("convert", help="convert raw Criteo/Avazu/libFM/CSV logs to Parquet (streaming)")
    conv.add_argument("--format", required=True, choices=["criteo", "avazu", "libfm", "libffm", "csv", "parquet"])
    conv.add_argument(
        "--libfm-fields", choices=["bag", "positional"], default="bag", help="libfm: all features in one bag, or each position its own field"
    )
    conv.add_argument("--input", nargs="+", help="input files or globs ('day_*.gz'), read in order; .gz/.bz2/.zst decompressed")
    for name in ("train", "valid", "test"):
        conv.add_argument(f"--{name}", nargs="+", help=f"pre-split input: the {name} files (instead of --input)")
    conv.add_argument("--schema", help="schema YAML (required for --format csv and parquet)")
    conv.add_argument("--split-by-order", action="store_true", help="split rows in input order by --split (last rows: test)")
    conv.add_argument("--time-column", help="split by this column's time (or number) at --time-cuts")
    conv.add_argument("--time-cuts", help="CUT1,CUT2: train < CUT1 <= valid < CUT2 <= test (numbers or ISO dates)")
    conv.add_argument("--out", required=True, help="output dataset folder, or a URI (s3://bucket/prefix: published with dataset.json last)")
    conv.add_argument("--min-count", type=int, default=1, help="values seen fewer times in train map to OOV")
    conv.add_argument("--split", type=_split, default=(0.8, 0.1, 0.1), help="train,valid,test fractions")
    conv.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    conv.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    conv.set_defaults(func=cmd_convert)

    synth = data.add_parser("synth", help="generate a synthetic dataset with planted ground truth")
    synth.add_argument("--out", required=True, help="output dataset folder or URI (s3://...)")
    synth.add_argument("--rows", type=int, default=1_000_000)
    synth.add_argument("--profile", default="criteo", choices=["criteo", "small", "small_real"])
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--scale", type=float, default=1.0, help="multiplies the large cardinalities")
    synth.add_argument(
        "--min-count",
        type=int,
        default=1,
        help="train values seen fewer times map to OOV (criteo at >= 300k rows: 50 drops only values that carry no planted signal)",
    )
    synth.add_argument("--overwrite", action="store_true")
    synth.set_defaults(func=cmd_synth)

    info = data.add_parser("info", help="summarise a dataset folder")
    info.add_argument("dataset")
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train one experiment from a YAML config")
    train.add_argument("--config", required=True, help="experiment YAML, or a built-in config name (quickstart)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. training.epochs=3")
    train.add_argument("--out", help="run folder or URI, e.g. s3://bucket/runs/x (default runs/<model>-<method>)")
    train.add_argument("--workers", type=int, help="Ray Train workers (sets training.workers)")
    train.add_argument(
        "--resume", action="store_true", help="skip the phases already finished in --out (with Ray: continue from the last checkpoint)"
    )
    train.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    train.add_argument("--tracking-uri", help=TRACKING_HELP)
    train.set_defaults(func=cmd_train)

    server = sub.add_parser("mlflow-server", help="run an MLflow tracking server on 127.0.0.1 (sqlite store, proxied artifacts)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--backend-store-uri", default=DEFAULT_TRACKING_URI)
    server.add_argument("--artifacts-destination", default="./mlartifacts")
    server.set_defaults(func=cmd_mlflow_server)

    replay = sub.add_parser("mlflow-replay", help="send the tracking calls a run spooled while MLflow was unreachable")
    replay.add_argument("run", help="run folder (holds mlflow_spool*.jsonl)")
    replay.add_argument("--tracking-uri", help="default: the URI the run was logging to")
    replay.set_defaults(func=cmd_mlflow_replay)

    qs = sub.add_parser(
        "quickstart", help="synthetic data, then DLRM with full, hash@10x and the recommended compressed configuration@10x, and a summary table"
    )
    qs.add_argument("--rows", type=int, default=300_000)
    qs.add_argument("--data", default="data/quickstart")
    qs.add_argument("--out", default="runs/quickstart")
    qs.add_argument("--config", default="quickstart", help="experiment YAML or built-in config name")
    qs.set_defaults(func=cmd_quickstart)

    exp = sub.add_parser("export", help="write a serving artifact (manifest, tables, vocabularies, checksums) from a run")
    exp.add_argument(
        "--run",
        required=True,
        help="finished run folder or URI (holds config.yaml and phases/), or an MLflow run id whose artifacts hold its checkpoint",
    )
    exp.add_argument(
        "--tracking-uri", dest="tracking_uri", help=f"MLflow tracking URI for a run id (default: MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})"
    )
    exp.add_argument("--out", required=True, help="artifact folder or URI to write (on object storage manifest.json is written last)")
    exp.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "int8", "int4"], help="table storage (fbgemm row-wise quantization)")
    exp.add_argument("--data", help="dataset folder, when not at the run's data.path")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=cmd_export)

    srv = sub.add_parser("serve", help="HTTP lookup service over an artifact or a registered model")
    srv.add_argument(
        "--model", required=True, help="artifact folder (or symlink), an artifact URI (s3://...), models:/NAME@ALIAS or models:/NAME/VERSION"
    )
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--token", help="bearer token required on /v1/* and /metrics (or env RECSYS_SERVE_TOKEN)")
    srv.add_argument("--tracking-uri", dest="tracking_uri", help="MLflow tracking/registry URI for models:/ sources")
    srv.add_argument("--poll-interval", dest="poll_interval_s", type=float, help="seconds between hot-reload polls (0 = off)")
    srv.add_argument("--load-timeout", dest="load_timeout_s", type=float, help="seconds a model load may take before it is abandoned (default 120)")
    srv.add_argument(
        "--allow-interface-change",
        dest="allow_interface_change",
        action="store_true",
        default=None,
        help="hot-swap to a version whose features or dimension differ (refused by default)",
    )
    srv.add_argument("--max-items", dest="max_items", type=int, help="pairs per /v1/embeddings request")
    srv.add_argument("--max-requests", dest="max_requests", type=int, help="rows per /v1/score request")
    srv.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, help="larger bodies get 413")
    srv.add_argument("--workers", type=int, help="server processes (each loads the model; default 1)")
    srv.add_argument("--offload-items", dest="offload_items", type=int, help="requests this large run in a worker thread (default 512)")
    srv.add_argument("--offload-ids", dest="offload_ids", type=int, help="ids.v1 requests this large run in a worker thread (default 4096)")
    srv.add_argument(
        "--server",
        choices=["uvicorn", "uvicorn-lean", "granian", "granian-rsgi"],
        help="HTTP front: uvicorn-lean (default: uvicorn with ids.v1 lookups answered in its protocol, one thread), uvicorn, "
        "granian (Rust) or granian-rsgi (granian's RSGI: ids.v1 lookups skip the ASGI layers)",
    )
    srv.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        default=None,
        help="do not gc.freeze() the objects alive after the model load (by default they are left out of garbage collection)",
    )
    srv.add_argument("--header-timeout", dest="header_timeout_s", type=float, help="seconds for a request's headers (default 10; then 408)")
    srv.add_argument(
        "--body-timeout", dest="body_timeout_s", type=float, help="seconds for a request's body after its headers (default 10; then 408)"
    )
    srv.add_argument("--keep-alive", dest="keep_alive_s", type=float, help="seconds an idle keep-alive connection stays open (default 5)")
    srv.add_argument(
        "--max-connections",
        dest="max_connections",
        type=int,
        help="uvicorn: 503 beyond this many connections; granian: requests at once per worker (default 1024)",
    )
    srv.add_argument("--max-inflight", dest="max_inflight", type=int, help="POST requests served at once per process, more get 503 (default 256)")
    srv.add_argument("--log-level", dest="log_level", default="info")
    srv.set_defaults(func=cmd_serve)

    add_bench_commands(sub, with_speed)

    methods = sub.add_parser("methods", help="list the registered embedding methods and their options")
    methods.set_defaults(func=cmd_methods)

    add_feast_commands(sub, _split)

    ref = sub.add_parser(
        "config-reference", help="print the configuration reference (every key, type, default, description; method options) as Markdown"
    )
    ref.add_argument("--out", help="write it to this file (e.g. docs/configuration.md) instead of stdout")
    ref.set_defaults(func=cmd_config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `bench speed`'s options live in recsys.training: built only for that command, so other
    # commands (the service above all) never import the training layer.
    args = build_parser(with_speed=argv[:2] == ["bench", "speed"]).parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ConnectionError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
