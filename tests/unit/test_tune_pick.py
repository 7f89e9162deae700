"""``recsys tune``'s pick: the best trial by validation AUC only when its paired lead over the best
baseline exceeds the bootstrap noise of that lead, else the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.metrics import auc
from recsys.training.bench.bootstrap import paired_lead
from recsys.training.tune.pick import choose, choose_by_folds, method_leaders
from recsys.training.tune.report import TrialResult

N = 2000
RNG = np.random.default_rng(0)
LABELS = (RNG.random(N) < 0.3).astype(np.float64)
SIGNAL = LABELS + RNG.normal(0, 1.2, N)  # what every trial's scores share


def trial(name: str, method: str, scores: np.ndarray, status: str = "ok") -> tuple[TrialResult, np.ndarray]:
    return TrialResult(name, method, {}, status=status, metrics={"valid_auc": auc(LABELS, scores)}), scores


def pick(trials: list[tuple[TrialResult, np.ndarray]], margin: float = 1.0):
    scores = {r.trial: s for r, s in trials}
    return choose([r for r, _ in trials], lambda r: [(LABELS, scores[r.trial])], margin)


def test_a_lead_within_noise_keeps_the_baseline() -> None:
    low = SIGNAL + RNG.normal(0, 0.3, N)  # the same model twice, the second draw just ahead: its lead is noise
    high = next(s for s in (SIGNAL + RNG.normal(0, 0.3, N) for _ in range(200)) if 0 < auc(LABELS, s) - auc(LABELS, low) < 0.002)
    hash_, qr, unified = trial("t0_hash", "hash", SIGNAL + RNG.normal(0, 2.0, N)), trial("t1_qr", "qr", low), trial("t2_unified", "unified", high)
    results = [hash_, qr, unified]
    leader = unified[0]
    p = pick(results)
    assert p.best is leader and p.baseline is qr[0], "compared with the best baseline, not hash"
    assert p.trial is qr[0], p.reason
    assert 0 < p.lead <= p.lead_se and "within 1 standard error" in p.reason
    assert pick(results, margin=0).trial is leader, "margin 0: the best by validation AUC"


def test_a_clear_lead_keeps_the_best() -> None:
    qr = trial("t1_qr", "qr", SIGNAL + RNG.normal(0, 1.5, N))
    hybrid = trial("t2_hybrid", "hybrid", SIGNAL)
    p = pick([qr, hybrid])
    assert p.trial is hybrid[0] and p.lead > 3 * p.lead_se, p.reason
    assert p.record() == {
        "rule": p.reason,
        "best_by_valid_auc": "t2_hybrid",
        "baseline": "t1_qr",
        "lead": p.lead,
        "lead_se": p.lead_se,
        "seeds": 1,
        "ranked_by": "validation AUC",
    }


def test_the_margin_is_in_standard_errors() -> None:
    qr = trial("t1_qr", "qr", SIGNAL + RNG.normal(0, 0.9, N))
    dsl = trial("t2_dsl", "dsl", SIGNAL + RNG.normal(0, 0.6, N))
    p = pick([qr, dsl], margin=1.0)
    ratio = p.lead / p.lead_se
    assert ratio > 0
    assert pick([qr, dsl], margin=ratio * 0.9).trial is dsl[0]
    assert pick([qr, dsl], margin=ratio * 1.1).trial is qr[0]


def test_no_baseline_or_no_scores_or_a_baseline_best() -> None:
    good, weak = SIGNAL, SIGNAL + RNG.normal(0, 2.0, N)
    only = [trial("t0_unified", "unified", good), trial("t1_dsl", "dsl", weak)]
    assert pick(only).trial is only[0][0] and pick(only).reason == "no baseline or auto trial finished"
    stopped = [trial("t0_qr", "qr", good, status="stopped"), trial("t1_dsl", "dsl", weak)]
    assert pick(stopped).trial is stopped[1][0], "a stopped trial is no pick and no baseline"
    base_best = [trial("t0_qr", "qr", good), trial("t1_dsl", "dsl", weak)]
    assert pick(base_best).trial is base_best[0][0] and pick(base_best).lead is None
    close = [trial("t0_qr", "qr", weak), trial("t1_dsl", "dsl", good)]
    no_scores = choose([r for r, _ in close], lambda r: [])
    assert no_scores.trial is close[1][0] and no_scores.reason.startswith("no validation scores")
    assert choose([], lambda r: []).trial is None


def test_different_validation_rows_are_refused() -> None:
    qr, dsl = trial("t0_qr", "qr", SIGNAL + RNG.normal(0, 2.0, N)), trial("t1_dsl", "dsl", SIGNAL)
    rows = {"t0_qr": [(LABELS, qr[1])], "t1_dsl": [(LABELS[::-1].copy(), dsl[1])]}
    with pytest.raises(ValueError, match="t1_dsl and t0_qr scored different validation rows"):
        choose([qr[0], dsl[0]], lambda r: rows[r.trial])


def test_a_lead_at_one_seed_that_a_fresh_seed_undoes_keeps_the_baseline() -> None:
    qr0, qr1 = SIGNAL + RNG.normal(0, 0.8, N), SIGNAL + RNG.normal(0, 0.8, N)
    lucky, unlucky = SIGNAL + RNG.normal(0, 0.4, N), SIGNAL + RNG.normal(0, 1.4, N)  # the same config, two training seeds
    qr, unified = trial("t0_qr", "qr", qr0), trial("t1_unified", "unified", lucky)
    one = pick([qr, unified])
    assert one.trial is unified[0] and one.seeds == 1, "at its search seed the lead is clear"
    seeds = {"t0_qr": [(LABELS, qr0), (LABELS, qr1)], "t1_unified": [(LABELS, lucky), (LABELS, unlucky)]}
    two = choose([qr[0], unified[0]], lambda r: seeds[r.trial])
    expect = np.mean([auc(LABELS, lucky) - auc(LABELS, qr0), auc(LABELS, unlucky) - auc(LABELS, qr1)])
    assert two.seeds == 2 and two.lead == pytest.approx(expect) and "over 2 seeds" in two.reason
    assert (two.trial is qr[0]) == (two.lead <= two.lead_se), two.reason
    assert two.trial is qr[0], "the mean over both seeds is no lead"
    uneven = {"t0_qr": [(LABELS, qr0)], "t1_unified": [(LABELS, lucky), (LABELS, unlucky)]}
    assert choose([qr[0], unified[0]], lambda r: uneven[r.trial]).seeds == 1, "only the seeds both have"


def _folds(k: int, n: int, noise: dict[str, float], seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Each method's (labels, scores) on k held-out folds of n rows (other rows per fold)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in noise}
    for _ in range(k):
        y = (rng.random(n) < 0.3).astype(np.float64)
        signal = y + rng.normal(0, 1.2, n)
        for m, sd in noise.items():
            out[m].append((y, signal + rng.normal(0, sd, n)))
    return out


def test_folds_average_the_paired_lead_and_shrink_its_error() -> None:
    scores = _folds(5, 600, {"qr": 0.9, "dsl": 0.7}, seed=1)
    lead, se = paired_lead(scores["dsl"], scores["qr"], rows=list(range(5)))
    assert lead == pytest.approx(np.mean([auc(y, p) - auc(y, q) for (y, p), (_, q) in zip(scores["dsl"], scores["qr"])]))
    _, one = paired_lead(scores["dsl"][:1], scores["qr"][:1])
    assert se < 0.7 * one, "five folds of rows: a smaller standard error than one fold's"
    with pytest.raises(ValueError, match="scored different validation rows"):
        paired_lead(scores["dsl"], scores["qr"]), "folds are not one validation split"
    with pytest.raises(ValueError, match="x and y scored different"):
        paired_lead(scores["dsl"], scores["qr"][::-1], names=("x", "y"), rows=list(range(5)))


def test_choose_by_folds_ranks_by_the_fold_mean_and_keeps_the_margin() -> None:
    results = {
        "t0_hash": TrialResult("t0_hash", "hash", {}, "ok", {"valid_auc": 0.60}),
        "t1_qr": TrialResult("t1_qr", "qr", {}, "ok", {"valid_auc": 0.75}),
        "t2_dsl": TrialResult("t2_dsl", "dsl", {}, "stopped", last_valid_auc=0.70),
        "t3_dsl": TrialResult("t3_dsl", "dsl", {}, "stopped", last_valid_auc=0.65),
        "t4_unified": TrialResult("t4_unified", "unified", {}, "ok", {"valid_auc": 0.76}),
    }
    leaders = method_leaders(list(results.values()))
    assert [r.trial for r in leaders] == ["t0_hash", "t1_qr", "t2_dsl", "t4_unified"], "a method ASHA stopped is its best stopped trial"
    clear = _folds(4, 800, {"t0_hash": 2.0, "t1_qr": 1.0, "t2_dsl": 0.3, "t4_unified": 1.0}, seed=2)
    p = choose_by_folds(leaders, lambda r: clear[r.trial])
    assert p.trial is results["t2_dsl"] and p.baseline is results["t1_qr"] and p.seeds == 4, p.reason
    assert "over 4 folds exceeds 2 standard error" in p.reason and p.record()["ranked_by"] == "mean AUC over 4 folds"
    close = _folds(4, 800, {"t0_hash": 2.0, "t1_qr": 0.8, "t2_dsl": 0.8, "t4_unified": 0.78}, seed=3)  # unified just ahead
    p = choose_by_folds(leaders, lambda r: close[r.trial])
    assert p.best.trial == max(leaders, key=lambda r: np.mean([auc(y, s) for y, s in close[r.trial]])).trial
    assert p.best is results["t4_unified"] and p.trial is results["t1_qr"] and "within 2 standard error" in p.reason, "equal models: the baseline"
    missing = {**clear, "t2_dsl": clear["t2_dsl"][:3]}
    p = choose_by_folds(leaders, lambda r: missing[r.trial])
    assert p.best is not results["t2_dsl"] and p.seeds == 4, "a candidate missing a fold is left out"


def test_folds_at_several_seeds_pair_each_run_with_its_fold() -> None:
    one, rng = _folds(3, 700, {"t1_qr": 2.0, "t2_dsl": 0.3}, seed=7), np.random.default_rng(8)
    again = {m: [(y, s + rng.normal(0, 0.3, len(y))) for y, s in one[m]] for m in one}  # a second training seed: the same rows
    runs = {m: [x for i in range(3) for x in (one[m][i], again[m][i])] for m in one}  # fold by fold, 2 runs each
    qr, dsl = TrialResult("t1_qr", "qr", {}, "ok", {"valid_auc": 0.7}), TrialResult("t2_dsl", "dsl", {}, "ok", {"valid_auc": 0.8})
    p = choose_by_folds([qr, dsl], lambda r: runs[r.trial], per_fold=2)
    assert p.trial is dsl and p.seeds == 6 and "over 3 folds x 2 seeds" in p.reason and p.record()["ranked_by"] == "mean AUC over 3 folds x 2 seeds"
    with pytest.raises(ValueError, match="scored different validation rows"):
        choose_by_folds([qr, dsl], lambda r: runs[r.trial], per_fold=3), "runs are paired with the fold they were scored on"


def test_auto_is_an_anchor_a_compressed_method_must_beat_beyond_noise() -> None:
    """The untuned default (an ``auto`` trial) is compared with like the baselines: a method whose lead over it
    is noise is not picked, even when it leads every baseline clearly; a clear lead over auto is kept."""
    names = {"t0_hash": "hash", "t1_qr": "qr", "t2_auto": "auto", "t3_uo": "unified+optembed"}
    results = [TrialResult(t, m, {}, "ok", {"valid_auc": 0.7}) for t, m in names.items()]

    def mean(folds: dict, t: str) -> float:
        return float(np.mean([auc(y, s) for y, s in folds[t]]))

    draws = (_folds(5, 800, {"t0_hash": 2.0, "t1_qr": 1.5, "t2_auto": 0.6, "t3_uo": 0.6}, seed=s) for s in range(11, 100))
    close = next(f for f in draws if 0 < mean(f, "t3_uo") - mean(f, "t2_auto") < 0.002)  # the same model twice, one just ahead
    assert mean(close, "t3_uo") - mean(close, "t1_qr") > 0.02, "far ahead of the best baseline"
    p = choose_by_folds(results, lambda r: close[r.trial])
    assert p.best.trial == "t3_uo" and p.baseline.trial == "t2_auto" and p.trial.trial == "t2_auto", p.reason
    assert "within 2 standard error" in p.reason and "the auto trial" in p.reason
    clear = _folds(5, 800, {"t0_hash": 2.0, "t1_qr": 1.5, "t2_auto": 1.0, "t3_uo": 0.3}, seed=12)
    p = choose_by_folds(results, lambda r: clear[r.trial])
    assert p.trial.trial == "t3_uo" and p.baseline.trial == "t2_auto" and "over auto" in p.reason, p.reason
    best_auto = _folds(5, 800, {"t0_hash": 2.0, "t1_qr": 1.5, "t2_auto": 0.3, "t3_uo": 1.0}, seed=13)
    p = choose_by_folds(results, lambda r: best_auto[r.trial])
    assert p.trial.trial == "t2_auto" and p.reason == "the best over the folds is an anchor (auto)"
