"""``optembed``: learnable row pruning, supernet dimension search and retraining (Lyu et al., CIKM 2022).

Wraps a base method (``base``: ``full`` or ``unified``) and runs three phases (``phases``):

* ``supernet`` (train): each pooled row ``e`` of field ``f`` is multiplied by ``S(‖e‖₁ − t_f)``
  (``surrogate.binary_step``) and, in training only, by a prefix mask of ``k ~ U{1..D}`` ones
  per (sample, field); ``aux_loss = α·Σ_f exp(−t_f)``. Thresholds (init 0) have their own
  plain SGD (``threshold_lr``, no weight decay; ``shard()`` reads ``separate_optimizers()``).
  At the end the masks ``‖row‖₁ > t_f`` are read from the live tables into ``phase_state``.
* ``search`` (search): the supernet frozen, row masks fixed, an evolutionary search
  (``optembed_search``) picks per-field dims by validation AUC within the budget, if any.
* ``retrain`` (train): row masks and dims fixed; weights rewound to the initial ones
  (``retrain_weights='initial'``, the paper) or inherited (``'inherit'``, Hetu's variant).

Rows are the rows of the base's tables (``optembed_layout``). With masks fixed, a pre-hook on
the base's EBC drops pruned ids from the table input (a single-valued ``full`` field then
pools to zeros, the authors' ``zero`` mode; a MEAN bag averages its kept ids) and columns
past ``d_f`` are zeroed: outputs keep the base's widths. Multi-valued features: the supernet's
mask is applied to the pooled bag (its norm, not each row's: an approximation); from the
search on, masking is exact per row.

On ``unified`` (shared sub-tables of ``chunk_dim``-wide rows, ``c_f`` probes per feature): the
row mask applies per chunk row, ``S(‖chunk‖₁ − t_f)`` with the field's threshold; a shared row
is kept when ``‖row‖₁ > min_f t_f`` over the fields probing its sub-table (kept for one field,
kept for all); ``d_f`` is a column prefix of the concatenated chunks, so ``d_f = k·chunk_dim``
keeps ``k`` chunks; a sub-table stores the most columns any of its probes reads (all, for a
sub-table shared by every field; a table no field reads is dropped).

Accounting: ``Σ_t rows_t × stored columns_t × 4`` (all rows until the masks are fixed, kept
rows after) plus a rank bitmap per pruned table; for ``full``: ``Σ_f kept_f·d_f·4`` + bitmaps.
With a budget and no search yet, ``d_f`` is the largest common dim that fits (evaluation uses
it); the search only evaluates candidates within it, or within ``search_compression`` (which,
unlike the context's budget, may lie beyond what unpruned tables reach at one dimension).

Initialisation (``init_bound``, opt-in): ``‖e‖₁`` says how much a row has learnt only if
untrained rows start near 0. TorchRec draws a table of ``n`` rows from ``U(±1/√n)``, so an
untrained 16-wide row has ``‖e‖₁ ≈ 8/√n``: 1.26 at 40 rows, 0.21 at 1,500, 0.025 at 100k; on
small vocabularies the thresholds (``t_T ≈ 0.15`` after 80 steps, 0.8 after 630) never reach
the initial norm of the rows they should prune (docs/results/robustness.md). ``init_bound: b``
redraws the base's tables from ``U(±b)`` when OptEmbed is built (``1e-3``: ``‖e‖₁ ≈ 0.008`` at
D = 16), so an untrained row of any table sits below every positive threshold. Measured: with
a budget (10×) on the 10k samples and ``small_real`` pruning then works (23-81% of the rows
kept instead of 77-100%; AUC +0.001 / +0.012 / −0.004), but without one on 300k synthetic rows
it kept 2.1% of the rows (against 50%) and lost 0.029 AUC, so the default stays ``null`` (the
base's init). Measuring thresholds from each table's initial norm instead was tried and pruned
the frequent values of tiny fields, whose learnt rows stay below their large initial norm.

Defaults ``α = 1e-3, threshold_lr = 2``: without task gradient ``t`` grows by
``lr_t·α·e^(−t)`` per step, so pruning is set by ``lr_t·α`` × steps. The authors' values
(``α ≤ 1e-4``, ``lr_t ≤ 1e-2``) assume ~10⁵–10⁶ steps and prune nothing here (hundreds of
steps). ``‖e‖₁`` says how much a row has learnt only if a row moves in proportion to its
gradients: the authors' dense Adam with L2 shrinks rows the data does not hold up; here the
trainer's ``sparse_eps`` (1e-3) does it for row-wise Adagrad (with fbgemm's 1e-8 a value seen
once moves a whole ``sparse_lr`` step, as far as a frequent one, and the thresholds cannot
tell them apart). On synthetic ``criteo`` (1M rows, 3 epochs, rows only) the defaults keep 5% of
the bytes (``min_count`` 50) and 0.4% (no ``min_count``), both above ``full`` in AUC.

Example:
    >>> method = build_method("optembed", ctx, {"alpha": 1e-3})  # doctest: +SKIP
    >>> [p.name for p in method.phases()]                        # doctest: +SKIP
    ['supernet', 'search', 'retrain']
"""

