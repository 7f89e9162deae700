"""``dsl``: Dynamic Sparse Learning (Wang et al., WSDM 2024) on the tables of any base method.

The base method (``base``: ``full``, ``hash``, ``unified``, ...) keeps its id rewriting and
stock ``EmbeddingBagCollection`` tables; every table gets a bool mask ``masks.<path>__<table>``
(in the state_dict) with exactly ``floor(density · rows · dim)`` active weights, seeded.

* Training: a forward hook on each (stock or sharded) EBC of the base multiplies the pooled
  output by the OR of the looked-up rows' masks over each bag. The value is unchanged (inactive
  weights are 0), but the gradient reaching the fused kernel is masked: for a bag of one id
  (every single-valued feature) an inactive weight gets exactly 0 and does not move, nor does
  its optimizer state. In a longer bag a coordinate inactive in one row but active in another
  still receives gradient; ``on_train_step`` re-masks the rows the step looked up (the only
  rows a sparse optimizer moves), so ``W = W ⊙ M`` holds after every step regardless.
* Regrowth signal without ``.grad``: a backward hook on the same output scatter-adds each
  value's gradient (``g_bag · weight · 1/len`` for MEAN tables) into a per-table accumulator by
  row, summed over the interval (``regrow='accumulated'``) or over the update step's batch only
  (``'batch'``); a row read by several keys (unified) accumulates every read.
* Every ``update_every`` steps (``⌊T/ΔT⌋`` updates for ``T`` steps) with ζ from
  ``update_ratio``: per table (or over all tables with ``global_budget``) the ``ceil(ζ·active)``
  smallest ``|w|`` are pruned and as many inactive weights (just-pruned included) with the
  largest ``|accumulated gradient|`` regrown. A weight pruned and regrown at once keeps its
  value and state; a newly active one starts at 0 with its optimizer state reset: per-weight
  state (``adagrad``) at that weight, per-row state (``rowwise_adagrad``) only for rows that had
  no active weight before (resetting a live row would disturb its active weights' step size).
* The update is a deterministic function of weights, masks, accumulators, ``seed`` and the
  update count (ties broken by a seeded permutation of the index), so ranks holding identical
  state decide identical masks; no collectives are issued.

Served form (``compact_state``): each table as CSR (``sparse_ops``) or, when not smaller,
dense. ``memory_bytes`` = the base's bytes − its dense tables + the served tables. With a
budget and no ``density``, the density is the largest whose CSR form fits the budget.

Example:
    >>> method = build_method("dsl", ctx, {"density": 0.1, "base": "hash"})  # doctest: +SKIP
    >>> method.compact_lookup(method.compact_state(), kjt)                   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import EmbeddingMethod, MethodContext, MethodOptions, Phase, table_bytes
from recsys.embeddings.registry import build_method, register_method
from recsys.embeddings.sparse_ops import (
    Piece, bag_lookups, csr_bytes, gather, index_dtype, optimizer_views, prune_regrow, random_mask, remask, reset_state,
    scatter_gradient, serve, served_bytes, served_table, table_views, update_ratio,
)

DEFAULT_DENSITY = 0.5


class DSLOptions(MethodOptions):
    """Options of ``dsl``."""

    base: str = Field("full", description="the method whose tables are sparsified")
    base_options: dict[str, Any] = Field(default_factory=dict, description="options of the base method")
    base_compression: float | None = Field(None, ge=1, description="dense compression of the base; default none")
    density: float | None = Field(None, gt=0, le=1, description="share of active weights; default from the budget, else 0.5")
    mode: Literal["dynamic", "fix"] = Field("dynamic", description="'fix': a static random mask (ablation)")
    update_every: int = Field(100, ge=1, description="ΔT: steps between prune/regrow updates")
    zeta0: float = Field(0.5, ge=0, le=1, description="ζ_0: update ratio at step 0")
    zeta_min: float = Field(0.005, ge=0, le=1, description="ζ_min: update ratio at step T")
    regrow: Literal["accumulated", "batch"] = Field("accumulated", description="gradient over the interval or the last batch")
    global_budget: bool = Field(False, description="prune/regrow over all tables together")
    seed: int = Field(0, description="seed of the initial masks and of tie-breaking")


@dataclass(frozen=True)
class _Table:
    path: str  # the EBC's module path inside the base
    name: str  # table name in that EBC
    rows: int
    dim: int

    @property
    def buffer(self) -> str:
        return f"{self.path}__{self.name}".replace(".", "_")


class _Cache(dict):
    """Views into one module's tables; a copy of the method starts empty and rebuilds its own."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "_Cache":
        return _Cache()


def _base_ctx(ctx: MethodContext, options: DSLOptions) -> MethodContext:
    return MethodContext(ctx.features, ctx.embedding_dim).with_budget(compression=options.base_compression)


