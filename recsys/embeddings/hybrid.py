"""``hybrid``: frequency-aware hot rows plus a shared hashed tail (the idea of CAFE, Zhang et al., SIGMOD 2024).

Ids are vocabulary indices, which the train split orders by decreasing count (0 missing,
1 out of vocabulary, 2.. values). Feature ``f`` keeps exclusive rows for its indices below
``hot_rows_f`` (its hottest values; the two reserved rows are always hot) in its own table
``f@hot``; every colder index ``i`` reads ``P = tail_probes`` rows of one ``tail`` table
shared by all features, ``D / P`` wide (Unified Embedding's multi-probe lookup): probe ``j``
reads row ``bucket(i, salt_j(f), tail_rows)`` (``salt_0(f) = salt_for(f)``, the others
``salt_for(f"{f}@tail#{j}")``, so features and probes collide at random) and the ``P`` chunks
are concatenated. Two tail values then share a whole vector only when all ``P`` probes
collide: with one probe (``P = 1``, the layout before the option) the long tail's ~13 values
per row shared one vector each. The pooled vector of a bag is the sum of its hot and tail
parts (divided by the bag length for mean-pooled features), so the output equals one
vector per value looked up and pooled.

Sizes (``hot_rows`` / ``tail_rows`` set them explicitly; an export records them):

* the budget gives ``R = budget // (D × 4)`` rows in all; the hot values are the globally most
  frequent ones across features (counts from the vocabulary files, ``MethodContext.value_counts``;
  without them a Zipf(1) prior per feature);
* ``hot_share`` sets the hot values' share of the ``R`` rows; by default it is chosen from the
  counts (``hot_by_mass``): the hottest values get exclusive rows as long as each is heavier
  than the average mass of a shared tail row, ``c_k ≥ tail_mass(k) / (R − k)``; lighter values
  lose less by sharing than the crowding of fewer tail rows would cost;
* the tail gets the other rows' bytes: ``(R − hot) × P`` rows of ``D / P`` columns;
* no budget: every value hot (the ``full`` tables), no tail;
* init: hot rows as ``full``'s, ``U(±1/√card_f)`` (``hot_init``), the tail ``U(±1/√tail_rows)``;
* ``hot_scale``: the hot rows' vectors are multiplied by it. With the adaptive sparse optimizers
  (row-wise Adagrad by default) a row's step is about ``lr`` in weight units whatever its
  gradient's size, so the factor scales the hot rows' steps and their init in output units, the
  tail's unchanged. Default: ``HOT_SCALE`` when the lightest hot value is rare, seen in fewer
  than ``RARE`` of the train rows (``train_rows``; the long tail at 10×: 30 of 79,878), where
  each hot row, trained by one value, memorised it within an epoch; else 1 (the lightest hot
  values of the suite's other sets are seen in 3e-3 to 0.5 of the rows, and halving their steps
  lowered the 10k-row samples and ``small_real``). Measured in ``docs/results/hybrid_small.md``.

Bytes (the accounting rule): Σ hot rows × D × 4 + tail rows × (D / P) × 4 (the per-feature
thresholds and salts are constants of the method, as ``hash``'s table sizes are).

Example:
    >>> method = build_method("hybrid", ctx.with_budget(compression=10))  # doctest: +SKIP
    >>> method.hot_rows, method.tail_rows                                  # doctest: +SKIP
    ({'C1': 4, 'C2': 11, ...}, 310)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.base import (
    BYTES_PER_WEIGHT,
    EmbeddingMethod,
    IdScheme,
    MethodContext,
    MethodOptions,
    ebc_bytes,
    table_bytes,
)
from recsys.embeddings.full import empty_output
from recsys.embeddings.registry import register_method
from recsys.hashing import bucket_per_value, salt_for

RESERVED = 2
TAIL = "tail"
HOT_SCALE = 0.5  # the hot rows' output factor when the lightest hot value is seen in ...
RARE = 1e-3  # ... fewer than this share of the train rows


class HybridOptions(MethodOptions):
    """Options of ``hybrid``."""

    hot_share: float | None = Field(None, ge=0, lt=1, description="share of the budget's rows given to hot values; else chosen from the value counts")
    hot_rows: dict[str, int] | None = Field(None, description="exclusive rows per feature (with tail_rows; an export sets both)")
    tail_rows: int | None = Field(None, ge=0, description="rows of the shared tail table (with hot_rows)")
    tail_probes: int | None = Field(
        None,
        ge=1,
        description="lookups per tail value, each D/probes wide, concatenated; default 2 (1 when D is odd, "
        "and with explicit hot_rows/tail_rows, the layout of exports made before this option)",
    )
    hot_scale: float | None = Field(
        None,
        gt=0,
        le=1,
        description="factor on the hot rows' vectors: with the adaptive sparse optimizers their steps and init times it, "
        f"the tail's unchanged; default {HOT_SCALE} when the lightest hot value is seen in fewer than "
        f"{RARE:g} of the train rows (value counts), else 1 (1 with explicit hot_rows/tail_rows, the layout of exports made "
        "before this option)",
    )


def tail_probes(options: HybridOptions, dim: int) -> int:
    """The tail's probes: the option, else 1 for explicit sizes (older exports) or an odd ``dim``, else 2."""
    if options.tail_probes is not None:
        if dim % options.tail_probes:
            raise ValueError(f"hybrid: tail_probes={options.tail_probes} must divide the embedding dim {dim}")
        return options.tail_probes
    return 1 if options.hot_rows is not None or dim % 2 else 2