from __future__ import annotations

import time
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
from pydantic import Field, field_validator
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import EmbeddingMethod, ExportedMethod, MethodContext, MethodOptions, Optimizers, Phase
from recsys.embeddings.full import empty_output
from recsys.embeddings.optembed_export import compact_lookup, compact_tables, table_row_norms, table_weights
from recsys.embeddings.optembed_layout import TableLayout, drop_pruned
from recsys.embeddings.optembed_search import EvolutionConfig, SearchSpace, evolve
from recsys.embeddings.registry import register_method
from recsys.embeddings.surrogate import binary_step, random_prefix_lengths
from recsys.embeddings.wrapped import WrappedMethod, WrapperOptions

PhaseName = Literal["supernet", "search", "retrain"]
PHASE_ORDER: tuple[PhaseName, ...] = ("supernet", "search", "retrain")


class OptEmbedOptions(WrapperOptions):
    """Options of ``optembed`` (``base``: the wrapped method, ``full`` or ``unified``, with its options)."""

    alpha: float = Field(1e-3, ge=0, description="weight of the threshold regulariser α·Σ exp(-t_f)")
    threshold_lr: float = Field(2.0, gt=0, description="plain-SGD learning rate of the thresholds (see the docstring)")
    phases: list[PhaseName] = Field(default_factory=lambda: list(PHASE_ORDER), description="phases to run, in order")
    supernet_epochs: int | None = Field(None, ge=1, description="epochs of the supernet (default: training.epochs)")
    retrain_epochs: int | None = Field(None, ge=1, description="epochs of the retraining (default: training.epochs)")
    retrain_weights: Literal["initial", "inherit"] = Field("initial", description="rewind (paper) or inherit weights")
    eval_rows: int | None = Field(20_000, ge=1, description="validation rows per search evaluation")
    generations: int = Field(30, ge=1)
    parents: int = Field(10, ge=1)
    mutations: int = Field(10, ge=0)
    crossovers: int = Field(10, ge=0)
    mutation_prob: float = Field(0.1, gt=0, le=1)
    seed: int = Field(0, description="seed of the dimension masks and of the search")
    init_bound: float | None = Field(
        None, gt=0, description="the base's tables redrawn from U(±init_bound) when built, so untrained rows start near 0 (e.g. 1e-3)"
    )
    search_compression: float | None = Field(None, ge=1, description="search budget as full bytes / budget (with the context's)")
    search_fill: bool = Field(
        False,
        description="with a search budget: scale every candidate up to about the budget, "
        "so the search shares the budget between fields instead of also shrinking it",
    )

    @field_validator("phases")
    @classmethod
    def _ordered(cls, phases: list[PhaseName]) -> list[PhaseName]:
        if not phases or phases[0] != "supernet" or phases != sorted(set(phases), key=PHASE_ORDER.index):
            raise ValueError(f"phases must start with 'supernet' and follow {list(PHASE_ORDER)}, got {phases}")
        return phases


