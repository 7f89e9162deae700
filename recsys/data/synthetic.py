"""Synthetic CTR data with planted ground truth, in the converted-data format (``recsys.features``).

Values. Sparse field ``f`` has ``n_f`` values; a row draws its value's popularity rank ``r``
from a discretised power law (density ``x^-s_f`` on ``[1, n_f + 1)``, ``r = floor(x) - 1``,
so ``P(r) ∝ (r+2)^(1-s_f) - (r+1)^(1-s_f)``; ``s_f`` is the profile's exponent with a per-field
jitter). Ranks are permuted into value numbers, so the raw value of rank ``r`` is the string
``"<field>_<perm_f[r]>"`` and its raw id ``hash64_strings`` of it. No sparse value is missing
(index 0 is never used). Dense fields are non-negative counts ``floor(exp(mu + sigma N))``,
missing with a per-field probability, stored as ``slog1p`` (missing -> 0), float32.

Teacher (``recsys.data.teacher``). Each value of rank ``r`` has an amplitude
``a_f(r) = min(1, P(r) / p_ref)^gamma``, so popular values carry full signal and rare ones
little; values with ``a < a_min`` (the tail) carry none. Per value: a first-order weight
``w_f(r) = g_f a_f(r) N(0, 1)`` and, in fields that interact, a latent vector
``v_f(r) = sqrt(g_f / k) a_f(r) N(0, I_k)`` (``g_f ~ U(0.2, 1)`` a field importance). The logit
is ``bias + alpha * z`` with

    z = c1 sum_f w_f + c2 sum_{(f,g) in P} <v_f, v_g> + c3 beta . dense + c4 tanh(kappa <v_a, v_b>)

where ``P`` is a few (``interaction_pairs``) field pairs drawn among the fields of at most
``interaction_max_cardinality`` values (low-rank, field-aware FM interactions, which a DLRM's
dot interaction can represent), ``beta . dense`` is linear in the stored dense values and
``(a, b)`` is the first pair of ``P`` (a saturating non-linearity, ``kappa`` = 1.5 / std of
the dot). On a pilot sample, ``c1..c4`` give the four parts the profile's variance ``shares``,
``alpha`` is set by bisection so the expected oracle AUC meets ``target_auc``, and ``bias`` so
the mean click probability meets ``target_ctr``. ``__prob`` is ``sigmoid(logit)`` as float32
and ``label = (u < __prob)``, ``u`` uniform.

Profiles (``PROFILES``): ``criteo``, 26 sparse fields C1..C26 of 3 to 10^6 values (those of
``scale_from`` = 10^5 or more are multiplied by ``scale``) and 13 dense I1..I13, 8 pairs among
the fields of at most 2000 values; ``small``, 8 sparse fields of 3..5000 values and 4 dense;
``small_real``, shaped like small public CTR sets: 10 sparse fields of 4..1500 values (4,468 in
all), Zipf exponent 1.2, 2 dense, meant for 50k-100k rows (no multi-valued field yet). All target
a 22% click rate; oracle AUC about 0.80 (``criteo``), 0.78 (``small``) and 0.78-0.79
(``small_real``, 80k rows, seed 0: test 0.7876, 4,405 vocabulary rows).

Generation runs in blocks of ``BLOCK_ROWS`` rows, each from its own seeded streams, so the data
depend on ``(profile, rows, seed, scale, split)`` only, never on ``chunk_rows`` (which only sets
row groups); the same arguments give byte-identical files. Pass 1 draws the sparse values and
counts them (train values seen at least ``min_count`` times give the vocabularies; rarer values,
and values first seen in valid or test, are OOV); pass 2 redraws the same values and writes everything. Memory: the teacher
(ids, counts and vocabulary indices per value, ``O(sum n_f)``; parameters for the head only),
a few chunks of rows, and 5 bytes per row for the exact oracle AUC.

Example:
    >>> spec = generate(Path("data/synth"), rows=1_000_000, profile="criteo", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from recsys.data.background import Background
from recsys.data.stages import (
    DICTIONARY_MAX_CARDINALITY,
    SPLITS,
    PartWriter,
    assign_splits,
)
from recsys.data.teacher import (
    PROFILES,
    STREAM_BAGS,
    STREAM_DENSE,
    STREAM_LABELS,
    STREAM_VALUES,
    Extras,
    SparseTeacher,
    SynthProfile,
    Teacher,
    build_teacher,
    sigmoid,
)
from recsys.data.tmpdirs import dataset_folder
from recsys.data.vocab import Vocabulary
from recsys.features import (
    LABEL_COLUMN,
    NUM_RESERVED,
    OOV_INDEX,
    PROB_COLUMN,
    DatasetSpec,
    FieldSpec,
    IdScheme,
    OracleMetrics,
    SplitSpec,
    id_column,
    save_dataset_spec,
)
from recsys.metrics import auc, logloss

__all__ = ["PROFILES", "SynthProfile", "Teacher", "build_teacher", "generate"]

BLOCK_ROWS = 1 << 16
THREADS = 2
DENSE_TRANSFORM = "slog1p"
VOCAB_DIR = "vocab"


@dataclass(frozen=True)
class _Run:
    """Arguments of one ``generate`` call."""

    profile_name: str
    profile: SynthProfile
    rows: int
    seed: int
    scale: float
    split: tuple[float, float, float]
    chunk_blocks: int
    rows_per_file: int
    progress: bool
    min_count: int = 1

    def chunks(self) -> list[range]:
        """Block numbers, grouped into chunks."""
        blocks = -(-self.rows // BLOCK_ROWS)
        return [range(b, min(b + self.chunk_blocks, blocks)) for b in range(0, blocks, self.chunk_blocks)]

    def block(self, b: int) -> tuple[np.random.Generator, int, np.ndarray]:
        """Value stream, row count and split (0 train, 1 valid, 2 test) of each row of block ``b``."""
        start = b * BLOCK_ROWS
        n = min(BLOCK_ROWS, self.rows - start)
        splits = assign_splits(np.arange(start, start + n, dtype=np.int64), self.seed, self.split)
        return np.random.default_rng([self.seed, STREAM_VALUES, b]), n, splits

    def extras(self, teacher: Teacher, b: int, n: int) -> Extras:
        """The bags' extra values of block ``b`` (none for profiles without multi-valued fields)."""
        return teacher.extras(np.random.default_rng([self.seed, STREAM_BAGS, b]), n) if teacher.multi else {}

    def bar(self, desc: str) -> tqdm:
        return tqdm(total=self.rows, desc=desc, unit="row", unit_scale=True, disable=not self.progress, file=sys.stderr)


