"""The fast path for plain text (``recsys.data.fastparse`` behind ``recsys.data.fastrows``) against pyarrow's reader
and the converter's checks: the same values bit for bit where it parses, and today's rows, errors and files where it declines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import recsys.data.convert as convert_module
from recsys.data.convert import ConversionError, convert
from recsys.data.fastrows import FastRows, RowBuffer
from recsys.data.formats import CRITEO_DENSE, CRITEO_SPARSE, InputFormat, open_format
from recsys.data.textreader import TextFormat, read_chunks
from recsys.data.typed import dense_values
from recsys.hashing import hash64_strings
from tests.convert_support import assert_same_without, digests

pytest.importorskip("recsys.data.fastparse", reason="the C extension is not built (pip install -e .); scripts/check_install.py fails then")
NAMES = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
ODD_LABELS = ["", "2", "-1", "1.0", "01", " 1", "+1", "0 "]
ODD_DENSE = ["+1", "1.5", "1e5", "-", "nan", "inf", " 3", "3 ", "0x1f", "1" * 19, "-" + "9" * 19, "é", '"7"']
ODD_SPARSE = ["é", "\xff", "a\x01b", "\x0b"]
HOSTILE = ["\r", "\x00", "a\rb"]  # not in files: a carriage return turns the fast path off, a NUL up front refuses the file


def _dense(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.2:
        return ""
    if r < 0.25:
        return str(rng.choice(["-0", "007", "-007", "0", "9" * 18, "-" + "9" * 18, "9007199254740993", "123456789012345678"]))
    digits = str(int(rng.integers(0, 10 ** int(rng.integers(1, 19)))))
    return ("-" if rng.random() < 0.2 else "") + digits


def _sparse(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.1:
        return ""
    if r < 0.15:
        return str(rng.choice(['"ab"', '"', "a b", "~", "\x7f", "x" * 300, ",;'"]))  # unquoted text: quotes are data
    return f"{int(rng.integers(0, 1 << 32)):08x}"


def _line(rng: np.random.Generator, odd: float, hostile: bool = False) -> bytes:
    cols = [str(int(rng.random() < 0.3)), *[_dense(rng) for _ in CRITEO_DENSE], *[_sparse(rng) for _ in CRITEO_SPARSE]]
    if rng.random() < odd:
        kind = int(rng.integers(6))
        if kind == 0:
            cols[0] = str(rng.choice(ODD_LABELS))
        elif kind == 1:
            cols[int(rng.integers(1, 14))] = str(rng.choice(ODD_DENSE))
        elif kind == 2:
            cols[int(rng.integers(14, 40))] = str(rng.choice(ODD_SPARSE + HOSTILE if hostile else ODD_SPARSE))
        elif kind == 3:
            cols = cols[: int(rng.integers(1, 40))] if rng.random() < 0.5 else [*cols, "extra"]  # ragged
        elif kind == 4:
            cols = [""] * 40  # a blank row (every column empty)
        else:
            cols = [""]  # an empty line
    return "\t".join(cols).encode().replace("\xff".encode(), b"\xff")  # a raw 0xff byte: not UTF-8


def _criteo(tmp_path: Path) -> InputFormat:
    probe = tmp_path / "probe.tsv"
    probe.write_bytes(b"0" + b"\t" * 39 + b"\n")
    return open_format("criteo", probe, None)


def _reference(layout: InputFormat, data: bytes) -> tuple[pa.Table, int]:
    """The block as pyarrow's reader gives it (strings, '' null) and the number of ragged rows it drops."""
    ragged: list[int] = []
    table = pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=NAMES, use_threads=False),
        parse_options=pacsv.ParseOptions(
            delimiter="\t", quote_char=False, ignore_empty_lines=False, invalid_row_handler=lambda row: ragged.append(1) or "skip"
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in NAMES}, strings_can_be_null=True, check_utf8=False, null_values=[""]
        ),
    )
    return table, len(ragged)


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def test_blocks_parse_bit_for_bit_as_pyarrow_and_the_checks_or_are_declined(tmp_path: Path) -> None:
    layout = _criteo(tmp_path)
    fast = layout.fast()
    assert fast is not None and fast.roles == "l" + "d" * 13 + "s" * 26
    rng = np.random.default_rng(7)
    accepted = declined = 0
    for trial in range(240):
        odd = 0.0 if trial % 3 == 0 else 0.05
        lines = [_line(rng, odd, hostile=True) for _ in range(int(rng.integers(1, 40)))]
        data = b"\n".join(lines) + (b"\n" if trial % 4 else b"")  # every fourth block ends without a newline
        if not data:
            continue
        buffer = RowBuffer(fast, capacity=int(rng.integers(1, 8)))  # grows while parsing
        buffer.rows = held = int(rng.integers(0, buffer.capacity))  # rows already held stay as they are
        before = buffer.sparse[:, :held].copy()
        n = buffer.parse(data)
        table, ragged = _reference(layout, data)
        parsed, issues = layout.parse(table, np.arange(table.num_rows))
        if n is None:
            declined += 1
            assert trial % 3, "a plain block was declined"
            continue
        accepted += 1
        assert ragged == 0 and not any(i.mask.any() for i in issues) and len(parsed) == n == table.num_rows
        assert _bits(buffer.sparse[:, :held]) == _bits(before)
        rows = buffer.take()
        assert rows.num_rows == held + n and buffer.rows == 0
        got = layout.parse(FastRows(rows.label[held:], [d[held:] for d in rows.dense], [s[held:] for s in rows.sparse]), parsed.lines)[0]
        assert _bits(got.label) == _bits(parsed.label)
        assert all(_bits(a) == _bits(b) for a, b in zip(got.dense, parsed.dense))
        assert all(_bits(a.ids) == _bits(b.ids) for a, b in zip(got.sparse, parsed.sparse))
        for i, name in enumerate(CRITEO_DENSE):  # the raw values too (NaN for missing, -0.0 kept)
            assert _bits(rows.dense[i][held:]) == _bits(dense_values(table.column(name).combine_chunks())[0])
    assert accepted > 100 and declined > 40


