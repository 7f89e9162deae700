"""Hostile converter input: rows longer than the parser's block, UTF-16 and binary files, raw
bytes in messages, and the temporary folders a SIGKILLed conversion leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recsys.data.convert as convert_module
import recsys.data.textreader as textreader
from recsys.cli import main
from recsys.data.convert import ConversionError, convert
from recsys.data.textreader import TextFormat, read_chunks
from recsys.features import load_dataset_spec
from recsys.hashing import hash64_str

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


def line(n: int, label: str = "0", columns: int = 40, **fields: str) -> str:
    """A Criteo line whose I1 is ``n`` (so a converted row tells its line); ``C5="..."`` sets a field."""
    values = [label, str(n), *[str(i) for i in range(12)], *[f"{i:08x}" for i in range(26)]]
    for name, value in fields.items():
        values[int(name[1:]) + (0 if name[0] == "I" else 13)] = value
    return "\t".join(values[:columns])


def write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def converted(out: Path) -> pa.Table:
    """Every converted row, sorted by I1 (its line number, stored as slog1p)."""
    spec = load_dataset_spec(out)
    table = pa.concat_tables([pq.read_table(out / f) for s in spec.splits.values() for f in s.files])
    return table.take(pa.array(np.argsort(table.column("I1").to_numpy())))


def i1_lines(table: pa.Table) -> list[int]:
    return np.rint(np.expm1(table.column("I1").to_numpy())).astype(int).tolist()


def test_a_9_mb_field_grows_the_block_and_is_converted(tmp_path):
    big = "ab" * (9 * MB // 2)
    src = write(tmp_path / "in.tsv", [line(1), line(2), line(3, C5=big), line(4), line(5)])
    spec = convert("criteo", src, tmp_path / "out", progress=False)  # the default 4 MiB block
    assert spec.bad_rows == 0
    table = converted(tmp_path / "out")
    assert i1_lines(table) == [1, 2, 3, 4, 5]
    assert table.column("C5__id").to_pylist()[2] == hash64_str(big)
    assert table.column("C5__id").to_pylist()[3] == hash64_str("00000004")


def test_a_20_mb_line_is_a_named_bad_row_and_skip_skips_it(tmp_path):
    long = line(3, C7="x" * (20 * MB))
    src = write(tmp_path / "in.tsv", [line(1), line(2), long, line(4), line(5, label="7")])
    with pytest.raises(ConversionError) as info:
        convert("criteo", src, tmp_path / "out", progress=False)
    err = info.value
    assert (err.file, err.line, err.field) == (str(src), 3, "(row)")
    assert f"line of {len(long) + 1:,} bytes, longer than the 16 MiB limit of one row" in str(err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    spec = convert("criteo", src, tmp_path / "out", progress=False, on_bad_row="skip")
    assert spec.bad_rows_by_reason == {"bad_label": 1, "line_too_long": 1}
    assert i1_lines(converted(tmp_path / "out")) == [1, 2, 4]


def test_line_numbers_stay_exact_across_long_lines(tmp_path, monkeypatch):
    """Lines longer than the block (grown), longer than the limit (dropped) and ragged lines,
    with small sizes: every kept row keeps its physical line."""
    kinds = {}
    lines = []
    for n in range(1, 301):
        kind = "ok" if n % 5 else "ragged"
        kind = {37: "long", 38: "long", 120: "too_long", 121: "long", 122: "ragged", 299: "too_long"}.get(n, kind)
        kinds[n] = kind
        value = {"ok": "x", "ragged": None, "long": "y" * 700, "too_long": "z" * 5000}[kind]
        lines.append(f"{n}" if value is None else f"{n}\t{value}")
    src = write(tmp_path / "t.tsv", lines)
    kept, dropped = [], []
    for chunk in read_chunks(src, TextFormat("\t", header=False), ["a", "b"], 16, block_size=256, max_row_bytes=2000):
        assert chunk.table.column("a").to_pylist() == [str(n) for n in chunk.lines]
        kept += chunk.lines.tolist()
        dropped += [(r.line, r.reason) for r in chunk.ragged]
    assert kept == [n for n, k in kinds.items() if k in ("ok", "long")]
    expected = {"ragged": "wrong_column_count", "too_long": "line_too_long"}
    assert sorted(dropped) == [(n, expected[k]) for n, k in kinds.items() if k in expected]

    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 2048)
    monkeypatch.setattr(textreader, "MAX_ROW_BYTES", 8192)
    rows = [line(n) for n in range(1, 61)]
    rows[9] = line(10, columns=12)
    rows[19] = line(20, C3="q" * 9000)
    rows[29] = line(30, C3="q" * 5000)
    src = write(tmp_path / "in.tsv", rows)
    with pytest.raises(ConversionError, match=r"line 10, field '\(row\)': expected 40 columns, found 12"):
        convert("criteo", src, tmp_path / "out", progress=False, chunk_rows=8)  # the first bad row wins
    rows[9] = line(10)
    with pytest.raises(ConversionError, match=rf"line 20, field '\(row\)': line of {len(rows[19]) + 1:,} bytes, longer than the 0.0078125 MiB"):
        convert("criteo", write(src, rows), tmp_path / "out", progress=False, chunk_rows=8)
    spec = convert("criteo", src, tmp_path / "out", progress=False, chunk_rows=8, on_bad_row="skip")
    assert spec.bad_rows_by_reason == {"line_too_long": 1}
    assert i1_lines(converted(tmp_path / "out")) == [n for n in range(1, 61) if n != 20]


def test_non_utf8_ragged_line_is_named_escaped_and_skippable(tmp_path):
    rows: list[str | bytes] = [line(n) for n in range(1, 401)]  # past the 64 KiB head check
    rows[299] = b"\xff\xfe\x80\x1b[2J junk"
    src = write(tmp_path / "in.tsv", rows)
    with pytest.raises(ConversionError) as info:
        convert("criteo", src, tmp_path / "out", progress=False)
    assert (info.value.line, info.value.field) == (300, "(row)")
    assert "expected 40 columns, found 1 (and the line is not valid UTF-8)" in str(info.value)
    spec = convert("criteo", src, tmp_path / "out", progress=False, on_bad_row="skip")
    assert spec.bad_rows_by_reason == {"wrong_column_count": 1}
    assert i1_lines(converted(tmp_path / "out")) == [n for n in range(1, 401) if n != 300]
    cli = subprocess.run(  # what a terminal shows: the error alone, not pyarrow's report of the undecodable row
        [sys.executable, "-m", "recsys.cli", "data", "convert", "--format", "criteo", "--input", str(src), "--out", str(tmp_path / "o2")],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
    )
    assert cli.returncode == 2
    err = cli.stderr.decode("utf-8")  # strict: no raw input bytes
    assert err.endswith(f"error: {src}, line 300, field '(row)': expected 40 columns, found 1 (and the line is not valid UTF-8)\n")
    assert "\x1b" not in err and "UnicodeDecodeError" not in err and "Traceback" not in err


def test_raw_bytes_in_a_bad_value_are_escaped_in_the_message(tmp_path):
    src = write(tmp_path / "in.tsv", [line(1), line(2, I2="\x1b[31m\xe9" + "9" * 500).encode().replace(b"\xc3\xa9", b"\xff")])
    with pytest.raises(ConversionError) as info:
        convert("criteo", src, tmp_path / "out", progress=False)
    text = str(info.value)
    assert "line 2, field 'I2': non-numeric dense value '\\x1b[31m\\xff999" in text and text.endswith("... (506 characters)")
    assert text.isprintable()


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("utf-16", "input is UTF-16 (little-endian) text (byte-order mark FF FE), expected UTF-8; convert it to UTF-8 first, e.g. `iconv -f UTF-16"),
        ("utf-16-be", "input looks like UTF-16BE text without a byte-order mark (every other byte is NUL), expected UTF-8"),
        ("utf-32", "input is UTF-32 (little-endian) text (byte-order mark FF FE 00 00)"),
    ],
)
def test_utf16_input_is_refused_naming_the_file(tmp_path, encoding, text):
    for fmt, name, body in (("criteo", "in.tsv", line(1) + "\n"), ("avazu", "in.csv", "id,click,hour\n1,0,14102100\n")):
        src = tmp_path / name
        src.write_text(body * 20, encoding=encoding)
        with pytest.raises(ConversionError) as info:
            convert(fmt, src, tmp_path / "out", progress=False)
        assert info.value.file == str(src) and str(info.value).startswith(f"{src}: {text}")


def test_binary_input_is_refused_without_echoing_it(tmp_path, capsys):
    src = tmp_path / "in.tsv"
    src.write_bytes(bytes(range(256)) * 8 + b"\x1b]0;pwned\x07")
    assert main(["data", "convert", "--format", "criteo", "--input", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {src}: input looks binary (a NUL byte at offset 0), expected delimited UTF-8 text\n"


def test_a_sigkilled_conversion_leaves_a_temp_folder_that_the_next_run_removes(tmp_path, capsys):
    src = write(tmp_path / "in.tsv", [line(n, label=str(n % 2)) for n in range(60_000)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "data", "convert", "--format", "criteo", "--input", str(src), "--out", str(tmp_path / "ds")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stale = tmp_path / f".ds.tmp-{proc.pid}"
    deadline = time.monotonic() + 120
    while not stale.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert stale.is_dir() and not (tmp_path / "ds").exists()  # what a SIGKILL leaves
    live = tmp_path / f".ds.tmp-{os.getppid()}"  # a running process's folder is left alone
    live.mkdir()
    spec = convert("criteo", src, tmp_path / "ds", progress=False)
    assert spec.splits["train"].rows > 0 and not stale.exists() and live.is_dir()
    err = capsys.readouterr().err
    assert f"removed stale temporary folder {stale} (" in err and f"MiB) left by conversion pid {proc.pid}, which is no longer running" in err


def test_an_old_dataset_left_between_the_renames_is_restored(tmp_path, capsys):
    src = write(tmp_path / "in.tsv", [line(n, label=str(n % 2)) for n in range(50)])
    first = convert("criteo", src, tmp_path / "ds", progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "ds").rename(tmp_path / f".ds.old-{dead.pid}")  # killed after moving the old dataset aside
    with pytest.raises(ConversionError, match="a dataset exists here"):
        convert("criteo", src, tmp_path / "ds", progress=False)
    assert load_dataset_spec(tmp_path / "ds") == first
    assert f"restored {tmp_path / 'ds'} from .ds.old-{dead.pid}" in capsys.readouterr().err
