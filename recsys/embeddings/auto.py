"""``auto``: a configuration chosen from the budget and the dataset's statistics, never below the baselines measured.

The rule (``choose``), from what ``docs/results/robustness.md`` measured (every dataset there,
10× and 100×; hybrid and qr at 10×, unified where qr cannot fit):

1. no budget, or one at least the ``full`` tables' bytes: ``full``;
2. ``qr`` fits and the train value counts are known: ``hybrid`` when the train split has at
   least ``ROWS_PER_ROW`` rows per budget row (``budget / (D·4)``) and hybrid's hot rows at this
   budget would serve at least ``HOT_MASS`` of the train lookups, else ``qr``; no counts: ``qr``.
   Measured: hybrid won on 64k train rows at 145 rows per row (+0.007 over qr) and lost on the
   8k-row real samples at 2-8 rows per row, where its shared tail is trained too little;
3. ``qr`` cannot fit (its smallest tables are about ``2√card`` rows per field, so past ~30-50×
   on small vocabularies): ``unified`` (several probes per value; far above ``hash`` there;
   it fits wherever ``hash`` does).

The chosen method is built as ``self.chosen`` and does all the work: every hook is its, and
``export`` is its export (the artifact names the chosen method, so serving needs no ``auto``).
The choice and its statistics are in ``diagnostics()`` and printed by ``recsys train``.

Example:
    >>> method = build_method("auto", ctx.with_budget(compression=10))  # doctest: +SKIP
    >>> method.choice.method, method.choice.reason                      # doctest: +SKIP
    ('hybrid', "qr fits; 145 train rows per budget row and hybrid's hot rows serve 0.74 of the train lookups")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import (
    BYTES_PER_WEIGHT,
    EmbeddingMethod,
    ExportedMethod,
    IdScheme,
    MethodContext,
    MethodOptions,
    Optimizers,
    Phase,
)
from recsys.embeddings.hybrid import RESERVED, HybridEmbedding, train_rows
from recsys.embeddings.registry import build_method, register_method

HOT_MASS = 0.5  # hybrid when its hot rows serve at least this share of the train lookups ...
ROWS_PER_ROW = 40  # ... and the train split has at least this many rows per row of the budget


@dataclass(frozen=True)
class Choice:
    """What ``auto`` picked, why, and the statistics it read."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    stats: dict[str, float] = field(default_factory=dict)


def _fits(name: str, ctx: MethodContext) -> bool:
    try:
        build_method(name, ctx)
    except ValueError:
        return False
    return True


def hot_mass(ctx: MethodContext) -> float | None:
    """Share of the train lookups that ``hybrid``'s hot rows would serve at ``ctx``'s budget
    (None without value counts)."""
    counts = ctx.value_counts
    if counts is None or any(counts.get(f.name) is None for f in ctx.features):
        return None
    hybrid = HybridEmbedding(ctx, HybridEmbedding.Options())
    total = hot = 0.0
    for f in ctx.features:
        c = np.asarray(counts[f.name], np.float64)
        total += float(c.sum())
        hot += float(c[: max(hybrid.hot_rows[f.name] - RESERVED, 0)].sum())
    return hot / total if total else None