@register_method
class OptEmbed(WrappedMethod):
    """Row pruning + dimension search around a ``base`` method, built without the budget (see the module docstring)."""

    name: ClassVar[str] = "optembed"
    Options: ClassVar[type[MethodOptions]] = OptEmbedOptions

    def __init__(self, ctx: MethodContext, options: MethodOptions, base: EmbeddingMethod) -> None:
        super().__init__(ctx, options, base)
        assert isinstance(options, OptEmbedOptions)
        self.opts = options
        self.names = ctx.feature_names
        self.widths = [self.base.output_dims()[n] for n in self.names]
        self.layout = TableLayout(self.names, self.widths, self.base.ebc.embedding_bag_configs())
        if options.init_bound is not None:
            with torch.no_grad():
                for table in self.base.ebc.parameters():
                    table.uniform_(-options.init_bound, options.init_bound)
        for key, value in self.layout.columns().items():
            self.register_buffer(key, value, persistent=False)
        table = torch.tril(torch.ones(self.widths[0] + 1, self.widths[0]), -1) if len(set(self.widths)) == 1 else None
        self.register_buffer("prefix_table", table, persistent=False)  # row k: k ones, then zeros
        self.stage: PhaseName = "supernet"
        self.step = 0  # training steps taken: seeds the dimension masks
        self.kept: list[int] | None = None  # kept rows per table once the masks are fixed
        self.threshold = nn.Parameter(torch.zeros(len(self.names), 1))  # [F, 1] like the authors'
        self.register_buffer("row_mask", None, persistent=False)  # flat over tables once fixed
        self.register_buffer("dims", None, persistent=False)
        self.set_dims(self._initial_dims())
        self._hooked: int | None = None

    def _initial_dims(self) -> list[int]:
        """``w_f`` per field, or the largest common dim whose unpruned tables fit the budget."""
        budget = self.ctx.budget_bytes
        if budget is None:
            return list(self.widths)
        fits = [d for d in range(1, min(self.widths) + 1) if self.bytes_at((d,) * len(self.names)) <= budget]
        if not fits:
            raise ValueError(
                f"method 'optembed' needs {self.bytes_at((1,) * len(self.names))} bytes unpruned at one "
                f"dimension per row, over the budget of {budget} bytes; use option 'search_compression'"
            )
        return [fits[-1]] * len(self.names)

    def phases(self) -> list[Phase]:
        o = self.opts
        by_name = {
            "supernet": Phase("supernet", epochs=o.supernet_epochs),
            "search": Phase("search", kind="search", eval_rows=o.eval_rows),
            "retrain": Phase("retrain", weights="initial" if o.retrain_weights == "initial" else "continue", epochs=o.retrain_epochs),
        }
        return [by_name[n] for n in o.phases]

    def enter_phase(self, phase: Phase) -> None:
        self.stage = phase.name  # type: ignore[assignment]
        self.threshold.requires_grad_(self.stage == "supernet")

    def separate_optimizers(self) -> Optimizers:
        """Parameters with their own optimizer: the thresholds, plain SGD without weight decay (and the base's)."""
        if not self.threshold.requires_grad:
            return super().separate_optimizers()
        lr = self.opts.threshold_lr
        return [([self.threshold], lambda params: torch.optim.SGD(params, lr=lr)), *super().separate_optimizers()]

    def table_thresholds(self) -> list[float]:
        """Threshold of each table's rows: the lowest of the fields reading it (a shared row is
        kept when any field would keep it)."""
        t = self.threshold.detach().cpu()[:, 0]
        return [float(t[fs].min()) if fs else float("inf") for fs in self.layout.table_features]

    def row_masks(self) -> dict[str, torch.Tensor]:
        """Per table, which rows are kept: the fixed masks, or ``‖row‖₁ > t`` from the live tables."""
        names = self.layout.tables
        if self.row_mask is not None:
            return dict(zip(names, self.row_mask.cpu().split(self.layout.rows)))
        norms = table_row_norms(self.ebc)
        return {n: norms[n] > t for n, t in zip(names, self.table_thresholds())}

    def set_row_masks(self, masks: dict[str, torch.Tensor]) -> None:
        flat = [masks[n].to(torch.bool).flatten() for n in self.layout.tables]
        self.row_mask = torch.cat(flat).to(self.threshold.device)
        self.kept = [int(m.sum()) for m in flat]

    def set_dims(self, dims: Sequence[int] | torch.Tensor) -> None:
        self.dims = torch.as_tensor(dims, dtype=torch.int64).to(self.threshold.device)
        self.narrow = any(d < w for d, w in zip(self.dims.tolist(), self.widths))

    def phase_state(self) -> dict[str, torch.Tensor]:
        masks = self.row_masks()
        state = {"threshold": self.threshold.detach().cpu().clone(), "dims": self.dims.cpu().clone()}
        return state | {f"row_mask.{n}": m.to(torch.uint8) for n, m in masks.items()}

    @torch.no_grad()
    def load_phase_state(self, state: dict[str, torch.Tensor]) -> None:
        self.threshold.copy_(state["threshold"])
        if self.stage != "supernet":
            self.set_row_masks({n: state[f"row_mask.{n}"] for n in self.layout.tables})
            self.set_dims(state["dims"])

    # ----- forward ------------------------------------------------------------------
    def _drop_pruned(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Forward pre-hook on the base's EBC: drop the ids of pruned rows once masks are fixed."""
        return None if self.row_mask is None else (drop_pruned(args[0], self.row_mask, self.layout.key_start), *args[1:])

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        if features.stride() == 0:
            return empty_output(self, features.values())
        if self._hooked != id(self.base.ebc):  # (re)attach after DMP swaps in a sharded EBC
            self.base.ebc.register_forward_pre_hook(self._drop_pruned)
            self._hooked = id(self.base.ebc)
        x = self.base(features).values()
        if self.row_mask is None:
            x = self._row_masked(x)
        if self.training and self.stage == "supernet":
            seed = self.opts.seed * 1_000_003 + self.step
            x = self._dim_masked(x, random_prefix_lengths((x.shape[0], len(self.names)), torch.tensor(self.widths), seed))
        elif self.narrow:
            x = self._dim_masked(x, self.dims.unsqueeze(0))
        return KeyedTensor(keys=self.names, length_per_key=self.widths, values=x)

    def _row_masked(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each pooled table row multiplied by ``S(‖row‖₁ − t_f)`` of its field."""
        t = self.threshold[self.segment_feature, 0]
        if self.layout.row_width:  # every row equally wide (full; unified without exact tables): a reshape
            rows = x.view(x.shape[0], len(self.layout.segments), self.layout.row_width)
            return (rows * binary_step(rows.abs().sum(-1) - t).unsqueeze(-1)).view_as(x)
        norms = torch.zeros(x.shape[0], len(t), device=x.device).index_add(1, self.col_segment, x.abs())
        return x * binary_step(norms - t)[:, self.col_segment]

    def _dim_masked(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x`` with the columns of field ``f`` past ``keep[:, f]`` zeroed (``keep``: ``[B or 1, F]``)."""
        keep = keep.to(x.device)
        if self.prefix_table is not None:  # every field equally wide: one lookup of prefix masks
            fields = x.view(x.shape[0], len(self.names), self.widths[0])
            return (fields * nn.functional.embedding(keep, self.prefix_table)).view_as(x)
        return x * (self.col_offset < keep[:, self.col_feature]).to(x.dtype)

    def aux_loss(self) -> torch.Tensor | None:
        if self.stage != "supernet":
            return None
        return self.opts.alpha * torch.exp(-self.threshold).sum()

    def on_train_step(self, step: int) -> None:
        super().on_train_step(step)
        self.step = step + 1

    def on_train_resume(self, steps: int) -> None:
        super().on_train_resume(steps)
        self.step = steps  # the supernet's dimension masks are seeded by the step

    # ----- accounting, search, export ------------------------------------------------
    def bytes_at(self, dims: Sequence[int]) -> int:
        """Bytes at per-field dims ``dims``: stored rows × stored columns × 4, plus the remaps."""
        return self.layout.stored_bytes(dims, self.kept)

    def memory_bytes(self) -> int:
        return self.bytes_at(self.dims.tolist())

    def sparsity(self) -> float:
        """``1 − Σ_f kept_f·d_f / (N·D)`` (for ``unified``: over stored rows × columns of its tables)."""
        return self.layout.sparsity(self.dims.tolist(), self.kept)

    def search(self, evaluate: Callable[[], float]) -> dict[str, Any]:
        """Evolutionary search of per-field dims; fitness = ``evaluate()`` (validation AUC)."""
        o = self.opts
        cfg = EvolutionConfig(o.generations, o.parents, o.mutations, o.crossovers, o.mutation_prob, o.seed)
        budgets = [self.ctx.budget_bytes, int(self.ctx.full_bytes / o.search_compression) if o.search_compression else None]
        space = SearchSpace(tuple(self.widths), self.bytes_at, min((b for b in budgets if b is not None), default=None), o.search_fill)

        def fitness(cand: tuple[int, ...]) -> float:
            self.set_dims(cand)
            return evaluate()

        start = time.perf_counter()
        result = evolve(space, fitness, cfg)
        self.set_dims(result.best)
        return {
            "dims": dict(zip(self.names, result.best)),
            "valid_auc": result.best_fitness,
            "memory_bytes": result.best_bytes,
            "sparsity": self.sparsity(),
            "evaluations": result.evaluations,
            "cache_hits": result.cache_hits,
            "seconds": time.perf_counter() - start,
            "history": result.history,
        }

    def compact_state(self) -> dict[str, torch.Tensor]:
        """Pruned rows removed and unread columns dropped, plus rank bitmaps (``optembed_export``)."""
        dims = self.dims.tolist()
        state = compact_tables(table_weights(self.ebc), self.row_masks(), dict(zip(self.layout.tables, self.layout.stored_widths(dims))))
        return state | {"dims": self.dims.cpu().clone()}

    def export(self) -> ExportedMethod:
        """The served form: the compact tables and dims (see ``compact_state``)."""
        return ExportedMethod(self.name, self.export_options(), self.compact_state())

    @classmethod
    def from_export(cls, ctx: MethodContext, exported: ExportedMethod) -> nn.Module:
        opts = OptEmbedOptions.model_validate(exported.options)
        return compact_lookup(cls.build_base(ctx, opts), ctx.feature_names, exported.state).eval()

    def diagnostics(self) -> dict[str, Any]:
        """Stage, dims, thresholds, kept rows per table, sparsity and bytes."""
        kept = self.kept if self.kept is not None else [int(m.sum()) for m in self.row_masks().values()]
        by_table = {t: {"rows": r, "kept": k} for t, r, k in zip(self.layout.tables, self.layout.rows, kept)}
        by_field = {n: {"dim": d, "threshold": t} for n, d, t in zip(self.names, self.dims.tolist(), self.threshold.detach()[:, 0].tolist())}
        return {"stage": self.stage, "fields": by_field, "tables": by_table, "sparsity": self.sparsity(), "memory_bytes": self.memory_bytes()}
