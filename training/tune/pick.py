"""Which trial ``recsys tune`` picks: the best validation AUC, unless its lead over the best
baseline is within noise.

On a small validation split the best of a dozen trials by validation AUC is often a method whose
lead over ``qr`` or ``hash`` is noise, from the validation rows or from the one training seed
each trial gets (and the winner of many noisy draws is biased upward): on the Criteo 10k sample
at 10× the plain best-of-14 picked ``unified``, 0.004 below ``qr`` on test over two seeds. So
the search retrains the best trial and the best baseline trial (``BASELINES``, by validation AUC)
at fresh seeds (``recsys tune --confirm-seeds``, not chosen on), and the pick compares the two on
the same validation rows: the lead is the mean over seeds of the paired AUC difference, its
standard error a bootstrap over the rows of that mean (``recsys.training.bench.bootstrap``). The
best is kept only when its lead exceeds ``margin`` standard errors (``recsys tune``'s default 2:
the best of a dozen noisy trials is itself biased upward by about that much; ``margin=1`` is the
"one standard error" rule of model selection, ``margin=0`` the plain best); otherwise the baseline
is the pick. On the Criteo 10k sample at 10× ``dsl`` led ``qr`` by 0.0156 on validation, 1.3
standard errors, and was 0.016 below it on test.

Example:
    >>> choose([], lambda r: []).trial is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.metrics import auc
from recsys.training.bench.bootstrap import bootstrap_aucs
from recsys.training.tune.report import TrialResult, best_trial

BASELINES = ("hash", "qr")  # what a compressed method must beat, beyond noise, to be picked
RESAMPLES = 1000

Scores = Callable[[TrialResult], "list[tuple[np.ndarray, np.ndarray]]"]  # a trial's validation (labels, probabilities) per seed


@dataclass(frozen=True)
class Pick:
    """The picked trial (None: no trial finished) and why: the best's lead over the best baseline
    on validation AUC, its bootstrap standard error, and the rule's verdict."""

    trial: TrialResult | None
    best: TrialResult | None = None  # the best trial by validation AUC
    baseline: TrialResult | None = None  # the best baseline trial compared with it
    lead: float | None = None  # valid AUC of best minus baseline (mean over the seeds both have)
    lead_se: float | None = None  # bootstrap standard error of that difference (paired: same rows)
    seeds: int = 0  # seeds the lead is averaged over
    reason: str = "no trial finished"

    def record(self) -> dict[str, Any]:
        """What ``best.json`` keeps of the decision."""
        return {
            "rule": self.reason,
            "best_by_valid_auc": None if self.best is None else self.best.trial,
            "baseline": None if self.baseline is None else self.baseline.trial,
            "lead": self.lead,
            "lead_se": self.lead_se,
            "seeds": self.seeds,
        }


def leaders(results: list[TrialResult]) -> tuple[TrialResult | None, TrialResult | None]:
    """The best finished trial by validation AUC and the best baseline trial (either None)."""
    return best_trial(results), best_trial([r for r in results if r.method in BASELINES])


def choose(results: list[TrialResult], scores: Scores, margin: float = 1.0, seed: int = 0) -> Pick:
    """The pick among ``results`` (see the module docstring); ``scores(trial)`` gives a finished
    trial's validation labels and probabilities at each of its seeds (in seed order; ``[]``: none,
    then no test is made and the best stands). Raises when the two trials scored different
    validation rows."""
    best, baseline = leaders(results)
    if best is None:
        return Pick(None)
    if baseline is None or baseline is best:
        why = "the best by validation AUC is a baseline" if baseline is best else "no baseline trial finished"
        return Pick(best, best, baseline, reason=why)
    a, b = scores(best), scores(baseline)
    seeds = min(len(a), len(b))
    if not seeds or margin <= 0:
        lead = best.metrics["valid_auc"] - baseline.metrics["valid_auc"]
        why = "margin 0: the best by validation AUC" if margin <= 0 else "no validation scores to compare: the best by validation AUC"
        return Pick(best, best, baseline, lead, reason=why)
    labels = a[0][0]
    for x_labels, _ in (*a[:seeds], *b[:seeds]):
        if x_labels.shape != labels.shape or not np.array_equal(x_labels, labels):
            raise ValueError(f"trials {best.trial} and {baseline.trial} scored different validation rows; a paired comparison needs the same rows")
    vectors = {f"best{i}": a[i][1] for i in range(seeds)} | {f"baseline{i}": b[i][1] for i in range(seeds)}
    boot = bootstrap_aucs(labels, vectors, RESAMPLES, seed)
    diff = np.mean([boot[f"best{i}"] - boot[f"baseline{i}"] for i in range(seeds)], axis=0)
    lead = float(np.mean([auc(labels, a[i][1]) - auc(labels, b[i][1]) for i in range(seeds)]))
    se = float(np.nanstd(diff, ddof=1))
    over = f"over {seeds} seed{'s' if seeds > 1 else ''}"
    if lead > margin * se:
        reason = f"lead {lead:+.4f} over {baseline.method} {over} exceeds {margin:g} standard error ({se:.4f})"
        return Pick(best, best, baseline, lead, se, seeds, reason)
    reason = f"lead {lead:+.4f} of {best.method} {over} within {margin:g} standard error ({se:.4f}): the baseline"
    return Pick(baseline, best, baseline, lead, se, seeds, reason)