@dataclass
class _Lookup:
    """Per sparse field: vocabulary index and raw id of each rank."""

    index: np.ndarray
    ids: np.ndarray
    vocab: Vocabulary


def generate(
    out_dir: Path,
    *,
    rows: int,
    profile: str | SynthProfile = "criteo",
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    chunk_rows: int = 200_000,
    scale: float = 1.0,
    progress: bool = True,
    overwrite: bool = False,
    rows_per_file: int = 1_000_000,
    min_count: int = 1,
) -> DatasetSpec:
    """Generate ``rows`` rows of ``profile`` (a name in ``PROFILES`` or a ``SynthProfile``) into
    the dataset folder ``out_dir``; returns its ``dataset.json``.

    The folder is built beside ``out_dir`` and renamed into place at the end. An existing
    dataset is replaced only with ``overwrite``; any other non-empty folder is refused.
    ``chunk_rows`` (rounded to whole blocks of ``BLOCK_ROWS``) only sets the work and row-group
    size; ``rows_per_file`` caps the rows of each Parquet part. Train values seen fewer than
    ``min_count`` times share the OOV row, as in the usual Criteo preprocessing (``min_count`` 10).
    """
    out_dir = Path(out_dir)
    run = _make_run(profile, rows, seed, split, chunk_rows, scale, rows_per_file, progress, min_count)
    with dataset_folder(out_dir, overwrite) as tmp:
        return _build(run, tmp, out_dir.name)


