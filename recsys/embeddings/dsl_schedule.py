"""When DSL changes its masks, derived from the optimizer steps a run plans (epochs × steps per epoch).

Steps are counted as steps taken (1 after the first optimizer step). With ``T`` planned steps:

* ``every`` (ΔT): ``update_every`` when given, else ``max(1, round(T / updates))``, so a short
  run gets as many updates as a long one (a 50k-row set at batch 1024 plans a few hundred steps;
  a fixed ΔT of 100 gave it three or four updates).
* Ramp (gradual magnitude pruning, Zhu & Gupta 2017): training starts dense and every update
  up to ``ramp_end = ceil(ramp · T)`` prunes the smallest weights down to
  ``d_t = d + (1 − d)(1 − t / ramp_end)³``; step ``ramp_end`` is always an update and reaches
  the target ``d`` exactly, so the run holds its served density from a fraction of the planned
  steps on, whenever early stopping ends it. ``ramp = 0``: the paper's start, a random mask at
  the target density from step 0.
* Prune/regrow at the target density (the DSL update) at every ΔT in ``(ramp_end, freeze_at]``,
  ``freeze_at = floor(freeze · T)``, with ζ cosine-decayed from ζ₀ to ζ_min over that window;
  after ``freeze_at`` the masks are fixed and the weights fine-tune under them.
* ``ready(t)``: the masks are at the target density (``t ≥ ramp_end``); the trainer keeps only
  checkpoints taken then, so the best-validation checkpoint is always in the served form.

Example:
    >>> s = Schedule.plan(total=620, update_every=None, updates=40, ramp=0.3, freeze=0.8)
    >>> s.every, s.ramp_end, s.freeze_at
    (16, 186, 496)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recsys.embeddings.sparse_ops import update_ratio


@dataclass(frozen=True)
class Schedule:
    """DSL's update steps, ramp and freeze for one fit of ``total`` planned steps."""

    total: int  # T, the planned optimizer steps
    every: int  # ΔT
    ramp_end: int  # steps taken when the target density is reached (0: from the start)
    freeze_at: int  # no mask changes after this many steps

    @classmethod
    def plan(cls, total: int, update_every: int | None, updates: int, ramp: float, freeze: float) -> Schedule:
        """The schedule of a fit of ``total`` steps (see the module docstring)."""
        if total < 1:
            raise ValueError(f"dsl: a fit must plan at least one step, got {total}")
        if not 0 <= ramp <= freeze <= 1:
            raise ValueError(f"dsl: need 0 <= ramp <= freeze <= 1, got ramp={ramp}, freeze={freeze}")
        every = update_every or max(1, round(total / max(updates, 1)))
        ramp_end = math.ceil(ramp * total)
        return cls(total, every, ramp_end, max(ramp_end, math.floor(freeze * total)))

    def ready(self, taken: int) -> bool:
        """Whether the masks are at the target density after ``taken`` steps."""
        return taken >= self.ramp_end

    def is_update(self, taken: int) -> bool:
        """Whether the masks change after step ``taken`` (1-based)."""
        if taken < 1 or taken > self.freeze_at:
            return False
        return taken % self.every == 0 or taken == self.ramp_end

    def in_ramp(self, taken: int) -> bool:
        return taken <= self.ramp_end

    def density(self, taken: int, target: float) -> float:
        """The ramp's density after ``taken`` steps: 1 at the start, ``target`` from ``ramp_end`` on."""
        if taken >= self.ramp_end:
            return target
        return target + (1.0 - target) * (1.0 - taken / self.ramp_end) ** 3

    def zeta(self, taken: int, zeta0: float, zeta_min: float) -> float:
        """ζ of a prune/regrow update after ``taken`` steps: cosine from ζ₀ at the ramp's end to ζ_min at the freeze."""
        return update_ratio(taken - self.ramp_end, max(self.freeze_at - self.ramp_end, 1), zeta0, zeta_min)
