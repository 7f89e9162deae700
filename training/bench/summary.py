"""A quality suite's summary: per dataset and budget, every method against ``full`` and the best baseline.

One summary row per (dataset, method, budget), from that dataset's sweep rows (means over
seeds) and its points' test scores (``test_scores.safetensors``):

* ``d_full``: the method's mean test AUC minus ``full``'s; ``d_base``: minus the best baseline's
  (the better of ``hash`` and ``qr`` at that budget, by mean AUC); ``best``: the method with the
  highest mean AUC at that budget (``full`` excluded);
* ``auc_lo``/``auc_hi``, ``d_full_lo``/``..hi``, ``d_base_lo``/``..hi``: percentile bootstrap
  intervals over the test rows (``recsys.training.bench.bootstrap``), paired (the same resampled
  rows for every point of a dataset), of the mean over seeds. NaN where a point has no saved
  scores or the bootstrap is off.

Wins and losses (``wins_losses``) count, per budget and method, the datasets where it is above or
below the best baseline, and those where the paired interval of that difference excludes 0.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.runfolder import RunFolder
from recsys.storage import load_tensors
from recsys.training.bench.bootstrap import bootstrap_aucs, interval
from recsys.training.bench.quality import TUNED
from recsys.training.bench.report import PointResult, draw_pareto

BASELINES = ("hash", "qr")
COLUMNS = [
    "dataset",
    "budget",
    "method",
    "status",
    "seeds_ok",
    "bytes",
    "auc_mean",
    "auc_std",
    "auc_lo",
    "auc_hi",
    "d_full",
    "d_full_lo",
    "d_full_hi",
    "baseline",
    "d_base",
    "d_base_lo",
    "d_base_hi",
    "best",
    "test_rows",
    "pick",
    "error",
]
NAN = float("nan")


@dataclass
class DatasetOutcome:
    """One dataset's sweep: its rows (``report.summarise``), point results and their folders."""

    label: str
    rows: list[dict[str, Any]]
    results: list[PointResult]
    folders: list[Path]
    oracle: Any = None  # the test split's oracle metrics (synthetic data) or None
    picks: list[Any] = field(default_factory=list)  # the tuner's picks (``recsys.training.bench.tuned.Pick``), one per tuned budget


def _scores(outcome: DatasetOutcome) -> tuple[np.ndarray | None, dict[tuple[str, float, int], np.ndarray]]:
    """The test labels and each finished point's probabilities; points without scores are left out.
    Raises when two points scored different test rows (a paired bootstrap needs the same rows)."""
    labels, probs = None, {}
    for result, folder in zip(outcome.results, outcome.folders):
        if not result.ok or not RunFolder(folder).test_scores.exists():
            continue
        t = load_tensors(RunFolder(folder).test_scores)
        y = t["labels"].numpy()
        if labels is None:
            labels = y
        elif not np.array_equal(labels, y):
            raise ValueError(
                f"{outcome.label}: point {folder.name} scored other test rows than the others; "
                "the paired bootstrap needs every point on the same test rows (same data.max_eval_rows)"
            )
        probs[(result.method, result.budget if result.budget is not None else 1.0, result.seed)] = t["probs"].numpy().astype(np.float64)
    return labels, probs


def _mean_samples(boot: dict[tuple[str, float, int], np.ndarray], method: str, budget: float, seeds: int) -> np.ndarray | None:
    """Resampled AUC of a (method, budget) averaged over its seeds; None unless every finished seed has scores."""
    parts = [v for (m, b, _), v in boot.items() if m == method and b == budget]
    return np.mean(parts, axis=0) if parts and len(parts) == seeds else None


def _ci(samples: np.ndarray | None, level: float) -> tuple[float, float]:
    return interval(samples, level) if samples is not None else (NAN, NAN)


