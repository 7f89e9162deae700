"""``unified``: Unified Embedding, feature multiplexing in one shared table (Coleman et al., NeurIPS 2023).

One shared table of ``B`` rows × ``chunk_dim`` columns, split into ``num_tables`` (K)
sub-tables ``unified_k``, serves every feature. Feature ``f`` is read through ``c_f`` probes;
probe ``j`` reads row ``bucket(id, salt_{f,j}, B)`` of sub-table ``k(f, j)`` and the ``c_f``
chunk vectors are concatenated (width ``c_f × chunk_dim``). Ids are raw 64-bit ids.

* Salts: ``salt_{f,0} = salt_for(f)`` (so one probe at ``chunk_dim = D`` is exactly the
  ``hash`` baseline) and ``salt_{f,j} = salt_for(f"{f}#{j}")`` for ``j ≥ 1``. Sub-tables are
  dealt round-robin over the (feature, probe) pairs sorted by feature *name*, so reordering
  the context changes no row. Parameters are ``K·B·chunk_dim`` whatever the features.
* ``B`` (per sub-table): ``rows``; else the largest with ``K·B·chunk_dim·4 + exact ≤ budget``;
  else (no budget) the bytes of ``full`` for the shared features: ``B = ⌊Σ card_f·D / (K·chunk_dim)⌋``.
* ``chunk_dim`` defaults to ``D/2`` (``D`` when odd) and ``chunks`` to ``D / chunk_dim``, so
  every feature is ``D`` wide and DLRM/DeepFM need no projection. ``chunks='auto'`` deals
  ``T = ⌊F·D / chunk_dim⌋`` chunks: one per feature, the other ``T − F`` ∝ ``log2(card_f)``
  (largest remainders, ties by name); widths then differ and the models project.
* ``exact_below = N``: a feature with ``card_f ≤ N`` gets its own table (width
  ``c_f·chunk_dim``, salt ``salt_for(f)``). Raw ids carry no vocabulary, so "exact" is
  probabilistic: ``R_f = ⌈card_f (card_f − 1) / (2·exact_pairs)⌉`` rows make the expected
  number of colliding value pairs ``≤ exact_pairs`` (default 0.01: collision-free with
  probability ≥ 99%). The cost is quadratic in ``card_f``: meant for vocabularies of tens.
* Hashing runs in ``prepare`` (``multiplexed``: the ids under virtual keys ``f#j``, one per
  probe), which the training loader calls on its own thread ahead of the step; ``forward``
  takes raw ids or that output.
* Pooling: every table SUM-pools; MEAN features are divided by their bag length afterwards,
  so one sub-table can serve SUM, MEAN and weighted features (weighted MEAN = Σ w·x / len).

Example:
    >>> method = build_method("unified", ctx.with_budget(compression=100))  # doctest: +SKIP
    >>> method.rows, method.chunks["C1"]                                    # doctest: +SKIP
    (5243, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import BYTES_PER_WEIGHT, EmbeddingMethod, IdScheme, MethodContext, MethodOptions, ebc_bytes, table_bytes
from recsys.embeddings.full import empty_output
from recsys.embeddings.hashtrick import MAX_ROWS
from recsys.embeddings.registry import register_method
from recsys.embeddings.rekey import Expanded
from recsys.hashing import bucket, bucket_per_value, salt_for


class UnifiedOptions(MethodOptions):
    """Options of ``unified``."""

    rows: int | None = Field(None, ge=1, le=MAX_ROWS, description="rows B of each sub-table; else from the budget")
    chunk_dim: int | None = Field(None, ge=1, description="width of one chunk; default D/2 (D when odd)")
    num_tables: int = Field(1, ge=1, description="sub-tables K, dealt round-robin over (feature, probe) pairs")
    chunks: PositiveInt | dict[str, PositiveInt] | Literal["auto"] | None = Field(
        None, description="probes per feature: one number, one per feature, or 'auto'; default D / chunk_dim"
    )
    exact_below: int = Field(0, ge=0, description="features with cardinality <= this get their own table")
    exact_pairs: float = Field(0.01, gt=0, le=1, description="expected colliding value pairs in an exact table")


def probe_key(name: str, probe: int) -> str:
    """The virtual KJT key of probe ``probe`` of feature ``name``."""
    return f"{name}#{probe}"


def probe_salt(name: str, probe: int) -> int:
    """Salt of probe ``probe`` of feature ``name``: probe 0 salts like the ``hash`` baseline."""
    return salt_for(name if probe == 0 else probe_key(name, probe))


def exact_rows(cardinality: int, pairs: float) -> int:
    """Rows making the expected number of colliding pairs among ``cardinality`` values ``≤ pairs``."""
    return max(1, math.ceil(cardinality * (cardinality - 1) / (2 * pairs)))


def auto_chunks(cards: dict[str, int], total: int) -> dict[str, int]:
    """One chunk per feature, the other ``total − F`` ∝ ``log2(card)`` by largest remainders."""
    if total < len(cards):
        raise ValueError(f"unified: 'auto' needs at least one chunk per feature, only {total} chunks for {len(cards)}")
    names = sorted(cards)
    weights = [math.log2(max(cards[n], 2)) for n in names]
    shares = [(total - len(names)) * w / sum(weights) for w in weights]
    chunks = {n: 1 + math.floor(s) for n, s in zip(names, shares)}
    order = sorted(range(len(names)), key=lambda i: (math.floor(shares[i]) - shares[i], names[i]))
    for i in order[: total - sum(chunks.values())]:
        chunks[names[i]] += 1
    return chunks


def _chunks(ctx: MethodContext, options: UnifiedOptions, chunk_dim: int) -> dict[str, int]:
    names, dim = ctx.feature_names, ctx.embedding_dim
    if options.chunks == "auto":
        return auto_chunks({f.name: max(f.cardinality, 1) for f in ctx.features}, len(names) * dim // chunk_dim)
    if isinstance(options.chunks, dict):
        unknown, missing = sorted(set(options.chunks) - set(names)), [n for n in names if n not in options.chunks]
        if unknown or missing:
            raise ValueError(f"unified: 'chunks' must name every feature; unknown {unknown}, missing {missing}")
        return {n: options.chunks[n] for n in names}
    return dict.fromkeys(names, options.chunks or max(1, dim // chunk_dim))


@dataclass(frozen=True)
class _Plan:
    """How one input key order maps onto the virtual keys."""

    permute: list[int]  # input key of each virtual key
    permute_tensor: torch.Tensor
    keys: list[str]  # virtual keys
    salts: torch.Tensor  # per virtual key
    rows: torch.Tensor  # per virtual key


@dataclass(frozen=True)
class _Output:
    """How one virtual key order maps onto the output: the ``index_select`` of chunk slots into
    context order (None when already in order) and the MEAN scaling."""

    gather: torch.Tensor | None
    slot_source: torch.Tensor  # virtual key of each output chunk slot (context order)
    mean_keys: torch.Tensor  # virtual keys of features pooled by MEAN


@register_method
class UnifiedEmbedding(EmbeddingMethod):
    """Feature multiplexing: ``ebc`` holds sub-tables ``unified_k`` (and ``exact_<f>`` tables)."""

    name: ClassVar[str] = "unified"
    Options: ClassVar[type[MethodOptions]] = UnifiedOptions
    ids: ClassVar[IdScheme] = "raw"

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        assert isinstance(options, UnifiedOptions)
        dim = ctx.embedding_dim
        self.chunk_dim = options.chunk_dim or (dim // 2 if dim % 2 == 0 else dim)
        self.chunks = _chunks(ctx, options, self.chunk_dim)
        small = [f for f in ctx.features if f.cardinality <= options.exact_below]
        self.exact = {f.name: exact_rows(f.cardinality, options.exact_pairs) for f in small}
        if max(self.exact.values(), default=0) > MAX_ROWS:
            raise ValueError(f"unified: exact tables over {MAX_ROWS} rows; lower exact_below or raise exact_pairs")
        shared = sorted((n, j) for n, c in self.chunks.items() if n not in self.exact for j in range(c))
        self.num_tables = k = options.num_tables
        if len(shared) < k:
            raise ValueError(f"unified: {k} sub-tables but only {len(shared)} shared (feature, probe) pairs")
        exact_bytes = sum(table_bytes(r, self.chunks[n] * self.chunk_dim) for n, r in self.exact.items())
        self.rows = options.rows or self._derive_rows(ctx, k, exact_bytes)
        self.table_of = {key: i % k for i, key in enumerate(shared)}
        # a sub-table lists its probes in context order (the order ``multiplexed`` emits them), so with
        # one sub-table the sharded EBC needs no input permute and the output no gather
        in_order = [(n, j) for n in ctx.feature_names if n not in self.exact for j in range(self.chunks[n])]
        tables = [
            (f"unified_{t}", self.rows, self.chunk_dim, [probe_key(n, j) for n, j in in_order if self.table_of[(n, j)] == t]) for t in range(k)
        ] + [(f"exact_{n}", r, self.chunks[n] * self.chunk_dim, [n]) for n, r in sorted(self.exact.items())]
        configs = [
            EmbeddingBagConfig(name=t, num_embeddings=r, embedding_dim=d, feature_names=keys, pooling=PoolingType.SUM) for t, r, d, keys in tables
        ]
        self.ebc = EmbeddingBagCollection(tables=configs, is_weighted=ctx.any_weighted)
        self.feature_of = {v: n for n in ctx.feature_names for v, _, _ in self._virtual(n)}
        clash = sorted(v for v, n in self.feature_of.items() if v != n and v in self.chunks)
        if clash:
            raise ValueError(f"unified: feature names {clash} are also probe keys of other features; rename them")
        self._plans: dict[tuple[tuple[str, ...], torch.device], _Plan] = {}
        self._outputs: dict[tuple[tuple[str, ...], tuple[str, ...], torch.device], _Output] = {}

    def _derive_rows(self, ctx: MethodContext, k: int, exact_bytes: int) -> int:
        """``B`` from the budget (largest that fits) or, without one, the bytes of ``full``."""
        row_bytes = k * self.chunk_dim * BYTES_PER_WEIGHT
        if ctx.budget_bytes is None:
            cards = sum(max(f.cardinality, 1) for f in ctx.features if f.name not in self.exact)
            return min(MAX_ROWS, max(1, cards * ctx.embedding_dim // (k * self.chunk_dim)))
        rows = (ctx.budget_bytes - exact_bytes) // row_bytes
        if rows < 1:
            raise ValueError(
                f"method 'unified' cannot fit the budget of {ctx.budget_bytes} bytes: exact tables "
                f"need {exact_bytes} bytes and one row of every sub-table {row_bytes}"
            )
        return min(MAX_ROWS, rows)

    def output_dims(self) -> dict[str, int]:
        return {n: self.chunks[n] * self.chunk_dim for n in self.ctx.feature_names}

    def shares_rows_across_features(self) -> bool:
        readers: dict[int, set[str]] = {}
        for (name, _), table in self.table_of.items():
            readers.setdefault(table, set()).add(name)
        return any(len(names) > 1 for names in readers.values())

    def _virtual(self, name: str) -> list[tuple[str, int, int]]:
        """(virtual key, salt, rows) of each lookup of feature ``name``."""
        if name in self.exact:
            return [(name, salt_for(name), self.exact[name])]
        return [(probe_key(name, j), probe_salt(name, j), self.rows) for j in range(self.chunks[name])]

    def _plan(self, keys: list[str], device: torch.device) -> _Plan:
        """The cached rewrite of input key order ``keys``."""
        if (tuple(keys), device) not in self._plans:
            permute, lookups = zip(*[(i, v) for i, k in enumerate(keys) for v in self._virtual(k)])
            virtual, salts, rows = zip(*lookups)
            tensor = partial(torch.tensor, dtype=torch.int64, device=device)
            self._plans[(tuple(keys), device)] = _Plan(
                list(permute),
                tensor(permute, dtype=torch.int32),
                list(virtual),
                tensor(salts),
                tensor(rows),
            )
        return self._plans[(tuple(keys), device)]

    def is_multiplexed(self, features: KeyedJaggedTensor) -> bool:
        """Whether ``features`` holds table rows under virtual keys (``multiplexed``'s output)."""
        return any(k not in self.chunks for k in features.keys())

    def prepare(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """``multiplexed``: the probes' hashing, run by the loader ahead of the step."""
        return features if self.is_multiplexed(features) else self.multiplexed(features)

    def multiplexed(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The KJT of table rows: each feature's bags once per probe (one ``bucket_per_value``)."""
        plan = self._plan(features.keys(), features.values().device)
        ex = Expanded(features, plan.permute, plan.permute_tensor)
        return ex.rebuilt(plan.keys, bucket_per_value(ex.values, ex.per_value(plan.salts), ex.per_value(plan.rows)))

    def _output(self, pooled: KeyedTensor, virtual: list[str]) -> _Output:
        """The cached output plan of pooled keys ``pooled.keys()`` from a KJT with keys ``virtual``."""
        device = pooled.values().device
        cache_key = (tuple(pooled.keys()), tuple(virtual), device)
        if cache_key not in self._outputs:
            start = {k: o // self.chunk_dim for k, o in zip(pooled.keys(), pooled.offset_per_key())}
            names = self.ctx.feature_names
            slots = [start[n] + j if n in self.exact else start[probe_key(n, j)] for n in names for j in range(self.chunks[n])]
            position = {k: i for i, k in enumerate(virtual)}
            source = [position[n if n in self.exact else probe_key(n, j)] for n in names for j in range(self.chunks[n])]
            pooling = {f.name: f.pooling for f in self.ctx.features}
            means = [i for i, k in enumerate(virtual) if pooling[self.feature_of[k]] == PoolingType.MEAN]
            identity = slots == list(range(len(slots)))
            tensor = partial(torch.tensor, dtype=torch.int64, device=device)
            self._outputs[cache_key] = _Output(None if identity else tensor(slots), tensor(source), tensor(means))
        return self._outputs[cache_key]

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Concatenated chunk vectors of each feature, keyed by feature name in context order.

        ``features``: raw ids under feature names, or ``prepare``'s output (already hashed)."""
        if features.stride() == 0:
            return empty_output(self, features.values())
        rows = self.prepare(features)
        pooled = self.ebc(rows)
        values = pooled.values()
        batch = values.shape[0]
        out = self._output(pooled, rows.keys())
        slots = values.view(batch, -1, self.chunk_dim)
        if out.gather is not None:
            slots = slots.index_select(1, out.gather)
        if out.mean_keys.numel():
            lengths = rows.lengths().view(-1, batch).to(values.dtype)
            scale = torch.ones_like(lengths)
            scale[out.mean_keys] = 1.0 / lengths[out.mean_keys].clamp(min=1.0)
            slots = slots * scale.index_select(0, out.slot_source).t().unsqueeze(-1)
        widths = list(self.output_dims().values())
        return KeyedTensor(keys=self.ctx.feature_names, length_per_key=widths, values=slots.reshape(batch, -1))

    def memory_bytes(self) -> int:
        return ebc_bytes(self.ebc)

    def reports_collisions(self) -> bool:
        return True

    @torch.no_grad()
    def collision_stats(self, vocab_ids: Mapping[str, Any]) -> dict[str, Any]:
        """Row sharing among raw ids (e.g. train vocabularies). Per feature: ``values``, ``rows_occupied``
        (over all probes), ``rows_per_probe`` (expected ``R(1 − e^(−n/R))``), ``intra_share`` (lookups
        whose row another value hits through the same probe, expected ``1 − (1 − 1/R)^(n−1)``),
        ``inter_share`` (lookups whose row another feature hits); ``inter_pair_rate``: share of
        cross-feature lookup pairs in a sub-table that land on one row (expected ``1/B``)."""
        names = sorted(vocab_ids)
        stats: dict[str, dict] = {}
        rows_list, owner_list = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for i, name in enumerate(names):
            ids = torch.from_numpy(np.unique(np.asarray(vocab_ids[name], dtype=np.int64)))
            probes = [bucket(ids, salt, size).numpy() for _, salt, size in self._virtual(name)]
            size, n = self.exact.get(name, self.rows), int(ids.numel())
            stats[name] = {
                "values": n,
                "probes": len(probes),
                "rows_occupied": int(np.unique(np.concatenate(probes)).size),
                "rows_per_probe": [int(np.unique(p).size) for p in probes],
                "expected_rows_per_probe": size * (1.0 - math.exp(-n / size)),
                "intra_share": float(np.concatenate([_repeated(p) for p in probes]).mean()) if n else 0.0,
                "inter_share": 0.0,
            }
            if name not in self.exact:  # global row k·B + r of each lookup
                rows_list += [p + self.table_of[(name, j)] * self.rows for j, p in enumerate(probes)]
                owner_list += [np.full(p.size, i, dtype=np.int64) for p in probes]
        rows, owner = np.concatenate(rows_list), np.concatenate(owner_list)
        for i in np.unique(owner):
            stats[names[i]]["inter_share"] = float(np.isin(rows[owner == i], rows[owner != i]).mean())
        per_row, per_row_owner = np.unique(rows, return_counts=True)[1], np.unique(rows * len(names) + owner, return_counts=True)[1]
        per_table = [np.bincount(owner[rows // self.rows == t]) for t in range(self.num_tables)]
        possible = sum(_squares(np.array([c.sum()])) - _squares(c) for c in per_table)
        return {
            "rows": self.rows,
            "num_tables": self.num_tables,
            "features": stats,
            "inter_pair_rate": (_squares(per_row) - _squares(per_row_owner)) / possible if possible else 0.0,
        }


def _repeated(rows: np.ndarray) -> np.ndarray:
    """Whether each entry's row occurs more than once in ``rows``."""
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def _squares(counts: np.ndarray) -> float:
    """Σ c²: twice the pairs among groups of these sizes, plus their total."""
    return float(np.sum(counts.astype(np.float64) ** 2))