@register_method
class DSLEmbedding(EmbeddingMethod):
    """Masked, dynamically re-wired tables of a ``base`` method; the base is ``self.base``."""

    name: ClassVar[str] = "dsl"
    Options: ClassVar[type[MethodOptions]] = DSLOptions
    contract_compression: ClassVar[float | None] = 2.0

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        assert isinstance(options, DSLOptions)
        self.opts = options
        self.base = build_method(options.base, _base_ctx(ctx, options), options.base_options)
        self.id_scheme = self.base.id_scheme  # type: ignore[misc]
        ebcs = [(p, m) for p, m in self.base.named_modules() if type(m) is EmbeddingBagCollection]
        self._tables = [_Table(p, c.name, c.num_embeddings, c.embedding_dim) for p, m in ebcs for c in m.embedding_bag_configs()]
        index = {(t.path, t.name): i for i, t in enumerate(self._tables)}
        self._keys: dict[str, dict[str, tuple[int, bool]]] = {
            p: {f: (index[p, c.name], c.pooling == PoolingType.MEAN) for c in m.embedding_bag_configs() for f in c.feature_names}
            for p, m in ebcs
        }
        self._extra_bytes = self.base.memory_bytes() - sum(table_bytes(t.rows, t.dim) for t in self._tables)
        self.masks = nn.Module()
        for i, (t, active) in enumerate(zip(self._tables, self._active_counts())):
            self.masks.register_buffer(t.buffer, random_mask(t.rows, t.dim, active, options.seed * 1_000_003 + i))
        self.total_steps: int | None = None
        self.updates = 0
        self._next_step = 0
        self._hooked: dict[str, nn.Module] = {}
        self._acc: dict[int, torch.Tensor] = {}
        self._touched: dict[int, list[torch.Tensor]] = {}
        self._view_cache = _Cache()
        for i in range(len(self._tables)):
            remask(self._views(i), self.mask(i))

    def _active_counts(self) -> list[int]:
        """Active weights per table: ``floor(density · size)``, the density given or fitted to the budget."""
        budget, density, sizes = self.ctx.budget_bytes, self.opts.density, [t.rows * t.dim for t in self._tables]
        if density is None and budget is not None:
            cols = [index_dtype(t.dim - 1).itemsize for t in self._tables]
            cols = [max(cols)] * len(cols) if self.opts.global_budget else cols
            fixed = self._extra_bytes + sum(csr_bytes(t.rows, t.dim, 0) for t in self._tables)
            if budget <= fixed:
                raise ValueError(
                    f"method 'dsl' cannot fit the budget of {budget} bytes: row offsets and the base's other "
                    f"structures alone need {fixed} bytes"
                )
            density = min(1.0, (budget - fixed) / sum(n * (4 + c) for n, c in zip(sizes, cols)))
        return [math.floor((density or DEFAULT_DENSITY) * n) for n in sizes]

    def mask(self, i: int) -> torch.Tensor:
        """The live mask of table ``i``."""
        return getattr(self.masks, self._tables[i].buffer)

    def active_counts(self) -> list[int]:
        return [int(self.mask(i).sum()) for i in range(len(self._tables))]

    def _views(self, i: int) -> list[Piece]:
        t = self._tables[i]
        module = self.base.get_submodule(t.path)
        cached = self._view_cache.get(t.path)
        if cached is None or cached[0] is not module:
            cached = self._view_cache[t.path] = (module, table_views(module))
        return cached[1][t.name]

    def full_weight(self, i: int) -> torch.Tensor:
        """A copy of table ``i``'s live weights, gathered from its local shards."""
        return gather(self._views(i), self._tables[i].rows, self._tables[i].dim)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """The base's forward; the hooks mask and record its tables' lookups while training."""
        for path in self._keys:
            module = self.base.get_submodule(path)
            if self._hooked.get(path) is not module:
                module.register_forward_hook(self._on_pooled)
                self._hooked[path] = module
        return self.base(features)

    def _capturing(self) -> bool:
        every = self.opts.update_every
        return self.opts.mode == "dynamic" and (self.opts.regrow == "accumulated" or (self._next_step + 1) % every == 0)

    def _on_pooled(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> KeyedTensor | None:
        """Forward hook of an EBC: mask the pooled output, record rows read, hook its gradient."""
        if not (self.training and torch.is_grad_enabled()):
            return None
        path = next(p for p, m in self._hooked.items() if m is module)
        pooled = output if isinstance(output, KeyedTensor) else output.wait()
        lookups, factor = bag_lookups(args[0], pooled, self._keys[path], self.mask)
        for lk in lookups:
            self._touched.setdefault(lk.table, []).append(lk.ids)
        masked = pooled.values() * factor
        if self._capturing() and masked.requires_grad:
            masked.register_hook(lambda grad: scatter_gradient(grad, lookups, self._accumulator))
        return KeyedTensor(keys=pooled.keys(), length_per_key=pooled.length_per_key(), values=masked)

    def _accumulator(self, i: int) -> torch.Tensor:
        if i not in self._acc:
            self._acc[i] = torch.zeros(self.mask(i).shape, device=self.mask(i).device)
        return self._acc[i]

    def on_train_begin(self, total_steps: int) -> None:
        self.base.on_train_begin(total_steps)
        self.total_steps, self._next_step = total_steps, 0

    def on_train_step(self, step: int) -> None:
        """Re-mask the rows this step looked up, then update the masks every ``update_every`` steps."""
        self.base.on_train_step(step)
        for i, ids in self._touched.items():
            remask(self._views(i), self.mask(i), torch.unique(torch.cat(ids)))
        self._touched = {}
        if self.opts.mode == "dynamic" and (step + 1) % self.opts.update_every == 0:
            if self.total_steps is None:
                raise RuntimeError("dsl: on_train_begin(total_steps) must be called before training")
            self.update(update_ratio(step + 1, self.total_steps, self.opts.zeta0, self.opts.zeta_min))
        self._next_step = step + 1

    @torch.no_grad()
    def update(self, zeta: float) -> None:
        """One prune/regrow at ratio ``zeta`` from the live weights and the accumulated gradients."""
        old = [self.mask(i).clone() for i in range(len(self._tables))]
        mags = [self.full_weight(i).abs().view(-1) for i in range(len(old))]
        grads = [self._acc.get(i, torch.zeros(m.shape)).abs().view(-1) for i, m in enumerate(old)]
        salt = self.opts.seed * 7919 + self.updates * 1_000_003
        if self.opts.global_budget:
            k = math.ceil(zeta * sum(int(m.sum()) for m in old))
            flat = prune_regrow(torch.cat([m.view(-1) for m in old]), torch.cat(mags), torch.cat(grads), k, salt)
            new = [part.view(m.shape) for part, m in zip(flat.split([m.numel() for m in old]), old)]
        else:
            new = [
                prune_regrow(m.view(-1), w, g, math.ceil(zeta * int(m.sum())), salt + 31 * i).view(m.shape)
                for i, (m, w, g) in enumerate(zip(old, mags, grads))
            ]
        for i, (before, after) in enumerate(zip(old, new)):
            t = self._tables[i]
            states = (piece for name, piece in optimizer_views(self.base.get_submodule(t.path)) if name == t.name)
            reset_state(states, before, after & ~before)
            self.mask(i).copy_(after)
            remask(self._views(i), after)
        self._acc = {}
        self.updates += 1

    def memory_bytes(self) -> int:
        """The base's bytes with each table counted in its served form (CSR or dense)."""
        return self._extra_bytes + sum(served_bytes(t.rows, t.dim, n) for t, n in zip(self._tables, self.active_counts()))

    @torch.no_grad()
    def compact_state(self) -> dict[str, torch.Tensor]:
        """The served tables: ``<path>.<table>.{crow,col,val}`` (CSR) or ``.weight`` where dense is not larger."""
        return {
            f"{t.path}.{t.name}.{part}": v
            for i, t in enumerate(self._tables)
            for part, v in served_table(self.full_weight(i), self.mask(i)).items()
        }

    def compact_module(self, compact: dict[str, torch.Tensor]) -> nn.Module:
        """A fresh base method in eval mode whose tables read ``compact`` (pure torch)."""
        return serve(build_method(self.opts.base, _base_ctx(self.ctx, self.opts), self.opts.base_options), compact)

    @torch.no_grad()
    def compact_lookup(self, compact: dict[str, torch.Tensor], features: KeyedJaggedTensor) -> KeyedTensor:
        """The eval-mode forward computed from the served form alone."""
        return self.compact_module(compact)(features)

    def output_dims(self) -> dict[str, int]:
        return self.base.output_dims()

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self.base.embedding_bag_configs()

    def is_weighted(self) -> bool:
        return self.base.is_weighted()

    def aux_loss(self) -> torch.Tensor | None:
        return self.base.aux_loss()

    def phases(self) -> list[Phase]:
        return self.base.phases()

    def enter_phase(self, phase: Phase) -> None:
        self.base.enter_phase(phase)

    def phase_state(self) -> dict[str, torch.Tensor]:
        return self.base.phase_state()

    def load_phase_state(self, state: dict[str, torch.Tensor]) -> None:
        self.base.load_phase_state(state)

    @property
    def ebc(self) -> nn.Module:
        """The base's ``ebc`` (stock or sharded), for code that reaches for a method's table."""
        return self.base.get_submodule("ebc")
