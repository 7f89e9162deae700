"""ASHA that never stops the anchors' default trials (the baselines' and ``auto``'s).

The pick (``recsys.training.tune.pick``) compares the best trial with the best finished anchor
trial (``hash``, ``qr``, ``auto``: ``ANCHORS``). Plain ASHA may stop every anchor trial after its
grace period when a slower method's trial reached the rung first (trials in parallel finish epochs
in any order): the search then has no anchor to compare with and keeps the best by validation AUC,
the noise the rule is there to catch. So each anchor's first trial in the plan (its defaults)
always runs to the end; its results still fill the rungs the other trials are judged on.

Example:
    >>> from recsys.training.tune.space import TrialSpec
    >>> specs = [TrialSpec(0, "hash", {}), TrialSpec(1, "unified", {}), TrialSpec(2, "hash", {"x": 1})]
    >>> kept_trials(specs) == {specs[0].name}
    True
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from recsys.training.tune.pick import ANCHORS
from recsys.training.tune.space import TrialSpec


def kept_trials(specs: list[TrialSpec]) -> set[str]:
    """Names of the trials ASHA must not stop: each anchor method's (baselines, ``auto``) first planned trial."""
    first: dict[str, str] = {}
    for spec in specs:
        first.setdefault(spec.method, spec.name)
    return {first[m] for m in ANCHORS if m in first}


class KeepBaselinesASHA(ASHAScheduler):
    """``ASHAScheduler`` over ``training_iteration`` whose decision is ignored for the trials named
    in ``keep`` (their ``config["trial"]``) until they end on their own."""

    def __init__(self, keep: set[str], max_t: int, grace_period: int, reduction_factor: float = 2) -> None:
        super().__init__(time_attr="training_iteration", max_t=max_t, grace_period=grace_period, reduction_factor=reduction_factor)
        self.keep, self.max_t = set(keep), max_t

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and trial.config.get("trial") in self.keep and result.get("training_iteration", 0) < self.max_t:
            return TrialScheduler.CONTINUE
        return decision