def _write(path: Path, lines: list[bytes], end: bytes = b"\n") -> Path:
    path.write_bytes(b"\n".join(lines) + end)
    return path


def _without_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InputFormat, "fast", lambda self: None)


def test_a_file_of_fast_and_declined_blocks_converts_to_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    lines = [_line(rng, 0.01) for _ in range(1500)]
    lines[0] = b"\xef\xbb\xbf" + lines[0]  # a byte-order mark: the first block goes through pyarrow
    src = _write(tmp_path / "in.txt", lines, end=b"")
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 2048)  # about 8 lines a block
    kinds = [type(c.table).__name__ for c in read_chunks(src, layout_text(tmp_path), NAMES, 300, block_size=2048, fast=_criteo(tmp_path).fast())]
    assert kinds[0] == "Table" and kinds.count("FastRows") > 3 and kinds.count("Table") > 3
    results = []
    for fast in (True, False):
        if not fast:
            _without_fast(monkeypatch)
        out = tmp_path / f"fast-{fast}" / "ds"
        spec = convert("criteo", src, out, on_bad_row="skip", chunk_rows=300, rows_per_file=500, progress=False)
        results.append((digests(out), spec.bad_rows, spec.bad_rows_by_reason))
    assert results[0] == results[1] and results[0][1] > 0 and len(results[0][0]) > 30


def layout_text(tmp_path: Path) -> TextFormat:
    text = _criteo(tmp_path).text
    assert text is not None
    return text


@pytest.mark.parametrize(
    "bad, line, field, words",
    [
        (b"1\t2\t3", 1301, "(row)", "expected 40 columns, found 3"),
        (None, 1301, "I4", "non-numeric dense value '1.5x'"),
        (b"\t" * 39, None, None, None),  # a blank row: skipped like a blank line, not an error
    ],
)
def test_a_bad_row_after_fast_blocks_is_named_with_its_true_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad, line, field, words) -> None:
    rng = np.random.default_rng(11)
    lines = [_line(rng, 0.0) for _ in range(1500)]
    if bad is None:
        cols = lines[1300].split(b"\t")
        bad = b"\t".join([*cols[:4], b"1.5x", *cols[5:]])
    lines[1300] = bad
    src = _write(tmp_path / "in.txt", lines)
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 4096)
    outcomes = []
    for fast in (True, False):
        if not fast:
            _without_fast(monkeypatch)
        try:
            spec = convert("criteo", src, tmp_path / f"o-{fast}" / "ds", chunk_rows=400, progress=False)
            outcomes.append(("ok", sum(s.rows for s in spec.splits.values()), digests(tmp_path / f"o-{fast}" / "ds")))
        except ConversionError as exc:
            outcomes.append(("error", str(exc), exc.line, exc.field))
    assert outcomes[0] == outcomes[1]
    if line is None:
        assert outcomes[0][:2] == ("ok", 1499)
    else:
        assert outcomes[0][2:] == (line, field) and words in outcomes[0][1] and str(src) in outcomes[0][1]


def test_a_carriage_return_anywhere_turns_the_fast_path_off(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    src = _write(tmp_path / "in.txt", [_line(rng, 0.0) for _ in range(200)], end=b"\r\n")
    chunks = list(read_chunks(src, layout_text(tmp_path), NAMES, 50, block_size=1024, fast=_criteo(tmp_path).fast()))
    assert sum(c.table.num_rows for c in chunks) == 200 and all(isinstance(c.table, pa.Table) for c in chunks)


def test_a_conversion_without_the_parser_writes_the_same_bytes_and_warns_once(tmp_path: Path) -> None:
    assert_same_without("recsys.data.fastparse", tmp_path, rows=3000, seed=4)


def test_without_a_label_column_a_blank_row_is_declined_and_others_parsed() -> None:
    from recsys.data.fastrows import FastLayout

    buffer = RowBuffer(FastLayout("ds", ","), capacity=2)
    assert buffer.parse(b"-0,\n,ab\n12,x") == 3 and buffer.parse(b"1,a\n,\n") is None and buffer.parse(b"1,\xc3\xa9\n") is None
    rows = buffer.take()
    assert _bits(rows.dense[0]) == _bits(np.array([-0.0, np.nan, 12.0])) and rows.num_rows == 3
    assert rows.sparse[0].tolist() == hash64_strings(["", "ab", "x"]).tolist()
