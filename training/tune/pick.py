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

With folds (``choose_by_folds``: ``recsys tune --confirm-folds``, the default on a validation
split under 10,000 rows) each method's best trial is retrained on K folds of train+valid; they are
ranked by mean AUC over the held-out folds and the same margin rule compares the first with the
best baseline over all those rows (on the Avazu sample at 10×: ``optembed`` +0.0084 over ``qr``
at a standard error of 0.0030 over 5 folds × 2 seeds, where one split gave ~0.01).

What the best must beat is the best *anchor* (``ANCHORS``): the baselines and, when the search has
an ``auto`` trial (the default one does), ``auto``, the configuration a user gets without tuning.
So the pick is never a compressed method whose lead over the untuned default is noise: on the
Avazu sample at 100× the folds ranked ``unified+optembed`` 0.003 ahead of ``unified`` (``auto``'s
choice there), within noise, and it was 0.009 below it on test.

Example:
    >>> choose([], lambda r: []).trial is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from recsys.metrics import auc
from recsys.training.bench.bootstrap import paired_lead
from recsys.training.tune.report import TrialResult, best_trial

BASELINES = ("hash", "qr")  # the single baselines the pick must at least match
# what a method must beat, beyond noise, to be picked: the baselines and ``auto``, the default a user gets without
# tuning (a ``auto`` trial is in the default search: at 10x it is qr or hybrid, past qr's reach unified)
ANCHORS = (*BASELINES, "auto")
RESAMPLES = 1000

Scores = Callable[[TrialResult], "list[tuple[np.ndarray, np.ndarray]]"]  # a trial's validation (labels, probabilities) per seed


@dataclass(frozen=True)
class Pick:
    """The picked trial (None: no trial finished) and why: the best's lead over the best baseline
    on validation AUC, its bootstrap standard error, and the rule's verdict."""

    trial: TrialResult | None
    best: TrialResult | None = None  # the best trial by validation AUC (by mean AUC over the folds: choose_by_folds)
    baseline: TrialResult | None = None  # the best anchor trial (a baseline or auto) compared with it
    lead: float | None = None  # valid AUC of best minus baseline (mean over the seeds both have)
    lead_se: float | None = None  # bootstrap standard error of that difference (paired: same rows)
    seeds: int = 0  # seeds (or folds) the lead is averaged over
    reason: str = "no trial finished"
    ranked_by: str = "validation AUC"  # or "mean AUC over K folds" (choose_by_folds; then `best` is the best by that)

    def record(self) -> dict[str, Any]:
        """What ``best.json`` keeps of the decision."""
        return {
            "rule": self.reason,
            "best_by_valid_auc": None if self.best is None else self.best.trial,
            "ranked_by": self.ranked_by,
            "baseline": None if self.baseline is None else self.baseline.trial,
            "lead": self.lead,
            "lead_se": self.lead_se,
            "seeds": self.seeds,
        }


def leaders(results: list[TrialResult]) -> tuple[TrialResult | None, TrialResult | None]:
    """The best finished trial by validation AUC and the best anchor trial (``ANCHORS``; either None)."""
    return best_trial(results), best_trial([r for r in results if r.method in ANCHORS])


def choose(results: list[TrialResult], scores: Scores, margin: float = 1.0, seed: int = 0) -> Pick:
    """The pick among ``results`` (see the module docstring); ``scores(trial)`` gives a finished
    trial's validation labels and probabilities at each of its seeds (in seed order; ``[]``: none,
    then no test is made and the best stands). Raises when the two trials scored different
    validation rows."""
    best, baseline = leaders(results)
    if best is None:
        return Pick(None)
    if baseline is None or baseline is best:
        why = f"the best by validation AUC is an anchor ({best.method})" if baseline is best else "no baseline or auto trial finished"
        return Pick(best, best, baseline, reason=why)
    a, b = scores(best), scores(baseline)
    seeds = min(len(a), len(b))
    if not seeds or margin <= 0:
        lead = best.metrics["valid_auc"] - baseline.metrics["valid_auc"]
        why = "margin 0: the best by validation AUC" if margin <= 0 else "no validation scores to compare: the best by validation AUC"
        return Pick(best, best, baseline, lead, reason=why)
    return _verdict(best, baseline, a[:seeds], b[:seeds], margin, seed)