def choose(ctx: MethodContext) -> Choice:
    """The configuration ``auto`` trains for this context (see the module docstring)."""
    budget = ctx.budget_bytes
    stats: dict[str, float] = {"full_bytes": ctx.full_bytes, "vocabulary_rows": sum(f.cardinality for f in ctx.features)}
    if budget is None or budget >= ctx.full_bytes:
        return Choice("full", reason="the budget holds the full tables", stats=stats)
    stats["compression"] = ctx.full_bytes / budget
    if _fits("qr", ctx):
        mass, rows = hot_mass(ctx), train_rows(ctx)
        if mass is None or rows is None:
            return Choice("qr", reason="qr fits; no value counts to size hot rows", stats=stats)
        per_row = rows / max(budget // (ctx.embedding_dim * BYTES_PER_WEIGHT), 1)
        stats.update(hot_mass=mass, train_rows=rows, rows_per_row=per_row)
        if per_row < ROWS_PER_ROW:
            return Choice("qr", reason=f"qr fits; only {per_row:.1f} train rows per budget row (< {ROWS_PER_ROW}) for hybrid's tail", stats=stats)
        if mass < HOT_MASS:
            return Choice("qr", reason=f"qr fits; hybrid's hot rows would serve only {mass:.2f} of the train lookups (< {HOT_MASS})", stats=stats)
        return Choice(
            "hybrid",
            reason=f"qr fits; {per_row:.0f} train rows per budget row and hybrid's hot rows serve {mass:.2f} of the train lookups",
            stats=stats,
        )
    # unified fits wherever hash does (one row of chunk_dim per sub-table against one D-wide row per feature)
    return Choice("unified", reason="qr cannot fit the budget; unified's probes share the rows", stats=stats)


class AutoOptions(MethodOptions):
    """``auto`` has no options: everything comes from the budget and the dataset."""


@register_method
class AutoEmbedding(EmbeddingMethod):
    """A configuration chosen from the budget and the train value counts: ``full`` without a budget; where ``qr``
    fits, ``hybrid`` when the train split has 40+ rows per budget row and its hot rows would serve at least half of the
    train lookups, else ``qr``; where ``qr`` cannot fit, ``unified`` (``recsys.embeddings.auto.choose``; measured in
    docs/results/robustness.md). The chosen method is ``chosen`` and does all the work; the run prints the choice and
    records it in ``metrics.json`` (``method_choice``) and ``diagnostics.json``; the exported artifact names the chosen
    method. Its ids are the chosen method's, known once built (``id_scheme_for`` answers ``index``)."""

    name: ClassVar[str] = "auto"
    Options: ClassVar[type[MethodOptions]] = AutoOptions
    uses_value_counts: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        with torch.random.fork_rng():  # the trial builds draw no numbers: the chosen method starts as it would alone
            self.choice = choose(ctx)
        self.chosen = build_method(self.choice.method, ctx, self.choice.options)

    @property
    def id_scheme(self) -> IdScheme:
        return self.chosen.id_scheme

    @property
    def ebc(self) -> nn.Module:  # type: ignore[override]
        return self.chosen.ebc

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.chosen(features)

    def prepare(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return self.chosen.prepare(features)

    def memory_bytes(self) -> int:
        return self.chosen.memory_bytes()

    def output_dims(self) -> dict[str, int]:
        return self.chosen.output_dims()

    def shares_rows_across_features(self) -> bool:
        return self.chosen.shares_rows_across_features()

    def aux_loss(self) -> torch.Tensor | None:
        return self.chosen.aux_loss()

    def separate_optimizers(self) -> Optimizers:
        return self.chosen.separate_optimizers()

    def reports_collisions(self) -> bool:
        return self.chosen.reports_collisions()

    def collision_stats(self, vocab_ids: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.chosen.collision_stats(vocab_ids)

    def on_train_begin(self, total_steps: int) -> None:
        self.chosen.on_train_begin(total_steps)

    def on_train_step(self, step: int) -> None:
        self.chosen.on_train_step(step)

    def on_train_resume(self, steps: int) -> None:
        self.chosen.on_train_resume(steps)

    def servable(self) -> bool:
        return self.chosen.servable()

    def phases(self) -> list[Phase]:
        return self.chosen.phases()

    def enter_phase(self, phase: Phase) -> None:
        self.chosen.enter_phase(phase)

    def phase_state(self) -> dict[str, torch.Tensor]:
        return self.chosen.phase_state()

    def load_phase_state(self, state: dict[str, torch.Tensor]) -> None:
        self.chosen.load_phase_state(state)

    def search(self, evaluate: Callable[[], float]) -> dict[str, Any]:
        return self.chosen.search(evaluate)

    def diagnostics(self) -> dict[str, Any]:
        return {"auto": asdict(self.choice), **self.chosen.diagnostics()}

    def export(self) -> ExportedMethod:
        """The chosen method's served form (the artifact names it, not ``auto``)."""
        return self.chosen.export()
