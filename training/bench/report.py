"""The quality sweep's results: one row per (method, budget) over seeds, as CSV, Markdown and a Pareto plot.

A row aggregates the point results of its seeds: test AUC mean ± std (sample std; 0 for one
seed), logloss mean, oracle gap (oracle test AUC − test AUC, mean) when the dataset has oracle
metrics, achieved bytes (the largest over seeds) and compression, train samples/s (mean).
``status`` is ``ok`` (every seed finished), ``partial`` or ``failed``; ``error`` holds the first
failure's message.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLUMNS = [
    "method",
    "budget",
    "budget_bytes",
    "status",
    "seeds",
    "seeds_ok",
    "bytes",
    "compression",
    "auc_mean",
    "auc_std",
    "logloss_mean",
    "oracle_gap",
    "train_samples_per_s",
    "wall_s",
    "cpu_s",
    "error",
]


@dataclass
class PointResult:
    """One trained (or failed) point of the sweep."""

    method: str
    budget: float | None  # compression ratio; None = uncompressed (full)
    seed: int
    budget_bytes: int | None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.metrics is not None


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else math.nan


def summarise(results: list[PointResult]) -> list[dict[str, Any]]:
    """One row per (method, budget), in the order the points were planned."""
    groups: dict[tuple[str, float | None], list[PointResult]] = {}
    for r in results:
        groups.setdefault((r.method, r.budget), []).append(r)
    rows = []
    for (method, budget), points in groups.items():
        done = [p.metrics for p in points if p.metrics is not None]
        aucs = [m["test_auc"] for m in done]
        gaps = [m["oracle_test_auc"] - m["test_auc"] for m in done if "oracle_test_auc" in m]
        errors = [p.error for p in points if p.error]
        nbytes = max((m["embedding_bytes"] for m in done), default=None)
        rows.append(
            {
                "method": method,
                "budget": budget if budget is not None else 1.0,
                "budget_bytes": points[0].budget_bytes,
                "status": "ok" if len(done) == len(points) else ("partial" if done else "failed"),
                "seeds": len(points),
                "seeds_ok": len(done),
                "bytes": nbytes,
                "compression": done[0]["full_embedding_bytes"] / nbytes if done else math.nan,
                "auc_mean": _mean(aucs),
                "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else (0.0 if aucs else math.nan),
                "logloss_mean": _mean([m["test_logloss"] for m in done]),
                "oracle_gap": _mean(gaps),
                "train_samples_per_s": _mean([m["train_samples_per_s"] for m in done]),
                "wall_s": sum(p.wall_s or 0.0 for p in points),
                "cpu_s": sum(p.cpu_s or 0.0 for p in points),
                "error": errors[0] if errors else "",
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    """The results table; failed points show their message in the last column."""
    lines = [f"{title}\n"] if title else []
    lines += [
        "| method | budget | achieved bytes | achieved compression | test AUC | test logloss | oracle gap | train samples/s | seeds | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        status = r["status"] if not r["error"] else f"{r['status']}: {_md_text(r['error'])}"
        budget = "1× (uncompressed)" if r["budget_bytes"] is None else f"{r['budget']:g}× ({r['budget_bytes']:,} B)"
        auc = f"{_fmt(r['auc_mean'], '.4f')} ± {_fmt(r['auc_std'], '.4f')}" if r["seeds_ok"] else "—"
        lines.append(
            f"| {r['method']} | {budget} | {_fmt(r['bytes'], ',')} | {_fmt(r['compression'], '.1f')}{'×' if r['seeds_ok'] else ''} | {auc} "
            f"| {_fmt(r['logloss_mean'], '.4f')} | {_fmt(r['oracle_gap'], '.4f')} | {_fmt(r['train_samples_per_s'], ',.0f')} "
            f"| {r['seeds_ok']}/{r['seeds']} | {status} |"
        )
    return "\n".join(lines) + "\n"


def _md_text(text: str, limit: int = 300) -> str:
    one_line = " ".join(text.split())
    return (one_line[:limit] + "…" if len(one_line) > limit else one_line).replace("|", "\\|")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (bytes, AUC) points no other point beats with fewer-or-equal bytes and a higher AUC, by bytes."""
    front: list[tuple[float, float]] = []
    for nbytes, auc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or auc > front[-1][1]:
            front.append((nbytes, auc))
    return front


def pareto_plot(rows: list[dict[str, Any]], path: Path, title: str, oracle_auc: float | None = None) -> None:
    """AUC against achieved bytes (log x): a series per method with std error bars, the Pareto
    front, and ``full`` and the oracle as horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    draw_pareto(ax, rows, title, oracle_auc)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_pareto(ax: Any, rows: list[dict[str, Any]], title: str, oracle_auc: float | None = None, methods: list[str] | None = None) -> None:
    """The Pareto plot of ``rows`` on the matplotlib axes ``ax`` (no legend: the caller places it);
    ``methods`` fixes each method's colour and marker (the same in every panel of a figure)."""
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["seeds_ok"]]
    markers = "osD^v<>Xph*"
    colors = [plt.cm.tab10(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # tab10 without its grey (the front is grey)
    order = methods or list(dict.fromkeys(r["method"] for r in done))
    for method in dict.fromkeys(r["method"] for r in done):
        i = order.index(method) if method in order else len(order)
        series = sorted((r for r in done if r["method"] == method), key=lambda r: r["bytes"])
        ax.errorbar(
            [r["bytes"] for r in series],
            [r["auc_mean"] for r in series],
            yerr=[r["auc_std"] for r in series],
            marker=markers[i % len(markers)],
            color=colors[i % len(colors)],
            linestyle="-",
            linewidth=0.8,
            markersize=7,
            capsize=3,
            label=method,
            zorder=3,
        )
    front = pareto_front([(r["bytes"], r["auc_mean"]) for r in done])
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="dimgrey", linewidth=4, alpha=0.35, label="Pareto front", zorder=2)
    full = [r for r in done if r["budget_bytes"] is None]
    if full:
        ax.axhline(full[0]["auc_mean"], color="grey", linestyle="--", linewidth=1, label=f"full ({full[0]['auc_mean']:.4f})")
    if oracle_auc is not None:
        ax.axhline(oracle_auc, color="green", linestyle=":", linewidth=1, label=f"oracle ({oracle_auc:.4f})")
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes (served fp32, log scale)")
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