def train_rows(ctx: MethodContext) -> int | None:
    """Train rows seen in the value counts: the largest count total of a single-valued feature (a bag
    counts each of its values; None without counts)."""
    counts = ctx.value_counts
    if counts is None:
        return None
    single = [f for f in ctx.features if not f.multi_valued] or list(ctx.features)
    totals = [float(np.sum(counts[f.name])) for f in single if counts.get(f.name) is not None]
    return int(max(totals)) if totals else None


def hot_scale(options: HybridOptions, lightest: float | None, rows: int | None) -> float:
    """The hot rows' output factor: the option, else ``HOT_SCALE`` when the lightest hot value's count ``lightest`` is
    below ``RARE × rows`` (the train rows), else 1 (also without counts, explicit sizes or no hot value)."""
    if options.hot_scale is not None:
        return options.hot_scale
    return HOT_SCALE if lightest is not None and rows and lightest < RARE * rows else 1.0


def hot_init(cardinality: int) -> float:
    """Bound of the hot rows' ``U(±b)`` init: ``full``'s for the feature, ``1/√cardinality``, not the hot table's own
    ``1/√hot_rows``: a reserved row the train split never reads (the OOV row of a vocabulary built from it) then
    serves ≈ 0 at unseen test values, as in ``full``, instead of a random vector up to ±0.7 wide (2 hot rows)."""
    return cardinality**-0.5


def tail_key(name: str, probe: int) -> str:
    """The KJT key of probe ``probe`` of feature ``name`` in the tail table."""
    return f"{name}@tail" if probe == 0 else f"{name}@tail#{probe}"


def tail_salt(name: str, probe: int) -> int:
    """Salt of probe ``probe`` of ``name``'s tail lookups (probe 0: the one-probe layout's)."""
    return salt_for(name if probe == 0 else f"{name}@tail#{probe}")


def _counts(ctx: MethodContext) -> list[np.ndarray]:
    """Per feature, the counts of its values in index order (a Zipf(1) prior when unknown)."""
    out = []
    for f in ctx.features:
        n = max(f.cardinality - RESERVED, 0)
        known = None if ctx.value_counts is None else ctx.value_counts.get(f.name)
        if known is not None and len(known) == n:
            out.append(np.asarray(known, np.float64))
        else:
            prior = 1.0 / np.arange(1, n + 1, dtype=np.float64)
            out.append(prior / max(prior.sum(), 1e-12))
    return out


def hot_by_mass(counts: np.ndarray, rows: int, most: int) -> int:
    """How many of ``counts`` (sorted decreasing) get exclusive rows: the longest prefix whose every
    value is heavier than the mass a shared tail row would hold on average once it is taken out,
    ``c_k >= (tail mass after k) / (rows - k)``: sharing hurts such a value more than it hurts the tail."""
    k = np.arange(1, most + 1)
    after = counts.sum() - np.cumsum(counts)[:most]
    heavy = counts[:most] >= after / (rows - k)
    return most if heavy.all() else int(np.argmin(heavy))


def choose_hot(counts: list[np.ndarray], rows: int, hot_share: float | None) -> tuple[list[int], int]:
    """(hot values per feature, tail rows) for ``rows`` rows beyond the reserved ones."""
    values = np.concatenate(counts) if counts else np.zeros(0)
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(counts)]) if counts else np.zeros(0, int)
    order = np.argsort(-values, kind="stable")
    n = len(values)
    if rows >= n:
        return [len(c) for c in counts], 0
    most = rows - 1  # the tail keeps at least one row
    if hot_share is not None:
        k = min(most, math.floor(hot_share * rows))
    else:
        k = hot_by_mass(values[order], rows, most)
    hot = np.bincount(owner[order[:k]], minlength=len(counts))
    return [int(h) for h in hot], rows - k