def method_leaders(results: list[TrialResult]) -> list[TrialResult]:
    """Each method's best finished trial by validation AUC, or where ASHA stopped all of its trials
    the one with the best last reported validation AUC (what ``choose_by_folds`` retrains and ranks:
    a slow starter stopped early gets its full run on the folds)."""
    out = []
    for method in dict.fromkeys(r.method for r in results):
        mine = [r for r in results if r.method == method]
        stopped = [r for r in mine if r.status == "stopped" and r.last_valid_auc is not None]
        best = best_trial(mine) or max(stopped, key=lambda r: r.last_valid_auc or 0.0, default=None)
        if best is not None:
            out.append(best)
    return out


def choose_by_folds(candidates: list[TrialResult], scores: Scores, margin: float = 2.0, seed: int = 0, per_fold: int = 1) -> Pick:
    """The pick among ``candidates`` (one per method, ``method_leaders``) retrained on the folds of a
    cross-validation: ranked by mean AUC over the folds (ties: fewer bytes); the best is kept when
    its paired lead over the best baseline, over all folds, exceeds ``margin`` standard errors.
    ``scores(trial)`` gives a candidate's (labels, probabilities) per run, fold by fold, ``per_fold``
    runs (seeds) on each; a candidate missing any run is left out."""
    fold_scores = {r.trial: scores(r) for r in candidates}
    runs = max((len(v) for v in fold_scores.values()), default=0)
    done = [r for r in candidates if runs and len(fold_scores[r.trial]) == runs]
    mean = {r.trial: float(np.mean([auc(y, p) for y, p in fold_scores[r.trial]])) for r in done}

    def rank(rs: list[TrialResult]) -> TrialResult | None:
        return max(rs, key=lambda r: (mean[r.trial], -r.metrics.get("embedding_bytes", 0)), default=None)

    best, baseline = rank(done), rank([r for r in done if r.method in ANCHORS])
    ranked = f"mean AUC over {runs // per_fold} folds" + (f" x {per_fold} seeds" if per_fold > 1 else "")
    if best is None:
        return choose(candidates, lambda r: [], margin, seed)  # no fold finished: the best by validation AUC
    if baseline is None or baseline is best:
        why = f"the best over the folds is an anchor ({best.method})" if baseline is best else "no baseline or auto trial finished"
        return Pick(best, best, baseline, seeds=runs, reason=why, ranked_by=ranked)
    if margin <= 0:
        return Pick(
            best, best, baseline, mean[best.trial] - mean[baseline.trial], seeds=runs, reason="margin 0: the best over the folds", ranked_by=ranked
        )
    verdict = _verdict(best, baseline, fold_scores[best.trial], fold_scores[baseline.trial], margin, seed, per_fold)
    return replace(verdict, ranked_by=ranked)


def _verdict(best: TrialResult, baseline: TrialResult, a: list, b: list, margin: float, seed: int, per_fold: int | None = None) -> Pick:
    """Keep ``best`` when its paired lead over ``baseline`` (replicates ``a``, ``b``: seeds on one
    validation split, or with ``per_fold`` runs on each fold of a cross-validation) exceeds
    ``margin`` standard errors."""
    rows = None if per_fold is None else [i // per_fold for i in range(len(a))]
    lead, se = paired_lead(a, b, RESAMPLES, seed, (best.trial, baseline.trial), rows=rows)
    n = len(a)
    if per_fold is None:
        over = f"over {n} seed{'s' if n > 1 else ''}"
    else:
        over = f"over {n // per_fold} folds" + (f" x {per_fold} seeds" if per_fold > 1 else "")
    if lead > margin * se:
        reason = f"lead {lead:+.4f} over {baseline.method} {over} exceeds {margin:g} standard error ({se:.4f})"
        return Pick(best, best, baseline, lead, se, n, reason)
    reason = f"lead {lead:+.4f} of {best.method} {over} within {margin:g} standard error ({se:.4f}): the {baseline.method} trial"
    return Pick(baseline, best, baseline, lead, se, n, reason)
