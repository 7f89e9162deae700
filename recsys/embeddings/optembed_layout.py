"""How a base method's tables make up its features' outputs, and dropping pruned ids.

OptEmbed works on the rows of the base's tables. A supported base outputs, per feature, the
concatenation (in probe order) of the pooled rows of its table-input keys, each key named
``f`` or ``f#<probe>``: ``full`` (one key per feature) and ``unified`` (one key per probe
into a shared sub-table, or one exact table) do. ``TableLayout`` reads that from the base's
EBC configs; ``drop_pruned`` removes the ids of pruned rows from the KJT going into the EBC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings.base import BYTES_PER_WEIGHT
from recsys.embeddings.optembed_export import rank_bitmap_bytes


@dataclass(frozen=True)
class Segment:
    """One pooled table row inside a feature's output: columns ``start .. start+width``."""

    key: str  # the table-input key (``f`` or ``f#probe``)
    table: int
    feature: int
    start: int
    width: int


def _owner(key: str, names: set[str]) -> tuple[str, int]:
    """``(feature, probe)`` of a table-input key: ``f`` (probe 0) or ``f#<probe>``."""
    if key in names:
        return key, 0
    name, sep, probe = key.rpartition("#")
    if sep and probe.isdigit() and name in names:
        return name, int(probe)
    raise ValueError(f"optembed: table key '{key}' names no feature; the base's keys must be 'f' or 'f#probe'")


class TableLayout:
    """Which table rows make up each feature's output (a base whose widths do not add up is rejected)."""

    def __init__(self, names: list[str], widths: list[int], configs: Sequence[EmbeddingBagConfig]) -> None:
        self.configs = list(configs)
        self.tables = [c.name for c in self.configs]
        self.rows = [int(c.num_embeddings) for c in self.configs]
        self.table_width = [int(c.embedding_dim) for c in self.configs]
        owned: dict[str, list[tuple[int, str, int]]] = {n: [] for n in names}
        for t, c in enumerate(self.configs):
            for key in c.feature_names:
                name, probe = _owner(key, set(names))
                owned[name].append((probe, key, t))
        self.segments: list[Segment] = []
        for f, name in enumerate(names):
            start = 0
            for _, key, t in sorted(owned[name]):
                self.segments.append(Segment(key, t, f, start, self.table_width[t]))
                start += self.table_width[t]
            if start != widths[f]:
                raise ValueError(f"optembed: feature '{name}' is {widths[f]} wide but its table rows add up to {start}")
        self.table_features = [sorted({s.feature for s in self.segments if s.table == t}) for t in range(len(self.tables))]
        row_widths = {s.width for s in self.segments}
        self.row_width = row_widths.pop() if len(row_widths) == 1 else None  # set when every row is equally wide
        starts = [sum(self.rows[:t]) for t in range(len(self.tables))]
        self.key_start = {k: starts[t] for t, c in enumerate(self.configs) for k in c.feature_names}  # in a flat row mask

    def columns(self) -> dict[str, torch.Tensor]:
        """Per output column: its feature, its offset in the feature, its segment; per segment: its feature."""
        col_feature, col_offset, col_segment = [], [], []
        for i, s in enumerate(self.segments):
            col_feature += [s.feature] * s.width
            col_offset += list(range(s.start, s.start + s.width))
            col_segment += [i] * s.width
        return {
            "col_feature": torch.tensor(col_feature),
            "col_offset": torch.tensor(col_offset),
            "col_segment": torch.tensor(col_segment),
            "segment_feature": torch.tensor([s.feature for s in self.segments]),
        }

    def stored_bytes(self, dims: Sequence[int], kept: Sequence[int] | None = None) -> int:
        """fp32 bytes of the tables at ``dims`` with ``kept`` rows each (default: all), plus the
        rank bitmap of every stored table with pruned rows."""
        rows = kept if kept is not None else self.rows
        total = 0
        for t, width in enumerate(self.stored_widths(dims)):
            if width:
                total += rows[t] * width * BYTES_PER_WEIGHT
                total += rank_bitmap_bytes(self.rows[t]) if rows[t] < self.rows[t] else 0
        return total

    def sparsity(self, dims: Sequence[int], kept: Sequence[int] | None = None) -> float:
        """``1 − Σ_t kept_t × stored columns_t / Σ_t rows_t × width_t``."""
        rows = kept if kept is not None else self.rows
        stored = sum(r * w for r, w in zip(rows, self.stored_widths(dims)))
        return 1.0 - stored / sum(r * w for r, w in zip(self.rows, self.table_width))

    def stored_widths(self, dims: Sequence[int]) -> list[int]:
        """Columns each table must keep so every feature gets its first ``dims[f]`` columns."""
        widths = [0] * len(self.tables)
        for s in self.segments:
            widths[s.table] = max(widths[s.table], min(max(dims[s.feature] - s.start, 0), s.width))
        return widths


def drop_pruned(kjt: KeyedJaggedTensor, row_mask: torch.Tensor, key_start: dict[str, int]) -> KeyedJaggedTensor:
    """``kjt`` (table-input ids) without the ids whose row is pruned.

    Args:
        kjt: the KJT going into the EBC.
        row_mask: kept rows of every table, concatenated.
        key_start: offset in ``row_mask`` of the table each key reads.
    """
    values, lengths, weights = kjt.values(), kjt.lengths(), kjt.weights_or_none()
    device = values.device
    start = torch.tensor([key_start[k] for k in kjt.keys()], device=device)
    keep = row_mask[values + torch.repeat_interleave(start, torch.tensor(kjt.length_per_key(), device=device))]
    bags = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths.long())
    new_lengths = torch.bincount(bags[keep], minlength=lengths.numel()).to(lengths.dtype)
    return KeyedJaggedTensor(
        keys=kjt.keys(),
        values=values[keep],
        lengths=new_lengths,
        stride=kjt.stride(),
        weights=weights[keep] if weights is not None else None,
    )