def _make_run(
    profile: str | SynthProfile,
    rows: int,
    seed: int,
    split: Sequence[float],
    chunk_rows: int,
    scale: float,
    rows_per_file: int,
    progress: bool,
    min_count: int = 1,
) -> _Run:
    if isinstance(profile, SynthProfile):
        name, settings = "custom", profile
    elif profile in PROFILES:
        name, settings = profile, PROFILES[profile]
    else:
        raise ValueError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    if rows < 1 or chunk_rows < 1 or rows_per_file < 1:
        raise ValueError("rows, chunk_rows and rows_per_file must be >= 1")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if len(split) != 3 or any(f < 0 for f in split) or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise ValueError(f"split must be 3 fractions >= 0 summing to 1, got {split}")
    if split[0] <= 0:
        raise ValueError("the train fraction must be > 0 (vocabularies come from train)")
    fractions = (float(split[0]), float(split[1]), float(split[2]))
    blocks = max(1, round(chunk_rows / BLOCK_ROWS))
    return _Run(name, settings, rows, seed, scale, fractions, blocks, rows_per_file, progress, min_count)


def _build(run: _Run, root: Path, name: str) -> DatasetSpec:
    teacher = build_teacher(run.profile, run.seed, run.scale)
    with ThreadPoolExecutor(THREADS) as pool:
        counts, seen = _count_values(run, teacher, pool)
        (root / VOCAB_DIR).mkdir()
        lookups = list(pool.map(_lookup, teacher.sparse, counts, seen, [root] * len(counts), [run.min_count] * len(counts)))
        counts.clear()
        seen.clear()
        splits = _write_splits(run, teacher, lookups, root, pool)
    spec = DatasetSpec(
        name=name,
        source="synthetic",
        fields=_fields(run, teacher, lookups),
        splits=splits,
        synthetic=_settings(run, teacher),
        id_scheme=IdScheme(min_count=run.min_count),
    )
    save_dataset_spec(spec, root)
    return spec


def _fields(run: _Run, teacher: Teacher, lookups: Sequence[_Lookup]) -> list[FieldSpec]:
    fields = [FieldSpec(name=n, kind="dense", transform=DENSE_TRANSFORM) for n in _dense_names(run)]
    for i, (f, lk) in enumerate(zip(teacher.sparse, lookups)):
        fields.append(
            FieldSpec(
                name=f.name,
                kind="sparse",
                cardinality=lk.vocab.cardinality,
                vocabulary=f"{VOCAB_DIR}/{f.name}.parquet",
                num_distinct=lk.vocab.num_distinct,
                multi_valued=i in teacher.multi,
            )
        )
    return fields


def _dense_names(run: _Run) -> list[str]:
    return [f"I{i + 1}" for i in range(run.profile.num_dense)]


def _settings(run: _Run, teacher: Teacher) -> dict:
    assert teacher.scales is not None
    return {
        "generator": "recsys.data.synthetic",
        "profile": run.profile_name,
        "rows": run.rows,
        "seed": run.seed,
        "scale": run.scale,
        "split": list(run.split),
        "min_count": run.min_count,
        "profile_settings": run.profile.model_dump(mode="json"),
        "teacher": {
            "alpha": teacher.alpha,
            "bias": teacher.bias,
            "kappa": teacher.kappa,
            "part_scales": teacher.scales.tolist(),
            "pairs": [[teacher.sparse[a].name, teacher.sparse[b].name] for a, b in teacher.pairs],
            "cardinalities": {f.name: f.cardinality for f in teacher.sparse},
            "head_sizes": {f.name: f.head for f in teacher.sparse},
            "zipf_exponents": {f.name: round(f.exponent, 6) for f in teacher.sparse},
        },
    }


