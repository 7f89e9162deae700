"""What a conversion reads and how it splits: the input files (each with its split, when pre-split),
the split policy, and the split of each parsed row."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from recsys.data.errors import ConversionError
from recsys.data.formats import InputFormat, ParsedChunk, with_time_column
from recsys.data.inputs import count_lines, expand_inputs
from recsys.data.parquet_reader import parquet_rows
from recsys.data.splitting import SPLITS, SplitPolicy, assign_splits, order_splits, parse_cuts, time_splits

InputPaths = Path | str | Sequence[Path | str]


def input_files(input_path: InputPaths | None, presplit: Mapping[str, InputPaths] | None) -> list[tuple[Path, int | None]]:
    """``(file, its split or None)`` in reading order."""

    def listed(paths: InputPaths, what: str) -> list[Path]:
        return expand_inputs([paths] if isinstance(paths, (str, Path)) else list(paths), what)

    if presplit is None:
        if input_path is None:
            raise ConversionError("--input", "give input files, or train/valid/test files")
        return [(p, None) for p in listed(input_path, "--input")]
    if input_path is not None:
        raise ConversionError("--input", "give either input files or train/valid/test files, not both")
    unknown = sorted(set(presplit) - set(SPLITS))
    missing = [s for s in SPLITS if not presplit.get(s)]
    if unknown or missing:
        raise ConversionError(
            "--train/--valid/--test",
            f"pre-split input needs files for each of train, valid and test "
            f"(missing: {', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'})",
        )
    files: list[tuple[Path, int | None]] = [(p, i) for i, s in enumerate(SPLITS) for p in listed(presplit[s], f"--{s}")]
    expand_inputs([p for p, _ in files], "--train/--valid/--test")  # a file under two splits is refused
    return files


def split_policy(
    layout: InputFormat,
    first: Path,
    presplit: bool,
    split_by: str,
    split: tuple[float, float, float],
    seed: int,
    time_column: str | None,
    time_cuts: Sequence[str] | None,
) -> tuple[SplitPolicy, InputFormat]:
    if split_by not in ("random", "order", "time"):
        raise ConversionError(first, f"split_by must be random, order or time, got '{split_by}'", field="split_by")
    if (split_by == "time") != (time_column is not None) or (time_column is None) != (time_cuts is None):
        raise ConversionError(first, "a split by time needs both a time column and two cut points", field="time_column")
    if presplit and split_by != "random":
        raise ConversionError(first, "pre-split input is already split; drop the split by order or time", field="split_by")
    if presplit:
        return SplitPolicy("presplit", split, seed), layout
    if split_by != "time":
        return SplitPolicy(split_by, split, seed), layout  # type: ignore[arg-type]
    assert time_column is not None and time_cuts is not None
    try:
        _, numeric = parse_cuts(list(time_cuts))
    except ValueError as exc:
        raise ConversionError(first, str(exc), field="time_cuts") from None
    layout = with_time_column(layout, time_column, numeric, first)
    return SplitPolicy("time", split, seed, time_column, (time_cuts[0], time_cuts[1])), layout


class Splitter:
    """The split of each parsed row under the policy, for one file after another."""

    def __init__(self, layout: InputFormat, files: list[tuple[Path, int | None]], policy: SplitPolicy) -> None:
        self.policy = policy
        self.first_line = 2 if layout.text is not None and layout.text.header else 1
        self.offsets: list[int] = []
        self.total = 0
        if policy.kind == "order":
            for path, _ in files:
                self.offsets.append(self.total)
                self.total += parquet_rows(path) if layout.text is None else count_lines(path, self.first_line == 2)
        self.cuts = parse_cuts(list(policy.cuts))[0] if policy.cuts is not None else None

    def __call__(self, parsed: ParsedChunk, file_index: int, role: int | None) -> np.ndarray:
        kind = self.policy.kind
        if kind == "presplit":
            assert role is not None
            return np.full(len(parsed), role, np.int8)
        if kind == "order":
            positions = parsed.lines - self.first_line + self.offsets[file_index]
            return order_splits(positions, self.total, self.policy.fractions)
        if kind == "time":
            assert parsed.times is not None and self.cuts is not None
            return time_splits(parsed.times, self.cuts)
        return assign_splits(parsed.lines, self.policy.seed, self.policy.fractions, file_index)