def summarise_dataset(outcome: DatasetOutcome, resamples: int, seed: int, level: float) -> list[dict[str, Any]]:
    """The dataset's summary rows: ``full``, then each budget of its sweep."""
    labels, probs = _scores(outcome)
    budgets = list(dict.fromkeys(float(r["budget"]) for r in outcome.rows if r["method"] != "full"))
    boot = bootstrap_aucs(labels, probs, resamples, seed) if labels is not None and resamples > 0 else {}
    rows = {(r["method"], float(r["budget"])): r for r in outcome.rows}
    full = rows.get(("full", 1.0))
    full_ok = full is not None and full["seeds_ok"] > 0
    full_boot = _mean_samples(boot, "full", 1.0, full["seeds_ok"]) if full_ok else None
    picks = {p.budget: p.describe() for p in outcome.picks}
    out = []
    for budget in [1.0, *budgets]:
        at = [r for (m, b), r in rows.items() if b == budget and (m == "full") == (budget == 1.0)]
        ok = [r for r in at if r["status"] == "ok"]
        base = max((r for r in ok if r["method"] in BASELINES), key=lambda r: r["auc_mean"], default=None)
        best = max(ok, key=lambda r: r["auc_mean"], default=None) if budget != 1.0 else None
        base_boot = _mean_samples(boot, base["method"], budget, base["seeds_ok"]) if base else None
        for r in at:
            done = r["seeds_ok"] > 0
            samples = _mean_samples(boot, r["method"], budget, r["seeds_ok"]) if done else None
            d_full = r["auc_mean"] - full["auc_mean"] if done and full_ok and budget != 1.0 else NAN
            d_base = r["auc_mean"] - base["auc_mean"] if done and base else NAN
            both_full = samples is not None and full_boot is not None and budget != 1.0
            both_base = samples is not None and base_boot is not None
            out.append(
                {
                    "dataset": outcome.label,
                    "budget": budget,
                    "method": r["method"],
                    "status": r["status"],
                    "seeds_ok": r["seeds_ok"],
                    "bytes": r["bytes"],
                    "auc_mean": r["auc_mean"],
                    "auc_std": r["auc_std"],
                    **_pair("auc", _ci(samples, level)),
                    "d_full": d_full,
                    **_pair("d_full", _ci(samples - full_boot if both_full else None, level)),
                    "baseline": base["method"] if base else "",
                    "d_base": d_base,
                    **_pair("d_base", _ci(samples - base_boot if both_base else None, level)),
                    "best": best is not None and r is best,
                    "test_rows": len(labels) if labels is not None else 0,
                    "pick": picks.get(budget, "") if r["method"] == TUNED else "",
                    "error": r["error"],
                }
            )
    return out


def _pair(name: str, bounds: tuple[float, float]) -> dict[str, float]:
    return {f"{name}_lo": bounds[0], f"{name}_hi": bounds[1]}