def _count_values(run: _Run, teacher: Teacher, pool: ThreadPoolExecutor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pass 1: train counts and seen-anywhere flags of each rank of each field."""
    counts = [np.zeros(f.cardinality, np.int64) for f in teacher.sparse]
    seen = [np.zeros(f.cardinality, np.bool_) for f in teacher.sparse]

    def draw(b: int) -> tuple[np.ndarray, np.ndarray]:
        rng, n, splits = run.block(b)
        ranks, train = teacher.ranks(rng, n), splits == 0
        for i, (lengths, extra) in run.extras(teacher, b, n).items():
            _add_counts(counts[i], seen[i], extra, np.repeat(train, lengths))  # bags: the extra values
        return ranks, train

    with run.bar("synth: count values") as bar:
        for chunk in run.chunks():
            parts = [draw(b) for b in chunk] if teacher.multi else list(pool.map(draw, chunk))
            ranks = np.concatenate([p[0] for p in parts], axis=1)
            train = np.concatenate([p[1] for p in parts])
            list(pool.map(_add_counts, counts, seen, ranks, [train] * len(counts)))
            bar.update(ranks.shape[1])
    return counts, seen


def _add_counts(counts: np.ndarray, seen: np.ndarray, ranks: np.ndarray, train: np.ndarray) -> None:
    """Count the train ranks of one field and flag every rank seen."""
    counts += np.bincount(ranks[train], minlength=len(counts))
    seen[ranks] = True


def _lookup(field: SparseTeacher, counts: np.ndarray, seen: np.ndarray, root: Path, min_count: int) -> _Lookup:
    """Vocabulary (train values seen ``min_count`` times or more, by decreasing count, then id),
    written to ``vocab/``, and rank maps."""
    ids = np.zeros(field.cardinality, np.int64)
    seen_ranks = np.flatnonzero(seen)
    ids[seen_ranks] = field.raw_ids(seen_ranks)
    num_distinct = int(np.count_nonzero(counts))
    train_ranks = np.flatnonzero(counts >= min_count)
    train_ids, train_counts = ids[train_ranks], counts[train_ranks]
    order = np.lexsort((train_ids, -train_counts))
    index = np.full(field.cardinality, OOV_INDEX, np.int64)
    index[train_ranks[order]] = np.arange(len(order), dtype=np.int64) + NUM_RESERVED
    vocab = Vocabulary(train_ids[order], train_counts[order], num_distinct)
    vocab.write(root / VOCAB_DIR / f"{field.name}.parquet")
    return _Lookup(index, ids, vocab)


def _schema(run: _Run, teacher: Teacher) -> tuple[pa.Schema, list[str]]:
    """Columns of the Parquet parts, and those worth dictionary encoding."""
    dense = _dense_names(run)
    fields = [pa.field(LABEL_COLUMN, pa.float32())] + [pa.field(n, pa.float32()) for n in dense]
    dictionary = [LABEL_COLUMN, *dense]
    for i, f in enumerate(teacher.sparse):
        kind = pa.list_(pa.int64()) if i in teacher.multi else pa.int64()
        fields += [pa.field(f.name, kind), pa.field(id_column(f.name), kind)]
        if i not in teacher.multi and f.cardinality + NUM_RESERVED <= DICTIONARY_MAX_CARDINALITY:
            dictionary += [f.name, id_column(f.name)]
    fields.append(pa.field(PROB_COLUMN, pa.float32()))
    return pa.schema(fields), dictionary


def _block_tables(run: _Run, teacher: Teacher, lookups: Sequence[_Lookup], schema: pa.Schema, b: int) -> list[pa.Table]:
    """Pass 2: the rows of block ``b`` as one table per split (train, valid, test).

    Each table owns its buffers, so a split whose rows wait for a full row group holds only them.
    """
    rng, n, splits = run.block(b)
    ranks = teacher.ranks(rng, n)
    dense = teacher.dense(np.random.default_rng([run.seed, STREAM_DENSE, b]), n)
    extras = run.extras(teacher, b, n)
    bags = {i: _bag_ranks(ranks[i], *e) for i, e in extras.items()}
    prob = sigmoid(teacher.logits(ranks, dense, extras)).astype(np.float32)
    label = (np.random.default_rng([run.seed, STREAM_LABELS, b]).random(n) < prob).astype(np.float32)
    tables = []
    for s in range(len(SPLITS)):
        rows = np.flatnonzero(splits == s)
        arrays = [pa.array(label[rows])] + [pa.array(d[rows]) for d in dense]
        for i, (field_ranks, lk) in enumerate(zip(ranks[:, rows], lookups)):
            if i in bags:
                offsets, flat = bags[i]
                take = pa.array(rows)
                arrays += [
                    pa.ListArray.from_arrays(offsets, pa.array(lk.index[flat])).take(take),
                    pa.ListArray.from_arrays(offsets, pa.array(lk.ids[flat])).take(take),
                ]
                continue
            arrays += [pa.array(lk.index[field_ranks]), pa.array(lk.ids[field_ranks])]
        arrays.append(pa.array(prob[rows]))
        tables.append(pa.Table.from_arrays(arrays, schema=schema))
    return tables


def _bag_ranks(first: np.ndarray, lengths: np.ndarray, extra: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """List offsets and flat ranks of bags: each row's value, then its extra values."""
    offsets = np.zeros(len(first) + 1, np.int32)
    np.cumsum(1 + lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), np.int64)
    firsts = np.zeros(len(flat), np.bool_)
    firsts[offsets[:-1]] = True
    flat[firsts], flat[~firsts] = first, extra
    return pa.array(offsets), flat


