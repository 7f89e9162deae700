"""``recsys bench quality|speed`` and ``recsys tune``: the commands that run the benchmark suite
(``recsys.training.bench``) and the budget-aware search (``recsys.training.tune``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.tracking_uri import TRACKING_HELP

if TYPE_CHECKING:
    from recsys.training.bench.quality import SweepSettings


def _comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _epochs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of epochs like 3") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of standard errors like 1 or 0.5") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0 (0 picks the best trial by validation AUC)")
    return value


def _budgets(text: str) -> list[float]:
    try:
        values = [float(x) for x in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budgets {text!r}: expected compression ratios like 10,100,1000") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--budgets {text!r}: every budget is a compression ratio >= 1")
    return values


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from recsys.training.bench.quality import SweepSettings, run_sweep
    from recsys.training.bench.suite import load_suite, resolve_choices, run_suite, suite_from_datasets

    if bool(args.dataset) == bool(args.suite):
        raise SystemExit("error: give --dataset (once or several times) or --suite FILE.yaml")
    suite = load_suite(args.suite) if args.suite else (suite_from_datasets(args.dataset) if len(args.dataset) > 1 else None)
    methods, budgets, seeds, model = resolve_choices(suite, args.methods, args.budgets, args.seeds, args.model)
    settings = SweepSettings(
        dataset=Path(args.dataset[0] if suite is None else suite.datasets[0].path),
        methods=methods,
        budgets=budgets,
        seeds=seeds,
        model=model,
        config=Path(args.config) if args.config else None,
        sets=list(args.set or []),
        out=Path(args.out),
        quick=args.quick,
        rerun=args.rerun,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        threads=args.threads or None,
        report_only=args.report_only,
    )
    if args.folds:
        return _crossval(args, suite, settings)
    if suite is not None:
        summary = run_suite(suite, settings)
        print((Path(args.out) / "summary.md").read_text())
        print(f"wrote {args.out}/summary.csv, summary.json, summary.md, pareto.png and a folder per dataset")
        return 0 if any(r["seeds_ok"] for r in summary) else 1
    rows = run_sweep(settings)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.csv, results.md, pareto.png")
    return 0 if any(r["seeds_ok"] for r in rows) else 1


def _crossval(args: argparse.Namespace, suite: object, settings: SweepSettings) -> int:
    from recsys.training.bench.crossval import run_crossval

    if suite is not None or args.folds < 2:
        raise SystemExit(f"error: --folds {args.folds}: cross-validation takes one --dataset and at least 2 folds")
    rows = run_crossval(settings, args.folds)
    print((Path(args.out) / "crossval.md").read_text())
    print(f"wrote {args.out}/crossval.md, crossval.csv, crossval.json, crossval.png and a folder per fold")
    return 0 if rows else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from recsys.training.tune.search import TuneSettings, run_search

    settings = TuneSettings(
        dataset=Path(args.dataset),
        budget=args.budget,
        methods=args.methods,
        trials=args.trials,
        model=args.model,
        address=args.address,
        quick=args.quick,
        out=Path(args.out),
        seed=args.seed,
        config=Path(args.config) if args.config else None,
        sets=list(args.set or []),
        concurrency=args.concurrency,
        grace_epochs=args.grace_epochs,
        search_rows=args.search_rows,
        confirm_seeds=args.confirm_seeds,
        confirm_folds=args.confirm_folds,
        pick_margin=args.pick_margin,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )
    best = run_search(settings)
    print((Path(args.out) / "trials.csv").read_text())
    if best is None:
        print("error: no trial finished; see trials.csv and the trial folders", file=sys.stderr)
        return 1
    print(
        f"pick: {best.trial} ({best.method}) valid AUC {best.metrics['valid_auc']:.4f}, test AUC {best.metrics['test_auc']:.4f}, "
        f"{best.metrics['embedding_bytes']:,} bytes"
    )
    print(f"wrote {args.out}/best.yaml, trials.csv, pareto.png")
    return 0


def _add_tune_parser(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser(
        "tune",
        help="budget-aware search over methods and options on Ray Tune: best.yaml, trials.csv, pareto.png",
        description="Search methods and their key options at one memory budget on Ray Tune (seeded trials, ASHA early "
        "stopping on validation AUC, one MLflow parent run with a child per trial). Each trial is a `recsys bench quality` "
        "point (same defaults and --set) plus the trial's options. Rerunning the same command resumes: finished trials "
        "are read back; once every trial has ended, a rerun (with another --pick-margin, --confirm-seeds or --confirm-folds, say) redoes only "
        "the pick. Writes DIR/best.yaml (run it with `recsys train --config DIR/best.yaml`), trials.csv, pareto.png.",
    )
    tune.add_argument("--dataset", required=True, help="dataset folder (holds dataset.json)")
    tune.add_argument("--budget", type=float, required=True, help="compression ratio: full fp32 bytes / budget")
    tune.add_argument(
        "--methods",
        type=_comma_list,
        default=None,
        help="comma-separated benchmark methods (default: hash,qr,auto,unified,hybrid,dsl,optembed,unified+dsl,unified+optembed; "
        "those that cannot meet the budget dropped)",
    )
    tune.add_argument("--trials", type=int, default=16, help="trials, dealt evenly over the methods, each method's defaults first (default 16)")
    tune.add_argument("--model", default="deepfm", choices=["dlrm", "dcnv2", "deepfm"])
    tune.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    tune.add_argument("--quick", action="store_true", help="20k train rows, 1 epoch (the bench's --quick)")
    tune.add_argument("--seed", type=int, default=0, help="seed of the trial draw and of training")
    tune.add_argument("--concurrency", type=int, default=None, help="trials at once (default: as many as Ray has CPUs)")
    tune.add_argument(
        "--grace-epochs",
        type=_epochs,
        default=1,
        help="epochs every trial trains before ASHA may stop it (default 1; slow starters such as dsl need 3 on small sets)",
    )
    tune.add_argument(
        "--search-rows",
        type=int,
        default=None,
        help="trials train on the first N train rows (a cheaper search on a large set); best.yaml trains on all of them",
    )
    tune.add_argument(
        "--confirm-seeds",
        type=int,
        default=1,
        help="retrain the best trial and the best baseline trial at this many fresh seeds; the pick compares them over all "
        "their seeds (default 1; 0: one seed each)",
    )
    tune.add_argument(
        "--confirm-folds",
        type=int,
        default=None,
        help="retrain each method's best trial on K folds of train+valid (the search rows), at --confirm-seeds seeds each, "
        "rank them on the held-out folds and compare the best with the best baseline over all of them: K times the "
        "validation rows (default: 5 when the validation split has fewer than 10,000 rows, else 0: off; else >= 2)",
    )
    tune.add_argument(
        "--pick-margin",
        type=_non_negative,
        default=2.0,
        help="the pick is the best trial by validation AUC only if it beats the best baseline trial (hash, qr) by this many "
        "bootstrap standard errors of the paired difference on the validation rows (mean over seeds), else that baseline "
        "(default 2; 0: the best, with no confirmation runs)",
    )
    tune.add_argument("--config", help="base experiment YAML")
    tune.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key of every trial")
    tune.add_argument("--out", required=True, help="output folder")
    tune.add_argument("--tracking-uri", help=TRACKING_HELP)
    tune.add_argument("--experiment", default="tune", help="MLflow experiment name")
    tune.set_defaults(func=cmd_tune)


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from recsys.training.bench.speed_report import run

    run(args)
    return 0


def add_bench_commands(sub: argparse._SubParsersAction, with_speed: bool) -> None:
    """``bench quality``, ``bench speed`` (its options only ``with_speed``: they import ``recsys.training``) and ``tune``."""
    bench = sub.add_parser("bench", help="benchmark suite: quality at equal bytes, speed").add_subparsers(dest="bench_command", required=True)
    quality = bench.add_parser(
        "quality",
        help="every method at every budget: results table, AUC-vs-bytes Pareto plot, MLflow parent run",
        description="Train every method at every memory budget (full once per seed, uncompressed), write results.csv, "
        "results.md and pareto.png to --out, log a parent MLflow run with a child per (method, budget, seed). An "
        "interrupted sweep resumes: finished points are read back. Defaults: 8 methods x 3 budgets (22 points per seed; "
        "dsl on full below ~16x, qr and optembed at 1000x fail fast as over budget), 2 seeds, up to 3 epochs with early "
        "stopping on every train row, 50k valid/test rows, 1 torch thread. Measured on 2 CPU cores shared with 1-3 other "
        "jobs, synthetic criteo at 1M rows: full,hash,unified,dsl x 3 budgets x 2 seeds took 11 minutes with DLRM and 24 "
        "with DCNv2 (a point 40-60 s, or 2-3 minutes when the cores were oversubscribed); at one epoch, all 22 points of "
        "one seed took 10m21s. --quick (20k train rows, 1 epoch, 1 seed) took 2.5 minutes.",
    )
    quality.add_argument(
        "--dataset",
        action="append",
        help="dataset folder (holds dataset.json); several: a suite, "
        "a folder per dataset under --out (labelled by folder name) and a summary per budget",
    )
    quality.add_argument(
        "--suite",
        help="suite YAML: datasets (label, path, sets), optional methods, budgets, seeds, model, sets, "
        "bootstrap (see recsys.training.bench.suite); options given here win over the file's",
    )
    quality.add_argument(
        "--methods",
        type=_comma_list,
        default=None,
        help="comma-separated, from: full,hash,qr,unified,hybrid,auto,optembed,dsl,unified+optembed,unified+dsl (default: all)",
    )
    quality.add_argument("--budgets", type=_budgets, default=None, help="compression ratios, full bytes / budget (default 10,100,1000)")
    quality.add_argument("--seeds", type=int, default=None, help="seeds per point (default 2; --quick: 1)")
    quality.add_argument("--model", default=None, choices=["dlrm", "dcnv2", "deepfm"], help="default: dlrm")
    quality.add_argument("--config", help="base experiment YAML (default: the built-in config defaults)")
    quality.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key of every point, e.g. training.epochs=2; "
        "METHOD:KEY=VALUE only of that method's points, e.g. unified:embedding.options.chunk_dim=4",
    )
    quality.add_argument("--out", default="bench_out/quality", help="output folder (points/, results.*, pareto.png)")
    quality.add_argument("--quick", action="store_true", help="20k train rows, 1 epoch, 1 seed, short OptEmbed search: a few minutes")
    quality.add_argument("--rerun", action="store_true", help="retrain points that already finished")
    quality.add_argument(
        "--folds",
        type=int,
        default=0,
        help="K-fold cross-validation of one --dataset: the sweep on each of K folds of its train+valid rows (OUT/fold<i>/) "
        "and OUT/crossval.md, .csv, .json, .png: each method's held-out AUC and paired delta against full and the best "
        "baseline over all folds, with bootstrap intervals (for small sets, whose test split is too few rows; default 0: off)",
    )
    quality.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing new: report the points already recorded (finished, or failed) with their current config, e.g. a suite stopped part way",
    )
    quality.add_argument("--tracking-uri", help=TRACKING_HELP)
    quality.add_argument("--experiment", default="bench-quality", help="MLflow experiment name")
    quality.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on shared cores 2 threads per job made steps ~50x slower; 0: torch's default)",
    )
    quality.set_defaults(func=cmd_bench_quality)
    speed = bench.add_parser(
        "speed",
        help="step-time ratios against full, TorchRec vs plain PyTorch, conversion/batch throughput (and serving)",
        description="One speed report (speed.json, speed.md): step times per method, TorchRec against plain PyTorch, conversion; --serving also runs bench/serving_bench.py of a source checkout.",
    )
    if with_speed:
        _add_speed_arguments(speed)
    speed.set_defaults(func=cmd_bench_speed)

    _add_tune_parser(sub)


def _add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    from recsys.training.bench.speed_report import add_arguments

    add_arguments(parser)
