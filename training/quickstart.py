"""The quickstart: synthetic data, DLRM with ``full``, ``hash`` at 10× and the recommended compressed configuration at 10×.

The recommended configuration (``RECOMMENDED``) is the one the quality suite measured best at
10× across its datasets (``docs/results/suite.md``); its budget reaches it as in ``recsys bench
quality`` (``recsys.training.bench.methods``), so the quickstart's row is that suite's point.
"""

from __future__ import annotations

from pathlib import Path

from recsys.config import ExperimentConfig, apply_override, load_config, load_raw, resolve_config_path, validate_config
from recsys.embeddings import MethodContext
from recsys.features import load_dataset_spec
from recsys.training.bench.methods import Budget, sweep_method
from recsys.training.run import train_experiment

RECOMMENDED = "unified+dsl"  # best mean Δ vs full at 10× over the suite's datasets (docs/results/suite.md)
RUNS = (("full", None), ("hash", 10.0), (RECOMMENDED, 10.0))
# Train values seen fewer times share the OOV row. In the criteo profile at a few hundred
# thousand rows these carry no planted signal (see recsys.data.synthetic), so the oracle is
# unchanged while the model cannot memorise them: DLRM's test AUC rises by about 0.01.
MIN_COUNT = 50


def run_config(config: Path, data_dir: Path, method: str, compression: float | None, full_bytes: int, embedding_dim: int) -> ExperimentConfig:
    """One quickstart run's config: ``config`` on ``data_dir`` with the bench method (its options) and budget."""
    entry = sweep_method(method)
    raw = load_raw(resolve_config_path(config))
    apply_override(raw, f"data.path={data_dir}")
    typed = entry.spec().model_dump(mode="json", exclude_unset=True)
    raw["embedding"] = {"method": typed["method"], "options": typed.get("options", {})}
    if compression is not None and entry.budget is not None:
        for assignment in entry.budget(Budget(compression, int(full_bytes // compression), full_bytes, embedding_dim)):
            apply_override(raw, assignment)
    return validate_config(raw, str(config))


def quickstart(rows: int, data_dir: Path, out_dir: Path, config: Path) -> list[dict]:
    """Generate (or reuse) the dataset, train each run, print and return the rows of the table."""
    from recsys.data.synthetic import generate

    wanted = {"rows": rows, "min_count": MIN_COUNT}
    existing = load_dataset_spec(data_dir).synthetic if (data_dir / "dataset.json").exists() else {}
    if all(existing.get(k) == v for k, v in wanted.items()):
        print(f"reusing synthetic dataset at {data_dir}")
    else:
        generate(data_dir, rows=rows, profile="criteo", seed=0, min_count=MIN_COUNT, overwrite=True)
    base = load_config(config, [f"data.path={data_dir}"])
    full_bytes = MethodContext.from_spec(load_dataset_spec(data_dir), base.model.embedding_dim).full_bytes
    table = []
    for method, compression in RUNS:
        cfg = run_config(config, data_dir, method, compression, full_bytes, base.model.embedding_dim)
        metrics = train_experiment(cfg, out_dir / method.replace("+", "_"))
        table.append({"method": method if method != RECOMMENDED else f"{method} (recommended)", **metrics})
    _print_table(table)
    print("runs are in MLflow: mlflow ui --backend-store-uri sqlite:///mlflow.db")
    return table


def _print_table(rows: list[dict]) -> None:
    width = max(8, *(len(r["method"]) for r in rows))
    header = f"{'method':{width}s} {'bytes':>12s} {'compression':>11s} {'test AUC':>9s} {'logloss':>8s} {'oracle AUC':>10s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        oracle = f"{r['oracle_test_auc']:.4f}" if "oracle_test_auc" in r else "-"
        print(
            f"{r['method']:{width}s} {r['embedding_bytes']:>12,d} {r['compression_ratio']:>10.1f}x "
            f"{r['test_auc']:>9.4f} {r['test_logloss']:>8.4f} {oracle:>10s}"
        )