def _write_splits(run: _Run, teacher: Teacher, lookups: Sequence[_Lookup], root: Path, pool: ThreadPoolExecutor) -> dict[str, SplitSpec]:
    """Pass 2 over all blocks: Parquet parts per split, with label rates and oracle metrics."""
    schema, dictionary = _schema(run, teacher)
    row_group = run.chunk_blocks * BLOCK_ROWS
    writers = [PartWriter(root, s, schema, run.rows_per_file, row_group, dictionary) for s in SPLITS]
    probs: list[list[np.ndarray]] = [[] for _ in SPLITS]
    labels: list[list[np.ndarray]] = [[] for _ in SPLITS]
    with run.bar("synth: write parquet") as bar, Background() as background:
        for chunk in run.chunks():
            for tables in pool.map(lambda b: _block_tables(run, teacher, lookups, schema, b), chunk):
                for s, (writer, table) in enumerate(zip(writers, tables)):
                    probs[s].append(table.column(PROB_COLUMN).to_numpy())
                    labels[s].append(table.column(LABEL_COLUMN).to_numpy() == 1)
                    background.submit(writer.write, table)
                bar.update(sum(t.num_rows for t in tables))
    files = [w.close() for w in writers]
    return {s: _split_spec(files[i], probs[i], labels[i]) for i, s in enumerate(SPLITS)}


def _split_spec(files: list[str], probs: list[np.ndarray], labels: list[np.ndarray]) -> SplitSpec:
    """Rows, exact label rate and oracle metrics of one split (no oracle with a single class)."""
    p = np.concatenate(probs) if probs else np.zeros(0, np.float32)
    y = np.concatenate(labels) if labels else np.zeros(0, np.bool_)
    clicks = int(np.count_nonzero(y))
    oracle = OracleMetrics(auc=auc(y, p), logloss=logloss(y, p)) if 0 < clicks < len(y) else None
    return SplitSpec(rows=len(y), files=files, label_rate=clicks / len(y) if len(y) else 0.0, oracle=oracle)