@register_method
class HybridEmbedding(EmbeddingMethod):
    """Hot tables ``f@hot`` of each feature's most frequent values and one shared ``tail`` table, in one ``ebc``."""

    name: ClassVar[str] = "hybrid"
    Options: ClassVar[type[MethodOptions]] = HybridOptions
    ids: ClassVar[IdScheme] = "index"
    uses_value_counts: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__(ctx, options)
        assert isinstance(options, HybridOptions)
        cards = [max(f.cardinality, 1) for f in ctx.features]
        reserved = [min(c, RESERVED) for c in cards]
        self.tail_probes = probes = tail_probes(options, ctx.embedding_dim)
        self.tail_dim = ctx.embedding_dim // probes
        lightest = None  # the count of the least frequent hot value, when the counts chose them
        if options.hot_rows is not None or options.tail_rows is not None:
            hot, tail = self._explicit(ctx, options, cards)
        elif ctx.budget_bytes is None:
            hot, tail = cards, 0
        else:
            rows = ctx.budget_bytes // (ctx.embedding_dim * BYTES_PER_WEIGHT) - sum(reserved)
            if rows < 1 and sum(cards) > sum(reserved):
                raise ValueError(
                    f"method 'hybrid' cannot fit the budget of {ctx.budget_bytes} bytes: the reserved rows of every "
                    f"feature and one tail row need {table_bytes(sum(reserved) + 1, ctx.embedding_dim)} bytes"
                )
            counts = _counts(ctx)
            extra, tail = choose_hot(counts, max(rows, 0), options.hot_share)
            hot, tail = [r + e for r, e in zip(reserved, extra)], tail * probes
            given = [None if ctx.value_counts is None else ctx.value_counts.get(f.name) for f in ctx.features]
            known = [g is not None and len(g) == len(c) for g, c in zip(given, counts)]
            lightest = min((float(c[e - 1]) for c, e, k in zip(counts, extra, known) if e and k), default=None)  # not the prior
        self.hot_scale = hot_scale(options, lightest, train_rows(ctx))
        self.hot_rows: dict[str, int] = dict(zip(ctx.feature_names, hot))
        self.tail_rows = tail
        self._position = {n: i for i, n in enumerate(ctx.feature_names)}
        self.register_buffer("_hot", torch.tensor(hot, dtype=torch.int64), persistent=False)
        salts = [[tail_salt(n, j) for j in range(probes)] for n in ctx.feature_names]
        self.register_buffer("_salts", torch.tensor(salts, dtype=torch.int64), persistent=False)  # [F, P]
        self.register_buffer("_mean", torch.tensor([f.pooling == PoolingType.MEAN for f in ctx.features]), persistent=False)
        tables = [
            EmbeddingBagConfig(
                name=f"{f.name}@hot",
                num_embeddings=h,
                embedding_dim=ctx.embedding_dim,
                feature_names=[f"{f.name}@hot"],
                pooling=PoolingType.SUM,
                weight_init_max=hot_init(c),
                weight_init_min=-hot_init(c),
            )
            for f, h, c in zip(ctx.features, hot, cards)
        ]
        if tail:
            tables.append(
                EmbeddingBagConfig(
                    name=TAIL,
                    num_embeddings=tail,
                    embedding_dim=self.tail_dim,
                    feature_names=[tail_key(n, j) for j in range(probes) for n in ctx.feature_names],
                    pooling=PoolingType.SUM,
                )
            )
        self.ebc = EmbeddingBagCollection(tables=tables, is_weighted=ctx.any_weighted)

    @staticmethod
    def _explicit(ctx: MethodContext, options: HybridOptions, cards: list[int]) -> tuple[list[int], int]:
        if options.hot_rows is None or options.tail_rows is None:
            raise ValueError("hybrid: give both 'hot_rows' and 'tail_rows', or neither")
        names = ctx.feature_names
        unknown, missing = sorted(set(options.hot_rows) - set(names)), [n for n in names if n not in options.hot_rows]
        if unknown or missing:
            raise ValueError(f"hybrid: 'hot_rows' must name every feature; unknown {unknown}, missing {missing}")
        hot = [options.hot_rows[n] for n in names]
        bad = [n for n, h, c in zip(names, hot, cards) if not min(c, RESERVED) <= h <= c]
        if bad:
            raise ValueError(f"hybrid: hot_rows of {bad} must be between the reserved rows and the cardinality")
        if options.tail_rows == 0 and any(h < c for h, c in zip(hot, cards)):
            raise ValueError("hybrid: tail_rows is 0 but some feature has values beyond its hot rows")
        return hot, options.tail_rows

    def shares_rows_across_features(self) -> bool:
        return self.tail_rows > 0

    def _per_key(self, table: torch.Tensor, keys: list[str]) -> torch.Tensor:
        if keys == self.ctx.feature_names:
            return table
        return table[torch.tensor([self._position[k] for k in keys], device=table.device)]

    def split(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The KJT of table rows: keys ``f@hot`` (the index) for every feature, then each probe's
        ``tail_key(f, j)`` (the hashed rows of its tail values)."""
        keys, values = features.keys(), features.values()
        if not self.tail_rows:
            return KeyedJaggedTensor(
                keys=[f"{k}@hot" for k in keys],
                values=values,
                weights=features.weights_or_none(),
                lengths=features.lengths(),
                stride=features.stride(),
            )
        lengths = features.lengths().long()
        counts = torch.tensor(features.length_per_key(), device=values.device)
        n, f = values.numel(), len(keys)
        position = torch.repeat_interleave(torch.arange(f, device=values.device), counts, output_size=n)
        is_tail = values >= self._per_key(self._hot, keys)[position]
        bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths, output_size=n)
        tail_len = torch.zeros_like(lengths).scatter_add_(0, bag, is_tail.long())
        order = torch.sort(position + f * is_tail.long(), stable=True).indices  # hot values by feature, then tail ones
        hot_n = n - int(is_tail.sum())
        ordered, tail_position = values[order], position[order][hot_n:]
        salts, size = self._per_key(self._salts, keys), torch.full_like(ordered[hot_n:], self.tail_rows)
        probes = [bucket_per_value(ordered[hot_n:], salts[tail_position, j], size) for j in range(self.tail_probes)]
        weights = features.weights_or_none()
        if weights is not None:
            weights = weights[order]
            weights = torch.cat([weights[:hot_n], *[weights[hot_n:]] * self.tail_probes])
        return KeyedJaggedTensor(
            keys=[f"{k}@hot" for k in keys] + [tail_key(k, j) for j in range(self.tail_probes) for k in keys],
            values=torch.cat([ordered[:hot_n], *probes]),
            weights=weights,
            lengths=torch.cat([lengths - tail_len, *[tail_len] * self.tail_probes]).to(features.lengths().dtype),
            stride=features.stride(),
        )

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Hot plus tail pooled vectors of each feature, keyed by feature name in context order."""
        if features.stride() == 0:
            return empty_output(self, features.values())
        parts = self.ebc(self.split(features)).to_dict()
        if self.hot_scale != 1:
            parts |= {f"{n}@hot": parts[f"{n}@hot"] * self.hot_scale for n in self.ctx.feature_names}
        names, batch = self.ctx.feature_names, features.stride()
        if self.tail_rows:
            probes = range(self.tail_probes)
            out = torch.stack([parts[f"{n}@hot"] + torch.cat([parts[tail_key(n, j)] for j in probes], 1) for n in names], 1)
        else:
            out = torch.stack([parts[f"{n}@hot"] for n in names], 1)
        if bool(self._mean.any()):
            keys = features.keys()
            lengths = features.lengths().view(len(keys), batch).to(out.dtype)
            if keys != names:
                lengths = lengths[torch.tensor([keys.index(n) for n in names], device=lengths.device)]
            scale = torch.where(self._mean[:, None], 1.0 / lengths.clamp(min=1), torch.ones_like(lengths))
            out = out * scale.t()[:, :, None]
        return KeyedTensor(keys=names, length_per_key=[self.ctx.embedding_dim] * len(names), values=out.reshape(batch, -1))

    def memory_bytes(self) -> int:
        return ebc_bytes(self.ebc)

    def diagnostics(self) -> dict:
        hot, tail = sum(self.hot_rows.values()), self.tail_rows / self.tail_probes  # in D-wide rows
        return {
            "hot_rows": self.hot_rows,
            "tail_rows": self.tail_rows,
            "tail_probes": self.tail_probes,
            "hot_scale": self.hot_scale,
            "hot_share": hot / max(hot + tail, 1),
        }

    def export_options(self) -> dict[str, Any]:
        """The options with the chosen sizes and factor made explicit (serving needs no counts)."""
        return {
            **super().export_options(),
            "hot_share": None,
            "hot_rows": dict(self.hot_rows),
            "tail_rows": self.tail_rows,
            "tail_probes": self.tail_probes,
            "hot_scale": self.hot_scale,
        }
