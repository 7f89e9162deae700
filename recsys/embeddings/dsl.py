"""``dsl``: Dynamic Sparse Learning (Wang et al., WSDM 2024) on the tables of any base method.

A ``WrappedMethod``: the base method (``base``: ``full``, ``hash``, ``unified``, ... with its
options; one training phase) keeps its id rewriting and stock EBC tables, built without a
budget (or at ``base_compression``). Each table gets a bool mask ``masks.<path>__<table>`` (in the state_dict) with exactly
``floor(density · rows · dim)`` active weights, seeded; with a budget and no ``density``, the
density is the largest whose served form fits.

* Forward masking: a hook on each (stock or sharded) EBC multiplies the pooled output by the
  OR of the bag's rows' masks. Values are unchanged (inactive weights are 0), but the gradient
  the fused kernel applies is masked: in a one-value bag (every single-valued feature) an
  inactive weight gets exactly 0, so with SGD / Adagrad / row-wise Adagrad neither it nor its
  optimizer state moves. Rows read by longer bags can get gradient on coordinates inactive in
  them; ``on_train_step`` re-masks exactly those rows, so ``W = W ⊙ M`` after every step.
* Regrowth signal without ``.grad``: a hook on the same output's gradient scatter-adds each
  value's share (``g_bag · weight``, ``/len`` under MEAN) to its row, into fp32 accumulators of
  the tables' size: the signed sum over the interval (``regrow='accumulated'``) or the update
  step's batch (``'batch'``, the paper's dense gradient); a row read by several keys (unified)
  gets every read.
* Schedule (``dsl_schedule``), from the fit's planned steps ``T``: ΔT = ``update_every`` or
  ``T / updates`` when ``update_every`` is null (a fixed 100 gives an 80-step run no update at
  all; measured, that static mask did better there than 40 updates); by default (``ramp=0,
  freeze=1``, the paper's) a random mask at the target from step 0, prune/regrow over the run. With
  ``ramp > 0`` the fit starts dense and prunes the smallest weights to the target density by
  ``ramp · T`` (gradual magnitude pruning), and the trainer keeps only checkpoints from the
  ramp's end on (``servable``); ``freeze < 1`` fixes the masks after ``freeze · T``.
* At every prune/regrow update, ζ from ``update_ratio``: per table (or over
  all tables, ``global_budget``) the ``ceil(ζ·active)`` smallest ``|w|`` are pruned and as many
  inactive weights (just-pruned included) with the largest ``|gradient|`` regrown, exact counts
  (``sparse_ops.prune_regrow``). A weight pruned and regrown at once keeps its value and state;
  a newly active one starts at 0 with its optimizer state reset: per-weight state (``adagrad``)
  there, per-row state (``rowwise_adagrad``) only in rows with no active weight before (a live
  row's state serves its active weights).
* Decisions depend only on weights, masks, accumulators, ``seed`` and the step. With tables
  sharded over several ranks (DMP table- or column-wise), each rank holds only its pieces and
  sees only its batch, so an update first sums the zero-filled weights and the accumulators
  over the ranks, and every step re-masks the rows any rank read: every rank then decides the
  same masks (in one process no collectives are issued).

Served form (``sparse_serving``): each table as CSR or, where not larger, dense;
``memory_bytes`` = the base's other bytes + the served tables.

Example:
    >>> method = build_method("dsl", ctx, {"density": 0.1, "base": {"method": "hash"}})  # doctest: +SKIP
    >>> method.compact_lookup(method.compact_state(), kjt)                   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import EmbeddingMethod, ExportedMethod, MethodContext, MethodOptions, table_bytes
from recsys.embeddings.dsl_schedule import Schedule
from recsys.embeddings.registry import register_method
from recsys.embeddings.sparse_ops import (
    KeyGroup,
    Piece,
    Reads,
    Scratch,
    gather,
    key_groups,
    new_masks,
    optimizer_views,
    prune_to,
    random_mask,
    read,
    remask,
    reset_state,
    scatter,
    split_rows,
    stack_offsets,
)
from recsys.embeddings.sparse_serving import fit_density, serve, served_bytes, served_table
from recsys.embeddings.wrapped import WrappedMethod, WrapperOptions

DEFAULT_DENSITY = 0.5
TABLES, BASE = "tables.", "base."


class DSLOptions(WrapperOptions):
    """Options of ``dsl`` (``base``: the method whose tables are sparsified, with its options)."""

    base_compression: float | None = Field(None, ge=1, description="dense compression of the base; default none")
    density: float | None = Field(None, gt=0, le=1, description="share of active weights; default from the budget, else 0.5")
    mode: Literal["dynamic", "fix"] = Field("dynamic", description="'fix': a static random mask (ablation)")
    update_every: int | None = Field(
        100,
        ge=1,
        description="ΔT: steps between mask updates; null: the planned steps / updates (measured worse on 80-step runs, docs/results/robustness.md)",
    )
    updates: int = Field(40, ge=1, description="mask updates planned over the run when update_every is null")
    ramp: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the planned steps over which the density falls from 1 to its target "
        "(gradual magnitude pruning); 0: a random mask at the target from the start (the paper; measured better on "
        "small data, docs/results/robustness.md)",
    )
    freeze: float = Field(1.0, ge=0, le=1, description="share of the planned steps after which the masks are fixed")
    zeta0: float = Field(0.5, ge=0, le=1, description="ζ_0: update ratio at step 0")
    zeta_min: float = Field(0.005, ge=0, le=1, description="ζ_min: update ratio at step T")
    regrow: Literal["accumulated", "batch"] = Field("accumulated", description="gradient over the interval or the last batch")
    global_budget: bool = Field(
        True,
        description="prune/regrow over all tables together, so the budget moves between tables; false: a fixed share per table (the paper's code)",
    )
    seed: int = Field(0, description="seed of the initial masks and of tie-breaking")

    @model_validator(mode="after")
    def _ramp_before_freeze(self) -> "DSLOptions":
        if self.ramp > self.freeze:
            raise ValueError(f"ramp ({self.ramp}) must not be after freeze ({self.freeze})")
        return self


@dataclass(frozen=True)
class _Table:
    path: str  # the EBC's module path inside the base
    name: str  # table name in that EBC
    rows: int
    dim: int

    @property
    def buffer(self) -> str:
        return f"{self.path}__{self.name}".replace(".", "_")


@register_method
class DSLEmbedding(WrappedMethod):
    """Masked, dynamically re-wired tables of a ``base`` method; the base is ``self.base``."""

    name: ClassVar[str] = "dsl"
    Options: ClassVar[type[MethodOptions]] = DSLOptions

    @classmethod
    def base_context(cls, ctx: MethodContext, options: WrapperOptions) -> MethodContext:
        """Without the budget, or at ``base_compression`` (the value counts kept, for a ``hybrid`` base)."""
        assert isinstance(options, DSLOptions)
        return super().base_context(ctx, options).with_budget(compression=options.base_compression)

    def __init__(self, ctx: MethodContext, options: MethodOptions, base: EmbeddingMethod) -> None:
        super().__init__(ctx, options, base)
        assert isinstance(options, DSLOptions)
        self.opts = options
        if len(self.base.phases()) != 1:
            raise ValueError(f"dsl: the base method '{options.base.method}' trains in several phases; dsl supports one-phase bases")
        ebcs = [("ebc", self.base.ebc)]  # the contract: a method's tables are its stock EBC ``ebc``
        self._tables = [_Table(p, c.name, c.num_embeddings, c.embedding_dim) for p, m in ebcs for c in m.embedding_bag_configs()]
        index = {(t.path, t.name): i for i, t in enumerate(self._tables)}
        self._keys: dict[str, dict[str, tuple[int, bool]]] = {
            p: {f: (index[p, c.name], c.pooling == PoolingType.MEAN) for c in m.embedding_bag_configs() for f in c.feature_names} for p, m in ebcs
        }
        self._offset, self._by_dim = stack_offsets([(t.rows, t.dim) for t in self._tables])
        self._dims = [t.dim for t in self._tables]
        self._extra_bytes = self.base.memory_bytes() - sum(table_bytes(t.rows, t.dim) for t in self._tables)
        self.masks = nn.Module()
        self._target = self._active_counts()
        for i, (t, active) in enumerate(zip(self._tables, self._target)):
            self.masks.register_buffer(t.buffer, random_mask(t.rows, t.dim, active, options.seed * 1_000_003 + i))
        self.total_steps: int | None = None
        self.schedule: Schedule | None = None  # planned by on_train_begin
        self._dense_start = False  # the ramp starts dense: set at the first training forward of a fresh fit
        self.updates = 0
        self.history: list[dict[str, Any]] = []  # one entry per update: step, ζ, density and regrown weights per table
        self._next_step = 0
        self._hooked: dict[str, nn.Module] = {}
        self._acc: dict[int, torch.Tensor] = {}  # per width: accumulated gradient of the stacked rows
        self._touched: dict[int, list[torch.Tensor]] = {}  # per width: stacked rows read by multi-value bags
        self._groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[list[KeyGroup], torch.Tensor | None]] = {}
        self._scratch = Scratch()
        for i in range(len(self._tables)):
            remask(self._views(i), self.mask(i))

    def _active_counts(self) -> list[int]:
        """Active weights per table: ``floor(density · size)``, the density given or fitted to the budget."""
        return self._counts_at(self.target_density)

    def _counts_at(self, density: float) -> list[int]:
        return [math.floor(density * t.rows * t.dim) for t in self._tables]

    @property
    def target_density(self) -> float:
        """The served density: the option, else the largest that fits the budget, else 0.5."""
        budget, density, shapes = self.ctx.budget_bytes, self.opts.density, [(t.rows, t.dim) for t in self._tables]
        if density is None and budget is not None:
            density = fit_density(budget, self._extra_bytes, shapes, self.opts.global_budget)
        return density or DEFAULT_DENSITY

    def mask(self, i: int) -> torch.Tensor:
        """The live mask of table ``i``."""
        return getattr(self.masks, self._tables[i].buffer)

    def active_counts(self) -> list[int]:
        return [int(self.mask(i).sum()) for i in range(len(self._tables))]

    def _views(self, i: int) -> list[Piece]:
        return self._scratch.views(self.base.get_submodule(self._tables[i].path))[self._tables[i].name]

    def _stacked_mask(self, dim: int) -> torch.Tensor:
        """The masks of the tables of width ``dim`` stacked, as 0/1 floats (rebuilt when any changes)."""
        masks = [self.masks._buffers[self._tables[i].buffer] for i in self._by_dim[dim]]
        stamp = tuple((m.data_ptr(), m._version) for m in masks)
        cached = self._scratch.get(("mask", dim))
        if cached is None or cached[0] != stamp:
            cached = self._scratch["mask", dim] = (stamp, torch.cat(masks).float())
        return cached[1]

    def accumulated(self, i: int) -> torch.Tensor | None:
        """Table ``i``'s accumulated gradient since the last update (None before any)."""
        t, acc = self._tables[i], self._acc.get(self._tables[i].dim)
        return None if acc is None else acc[self._offset[i] : self._offset[i] + t.rows]

    def full_weight(self, i: int) -> torch.Tensor:
        """Table ``i``'s live weights (gathered from its local shards when split); read only."""
        return gather(self._views(i), self._tables[i].rows, self._tables[i].dim)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """The base's forward; the hooks mask and record its tables' lookups while training."""
        if self._dense_start and self.training:
            self._densify()
        for path in self._keys:
            module = self.base.get_submodule(path)
            if self._hooked.get(path) is not module:
                module.register_forward_hook(self._on_pooled)
                self._hooked[path] = module
        return self.base(features)

    def _on_pooled(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> KeyedTensor | None:
        """Forward hook of an EBC: mask the pooled output, record rows read, hook its gradient."""
        if not (self.training and torch.is_grad_enabled()):
            return None
        path = next(p for p, m in self._hooked.items() if m is module)
        pooled, kjt = output if isinstance(output, KeyedTensor) else output.wait(), args[0]
        keys, reads, blocks, whole = kjt.keys(), [], {}, None
        cached = self._groups.get((path, tuple(keys), tuple(pooled.keys())))
        if cached is None:  # keys grouped by table width; slots when one width fills the output
            groups = key_groups([self._keys[path][k] for k in keys], self._dims, self._offset)
            slots = torch.tensor([keys.index(k) for k in pooled.keys()]) if len(groups) == 1 else None
            cached = self._groups[path, tuple(keys), tuple(pooled.keys())] = (groups, slots)
        for group in cached[0]:
            r, factor = read(kjt, group, self._stacked_mask(group.dim), cached[1])
            reads.append(r)
            if r.batch_major:
                whole = factor
            blocks.update({} if r.batch_major else {keys[p]: factor[j] for j, p in enumerate(group.positions)})
            if r.pooled_rows.numel():
                self._touched.setdefault(group.dim, []).append(r.pooled_rows)
        masked = pooled.values() * (whole if whole is not None else torch.cat([blocks[k] for k in pooled.keys()], dim=1))
        regrow, schedule = self.opts.regrow, self.schedule
        update_next = schedule is not None and schedule.is_update(self._next_step + 1) and not schedule.in_ramp(self._next_step + 1)
        if self.opts.mode == "dynamic" and (regrow == "accumulated" or update_next) and masked.requires_grad:
            starts = dict(zip(pooled.keys(), pooled.offset_per_key()))
            masked.register_hook(lambda grad: self._scatter(grad, reads, keys, starts))
        return KeyedTensor(keys=pooled.keys(), length_per_key=pooled.length_per_key(), values=masked)

    def _scatter(self, grad: torch.Tensor, reads: list[Reads], keys: list[str], starts: dict[str, int]) -> None:
        for r in reads:
            dim = r.group.dim
            if dim not in self._acc:
                self._acc[dim] = torch.zeros(self._stacked_mask(dim).shape, device=grad.device)
            blocks = grad if r.batch_major else torch.stack([grad[:, starts[keys[p]] : starts[keys[p]] + dim] for p in r.group.positions])
            scatter(blocks, r, self._acc[dim])

    def on_train_begin(self, total_steps: int) -> None:
        """Plan the schedule (``dsl_schedule``) from the fit's steps; a ramp starts the fit dense."""
        self.base.on_train_begin(total_steps)
        self.total_steps, self._next_step = total_steps, 0
        o = self.opts
        self.schedule = Schedule.plan(total_steps, o.update_every, o.updates, o.ramp if o.mode == "dynamic" else 0.0, o.freeze)
        self._dense_start = self.schedule.ramp_end > 0

    def on_train_resume(self, steps: int) -> None:
        self.base.on_train_resume(steps)
        self._next_step = steps  # which steps record the regrowth gradient
        self._dense_start = False  # the checkpoint's masks are the fit's

    def servable(self) -> bool:
        """Whether the masks hold the served (target) density: always, except during a ramp."""
        return self.schedule is None or self.schedule.ready(self._next_step)

    @torch.no_grad()
    def _densify(self) -> None:
        """Every weight active, the inactive ones drawn like a fresh EBC table (``U(±1/√rows)``, seeded)."""
        self._dense_start = False
        for i, t in enumerate(self._tables):
            mask = self.mask(i)
            bound = 1.0 / math.sqrt(t.rows)
            fresh = torch.rand(t.rows, t.dim, generator=torch.Generator().manual_seed(self.opts.seed * 1_000_003 + 7 + i))
            fresh = (fresh * 2 - 1) * bound
            for sl, piece in self._views(i):
                piece.add_((fresh[sl] * ~mask[sl]).to(piece.dtype))
            mask.fill_(True)

    def _sharded_over_ranks(self) -> bool:
        """True when DMP split the tables over several ranks: each rank then holds only its
        pieces of the weights and sees only its own batch (hence the collectives below)."""
        return (
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
            and any(type(self.base.get_submodule(p)) is not EmbeddingBagCollection for p in self._keys)
        )

    def _all_touched(self) -> dict[int, list[torch.Tensor]]:
        """Every rank's touched rows, per width: a table's owner applies the gradient of rows
        that other ranks' batches read, so it must re-mask those rows too."""
        out: dict[int, list[torch.Tensor]] = {}
        world = dist.get_world_size()
        for dim in sorted(self._by_dim):
            mine = torch.cat(self._touched[dim]).unique() if self._touched.get(dim) else torch.zeros(0, dtype=torch.int64)
            count = torch.tensor([mine.numel()], dtype=torch.int64)
            counts = [torch.zeros_like(count) for _ in range(world)]
            dist.all_gather(counts, count)
            longest = max(int(c) for c in counts)
            if longest == 0:
                continue
            padded = torch.zeros(longest, dtype=torch.int64)
            padded[: mine.numel()] = mine.to(torch.int64)
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
            out[dim] = [part[: int(c)] for part, c in zip(parts, counts)]
        return out

    def _all_reduce_accumulators(self) -> None:
        """Sum every rank's accumulated gradient (each saw its own batch), so that all ranks
        regrow from the same global signal; a width no rank accumulated stays absent."""
        dims = sorted(self._by_dim)
        present = torch.tensor([float(d in self._acc) for d in dims])
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        for dim, flag in zip(dims, present.tolist()):
            if flag:
                acc = self._acc.get(dim)
                if acc is None:
                    acc = self._acc[dim] = torch.zeros(self._stacked_mask(dim).shape)
                dist.all_reduce(acc)

    def on_train_step(self, step: int) -> None:
        """Re-mask the rows this step looked up, then update the masks every ``update_every`` steps."""
        self.base.on_train_step(step)
        sharded = self._sharded_over_ranks()
        for dim, rows in (self._all_touched() if sharded else self._touched).items():
            for i, mine in split_rows(torch.cat(rows), self._by_dim[dim], self._offset, [t.rows for t in self._tables]):
                remask(self._views(i), self.mask(i), mine)
        self._touched = {}
        if self.opts.mode == "dynamic":
            if self.schedule is None:
                raise RuntimeError("dsl: on_train_begin(total_steps) must be called before training")
            taken = step + 1
            if self.schedule.is_update(taken):
                if self.schedule.in_ramp(taken):
                    self.shrink(self.schedule.density(taken, self.target_density), taken)
                else:
                    self.update(self.schedule.zeta(taken, self.opts.zeta0, self.opts.zeta_min), taken)
        self._next_step = step + 1

    @torch.no_grad()
    def update(self, zeta: float, step: int = 0) -> None:
        """One prune/regrow at ratio ``zeta`` from the live weights and the accumulated gradients;
        ``step`` salts the tie-breaking (so a resumed run decides as the uninterrupted one)."""
        old = [self.mask(i).clone() for i in range(len(self._tables))]
        weights = [self.full_weight(i) for i in range(len(old))]
        if self._sharded_over_ranks():  # every rank decides from the whole tables and the global gradient
            weights = [w.clone() for w in weights]  # (a rank's own whole table is the live tensor)
            for w in weights:
                dist.all_reduce(w)  # table- or column-wise: each weight is held by exactly one rank
            self._all_reduce_accumulators()
        grads = [None if a is None else a.reshape(-1) for a in map(self.accumulated, range(len(old)))]
        salt = self.opts.seed * 7919 + step * 1_000_003
        new = new_masks(old, weights, grads, zeta, salt, self.opts.global_budget)
        states = {path: optimizer_views(self.base.get_submodule(path)) for path in self._keys}
        regrown: dict[str, int] = {}
        for i, (before, after) in enumerate(zip(old, new)):
            reset_state(states[self._tables[i].path].get(self._tables[i].name, []), before, after & ~before)
            self.mask(i).copy_(after)
            remask(self._views(i), after)
            regrown[self._tables[i].buffer] = int((after & ~before).sum())
        self._acc = {}
        self.updates += 1
        self.history.append({"step": step, "zeta": zeta, "density": self._densities(), "regrown": regrown})

    @torch.no_grad()
    def shrink(self, density: float, step: int = 0) -> None:
        """A ramp update: prune the smallest live weights down to ``density`` (of each table, or
        over all tables with ``global_budget``); the step ``density`` reaches the target prunes to
        exactly the target counts."""
        old = [self.mask(i).clone() for i in range(len(self._tables))]
        weights = [self.full_weight(i) for i in range(len(old))]
        if self._sharded_over_ranks():
            weights = [w.clone() for w in weights]
            for w in weights:
                dist.all_reduce(w)
        keep = self._target if density <= self.target_density else self._counts_at(density)
        for i, after in enumerate(prune_to(old, weights, keep, self.opts.seed * 7919 + step * 1_000_003, self.opts.global_budget)):
            self.mask(i).copy_(after)
            remask(self._views(i), after)
        self._acc = {}
        self.updates += 1
        self.history.append({"step": step, "ramp": True, "density": self._densities()})

    def _densities(self) -> dict[str, float]:
        return {t.buffer: n / (t.rows * t.dim) for t, n in zip(self._tables, self.active_counts())}

    def diagnostics(self) -> dict[str, Any]:
        """Density per table now and after every prune/regrow update of this fit (``history``;
        a resumed fit lists the updates since its checkpoint), and the base's own diagnostics."""
        tables = {t.buffer: {"rows": t.rows, "dim": t.dim, "active": n} for t, n in zip(self._tables, self.active_counts())}
        out: dict[str, Any] = {"density": self._densities(), "tables": tables, "updates": self.updates, "history": self.history}
        if self.schedule is not None:
            out["schedule"] = {
                "total": self.schedule.total,
                "every": self.schedule.every,
                "ramp_end": self.schedule.ramp_end,
                "freeze_at": self.schedule.freeze_at,
            }
        return out | super().diagnostics()

    def memory_bytes(self) -> int:
        """The base's bytes with each table counted in its served form (CSR or dense); during a
        ramp (denser than served) at the target counts."""
        counts = self.active_counts() if self.servable() else self._target
        return self._extra_bytes + sum(served_bytes(t.rows, t.dim, n) for t, n in zip(self._tables, counts))

    @torch.no_grad()
    def compact_state(self) -> dict[str, torch.Tensor]:
        """The served tables: ``<path>.<table>.{crow,col,val}`` (CSR) or ``.weight`` where dense is not larger."""
        return {
            f"{t.path}.{t.name}.{part}": v for i, t in enumerate(self._tables) for part, v in served_table(self.full_weight(i), self.mask(i)).items()
        }

    def export(self, compact: dict[str, torch.Tensor] | None = None) -> ExportedMethod:
        """Options, the served tables (``tables.*``; ``compact`` or this method's) and the base's other state (``base.*``)."""
        state = {TABLES + k: v for k, v in (self.compact_state() if compact is None else compact).items()}
        ebcs = tuple(f"{path}." for path in self._keys)
        state.update({BASE + k: v.detach().cpu() for k, v in self.base.state_dict().items() if not k.startswith(ebcs)})
        return ExportedMethod(self.name, self.export_options(), state)

    @classmethod
    def from_export(cls, ctx: MethodContext, exported: ExportedMethod) -> nn.Module:
        """A fresh base method in eval mode whose tables read the served form (pure torch)."""
        options = DSLOptions.model_validate(exported.options)
        part = {p: {k[len(p) :]: v for k, v in exported.state.items() if k.startswith(p)} for p in (TABLES, BASE)}
        served = serve(cls.build_base(ctx, options), part[TABLES])
        served.load_state_dict(part[BASE], strict=True)
        return served.eval()

    @torch.no_grad()
    def compact_lookup(self, compact: dict[str, torch.Tensor], features: KeyedJaggedTensor) -> KeyedTensor:
        """The eval-mode forward computed from ``compact`` (a ``compact_state``) alone."""
        return self.from_export(self.ctx, self.export(compact))(features)