def summarise_suite(outcomes: list[DatasetOutcome], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """The summary rows of every dataset (``full`` first, then budget by budget)."""
    return [row for o in outcomes for row in summarise_dataset(o, resamples, seed, level)]


def wins_losses(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (budget, method): datasets above/below the best baseline, how many of those the interval
    confirms, the datasets where it could not run, and the mean Δ against ``full``."""
    table: dict[tuple[float, str], dict[str, Any]] = {}
    for r in summary:
        if r["budget"] == 1.0:
            continue
        t = table.setdefault(
            (r["budget"], r["method"]),
            {"budget": r["budget"], "method": r["method"], "wins": 0, "losses": 0, "sure_wins": 0, "sure_losses": 0, "failed": 0, "d_full": []},
        )
        if r["seeds_ok"] == 0 or math.isnan(r["d_base"]):
            t["failed"] += r["seeds_ok"] == 0
            continue
        t["wins"] += r["d_base"] > 0
        t["losses"] += r["d_base"] < 0
        t["sure_wins"] += r["d_base_lo"] > 0
        t["sure_losses"] += r["d_base_hi"] < 0
        if not math.isnan(r["d_full"]):
            t["d_full"].append(r["d_full"])
    return [t | {"d_full": float(np.mean(t["d_full"])) if t["d_full"] else NAN, "datasets": len(t["d_full"])} for t in table.values()]


def _f(x: float, spec: str = "+.4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec).replace("-", "−")


def _ci_text(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f" [{_f(lo)}, {_f(hi)}]"


def markdown(summary: list[dict[str, Any]], title: str) -> str:
    """Per budget: a Δ-vs-full table (datasets × methods, the best bold) and wins/losses; then each dataset's rows with intervals."""
    lines = [f"## {title}\n"]
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    methods = list(dict.fromkeys(r["method"] for r in summary if r["budget"] != 1.0))
    full = {r["dataset"]: r for r in summary if r["budget"] == 1.0}
    for budget in dict.fromkeys(r["budget"] for r in summary if r["budget"] != 1.0):
        at = {(r["dataset"], r["method"]): r for r in summary if r["budget"] == budget}
        lines += [
            f"\n### {budget:g}×: test AUC Δ against `full` (mean over seeds; best method bold, — could not meet the budget)\n",
            "| dataset | full AUC [95% CI] | best baseline | best | " + " | ".join(methods) + " |",
            "|---|---:|---|---|" + "---:|" * len(methods),
        ]
        for d in (d for d in datasets if any(dd == d for dd, _ in at)):
            f = full.get(d)
            base = next((r["baseline"] for (dd, _), r in at.items() if dd == d and r["baseline"]), "")
            best = next((m for m in methods if at.get((d, m), {}).get("best")), "—")
            cells = []
            for m in methods:
                r = at.get((d, m))
                cell = "" if r is None else (_f(r["d_full"]) if r["seeds_ok"] else "—")
                cells.append(f"**{cell}**" if r is not None and r["best"] else cell)
            full_text = "—" if f is None else f"{_f(f['auc_mean'], '.4f')}{_ci_text(f['auc_lo'], f['auc_hi'])}".replace("+", "")
            lines.append(f"| {d} | {full_text} | {base} | {best} | " + " | ".join(cells) + " |")
        lines += [
            f"\n{budget:g}× against the best baseline (datasets above / below it; sure: the 95% interval of the Δ excludes 0):\n",
            "| method | above | below | sure above | sure below | could not run | mean Δ vs full |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for t in (t for t in wins_losses(summary) if t["budget"] == budget):
            lines.append(
                f"| {t['method']} | {t['wins']} | {t['losses']} | {t['sure_wins']} | {t['sure_losses']} | {t['failed']} | {_f(t['d_full'])} |"
            )
    lines += _pick_table(summary)
    lines.append("\n### Per dataset, with 95% bootstrap intervals over the test rows (paired)\n")
    for d in datasets:
        rows = [r for r in summary if r["dataset"] == d]
        lines += [
            f"\n#### {d} ({rows[0]['test_rows']:,} test rows)\n",
            "| method | budget | bytes | test AUC [95% CI] | Δ vs full [95% CI] | Δ vs best baseline [95% CI] |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if not r["seeds_ok"]:
                lines.append(f"| {r['method']} | {r['budget']:g}× | | fails: {_one_line(r['error'])} | | |")
                continue
            auc = f"{r['auc_mean']:.4f} ± {r['auc_std']:.4f}{_ci_text(r['auc_lo'], r['auc_hi'])}".replace("+", "")
            base = "" if not r["baseline"] or r["budget"] == 1.0 else f"{_f(r['d_base'])}{_ci_text(r['d_base_lo'], r['d_base_hi'])} ({r['baseline']})"
            d_full = "" if r["budget"] == 1.0 else f"{_f(r['d_full'])}{_ci_text(r['d_full_lo'], r['d_full_hi'])}"
            lines.append(
                f"| {'**' + r['method'] + '**' if r['best'] else r['method']} | {r['budget']:g}× | {r['bytes']:,} | {auc} | {d_full} | {base} |"
            )
    return "\n".join(lines) + "\n"


def _pick_table(summary: list[dict[str, Any]]) -> list[str]:
    """The tuner's pick per dataset and budget, with its Δs (none without a ``tuned`` column)."""
    rows = [r for r in summary if r["method"] == TUNED and r["pick"]]
    if not rows:
        return []
    lines = [
        "\n### The tuner's pick (`tuned`: chosen by validation AUC, then trained at the suite's seeds)\n",
        "| dataset | budget | pick | tuned AUC | Δ vs full [95% CI] | Δ vs best baseline [95% CI] |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        base = f"{_f(r['d_base'])}{_ci_text(r['d_base_lo'], r['d_base_hi'])} ({r['baseline']})" if r["baseline"] else "—"
        auc = _f(r["auc_mean"], ".4f") if r["seeds_ok"] else "—"
        lines.append(
            f"| {r['dataset']} | {r['budget']:g}× | {_one_line(r['pick'])} | {auc} | {_f(r['d_full'])}{_ci_text(r['d_full_lo'], r['d_full_hi'])} | {base} |"
        )
    return lines


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text[:limit] + "…" if len(text) > limit else text


def side_by_side(outcomes: list[DatasetOutcome], path: Path, title: str) -> None:
    """The datasets' Pareto plots in one PNG (up to 3 per row), one shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(outcomes)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for o in outcomes for r in o.rows))
    for ax, o in zip(axes.flat, outcomes):
        draw_pareto(ax, o.rows, o.label, o.oracle.auc if o.oracle else None, methods)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(summary: list[dict[str, Any]], outcomes: list[DatasetOutcome], out: Path, what: str) -> list[Path]:
    """``summary.csv``, ``summary.json``, ``summary.md`` and ``pareto.png`` in ``out``; their paths."""
    paths = [out / "summary.csv", out / "summary.json", out / "summary.md", out / "pareto.png"]
    with open(paths[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(summary)
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in summary]
    tally = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in t.items()} for t in wins_losses(summary)]
    paths[1].write_text(json.dumps({"rows": clean, "wins_losses": tally}, indent=1, default=str) + "\n")
    paths[2].write_text(markdown(summary, f"Quality suite: {what}"))
    side_by_side(outcomes, paths[3], f"test AUC vs embedding bytes ({what})")
    return paths
