"""The search's ASHA keeps the baselines' default trials running; every other trial is judged as by plain ASHA."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from recsys.training.tune.asha import KeepBaselinesASHA, kept_trials
from recsys.training.tune.space import TrialSpec


@dataclass
class FakeTrial:
    """What the scheduler reads of a Ray trial: its id and config."""

    trial_id: str
    config: dict = field(default_factory=dict)


def _feed(scheduler: ASHAScheduler, trials: list[FakeTrial], auc: dict[str, float], iteration: int) -> dict[str, str]:
    return {t.trial_id: scheduler.on_trial_result(None, t, {"training_iteration": iteration, "valid_auc": auc[t.trial_id]}) for t in trials}


def test_kept_trials_are_each_anchors_first_planned_trial() -> None:
    specs = [TrialSpec(0, "hash", {}), TrialSpec(1, "qr", {}), TrialSpec(2, "unified", {}), TrialSpec(3, "hash", {"training.sparse_lr": 0.1})]
    assert kept_trials(specs) == {specs[0].name, specs[1].name}
    with_auto = [*specs, TrialSpec(4, "auto", {}), TrialSpec(5, "auto", {"training.sparse_lr": 0.1})]
    assert kept_trials(with_auto) == {specs[0].name, specs[1].name, with_auto[4].name}, "auto's default trial is an anchor too"
    assert kept_trials([TrialSpec(0, "unified", {})]) == set()


def test_a_trailing_baseline_default_runs_on_where_plain_asha_stops_it() -> None:
    leader, base, other = FakeTrial("a", {"trial": "t001_unified"}), FakeTrial("b", {"trial": "t000_hash"}), FakeTrial("c", {"trial": "t002_hash"})
    auc = {"a": 0.70, "b": 0.60, "c": 0.59}
    plain = ASHAScheduler(time_attr="training_iteration", metric="valid_auc", mode="max", max_t=5, grace_period=1, reduction_factor=2)
    keep = KeepBaselinesASHA({"t000_hash"}, max_t=5, grace_period=1)
    keep.set_search_properties("valid_auc", "max")
    for scheduler in (plain, keep):
        for t in (leader, base, other):
            scheduler.on_trial_add(None, t)
        assert _feed(scheduler, [leader], auc, 1)[leader.trial_id] == TrialScheduler.CONTINUE
    assert _feed(plain, [base, other], auc, 1) == {"b": TrialScheduler.STOP, "c": TrialScheduler.STOP}
    assert _feed(keep, [base, other], auc, 1) == {"b": TrialScheduler.CONTINUE, "c": TrialScheduler.STOP}
    assert _feed(keep, [base], auc, 5) == {"b": TrialScheduler.STOP}, "at max_t a kept trial ends like any other"
