"""Which trial ``recsys tune`` picks: the best validation AUC, unless its lead over the best
baseline is within the validation split's noise.

On a small validation split the best of a dozen trials by validation AUC is often a method whose
lead over ``qr`` or ``hash`` is noise (and the winner of many noisy draws is biased upward): on
the Criteo 10k sample at 10× the plain best-of-14 picked ``unified``, 0.004 below ``qr`` on test.
So the pick compares the best trial with the best baseline trial (``BASELINES``, by validation
AUC) on the same validation rows, by a paired bootstrap of the AUC difference
(``recsys.training.bench.bootstrap``), and keeps the best only when its lead exceeds ``margin``
bootstrap standard errors of that difference (the "one standard error" rule of model selection
at ``margin=1``; ``margin=0`` is the plain best). Otherwise the baseline is the pick.

Example:
    >>> choose([], lambda r: None).trial is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.training.bench.bootstrap import bootstrap_aucs
from recsys.training.tune.report import TrialResult, best_trial

BASELINES = ("hash", "qr")  # what a compressed method must beat, beyond noise, to be picked
RESAMPLES = 1000

Scores = Callable[[TrialResult], "tuple[np.ndarray, np.ndarray] | None"]  # a trial's validation (labels, probabilities)


@dataclass(frozen=True)
class Pick:
    """The picked trial (None: no trial finished) and why: the best's lead over the best baseline
    on validation AUC, its bootstrap standard error, and the rule's verdict."""

    trial: TrialResult | None
    best: TrialResult | None = None  # the best trial by validation AUC
    baseline: TrialResult | None = None  # the best baseline trial compared with it
    lead: float | None = None  # valid AUC of best minus baseline
    lead_se: float | None = None  # bootstrap standard error of that difference (paired: same rows)
    reason: str = "no trial finished"

    def record(self) -> dict[str, Any]:
        """What ``best.json`` keeps of the decision."""
        return {
            "rule": self.reason,
            "best_by_valid_auc": None if self.best is None else self.best.trial,
            "baseline": None if self.baseline is None else self.baseline.trial,
            "lead": self.lead,
            "lead_se": self.lead_se,
        }


def choose(results: list[TrialResult], scores: Scores, margin: float = 1.0, seed: int = 0) -> Pick:
    """The pick among ``results`` (see the module docstring); ``scores(trial)`` gives a finished
    trial's validation labels and probabilities, or None when it has none (then no test is made
    and the best stands). Raises when the two trials scored different validation rows."""
    best = best_trial(results)
    if best is None:
        return Pick(None)
    baseline = best_trial([r for r in results if r.method in BASELINES])
    if baseline is None or baseline is best:
        why = "the best by validation AUC is a baseline" if baseline is best else "no baseline trial finished"
        return Pick(best, best, baseline, reason=why)
    lead = best.metrics["valid_auc"] - baseline.metrics["valid_auc"]
    a, b = scores(best), scores(baseline)
    if a is None or b is None or margin <= 0:
        why = "margin 0: the best by validation AUC" if margin <= 0 else "no validation scores to compare: the best by validation AUC"
        return Pick(best, best, baseline, lead, reason=why)
    if a[0].shape != b[0].shape or not np.array_equal(a[0], b[0]):
        raise ValueError(f"trials {best.trial} and {baseline.trial} scored different validation rows; a paired comparison needs the same rows")
    boot = bootstrap_aucs(a[0], {"best": a[1], "baseline": b[1]}, RESAMPLES, seed)
    diff = boot["best"] - boot["baseline"]
    se = float(np.nanstd(diff, ddof=1))
    if lead > margin * se:
        return Pick(best, best, baseline, lead, se, f"lead {lead:+.4f} over {baseline.method} exceeds {margin:g} standard error ({se:.4f})")
    return Pick(baseline, best, baseline, lead, se, f"lead {lead:+.4f} of {best.method} within {margin:g} standard error ({se:.4f}): the baseline")
