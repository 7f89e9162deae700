"""Parallel block parsing and chunk pieces (``recsys.data.blocks``, ``read_chunks``): the serial reader's rows, lines and files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import recsys.data.convert as convert_module
import recsys.data.textreader as textreader
from recsys.data.blocks import MappedText
from recsys.data.convert import ConversionError, convert
from recsys.data.textreader import TextFormat, read_chunks

TSV = TextFormat("\t", header=False, quoting=False, null_values=("",))


def criteo_lines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for r in range(n):
        ints = [str(r)] + ["" if rng.random() < 0.2 else str(int(rng.integers(-3, 1000))) for _ in range(12)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 40 + 50 * k)):08x}" for k in range(26)]
        lines.append("\t".join([str(int(rng.random() < 0.3)), *ints, *cats]))
    return lines


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def chunks(path: Path, threads: int, block_size: int, piece_rows: int | None = None, fmt: TextFormat = TSV) -> list[tuple]:
    out = []
    for c in read_chunks(path, fmt, ["a", "b", "c"], 40, block_size=block_size, parse_threads=threads, piece_rows=piece_rows):
        out.append((c.table.to_pydict(), c.lines.tolist(), [(r.line, r.actual, r.reason) for r in c.ragged], c.ends_chunk))
    return out


def test_blocks_end_where_the_streaming_reader_ends_its_batches(tmp_path: Path) -> None:
    lines = [f"{i}\t{'v' * (i * 7 % 23)}\t1" for i in range(300)]
    src = tmp_path / "t.tsv"
    src.write_text("\n".join(lines) + "\n")
    mapped = MappedText.open(src)
    assert mapped is not None
    with mapped:
        blocks = list(mapped.blocks(0, 256))
    data = src.read_bytes()
    assert blocks[0].start == 0 and blocks[-1].end == len(data)
    assert all(a.end == b.start and data[a.end - 1 : a.end] == b"\n" for a, b in zip(blocks, blocks[1:]))
    serial = [len(c[1]) for c in chunks(src, 0, 256)]
    parallel = [len(c[1]) for c in chunks(src, 2, 256)]
    assert serial == parallel and sum(serial) == 300
    (tmp_path / "crlf.tsv").write_bytes(data.replace(b"\n", b"\r\n"))
    assert MappedText.open(tmp_path / "crlf.tsv") is None  # read serially
    (tmp_path / "empty.tsv").write_bytes(b"")
    assert MappedText.open(tmp_path / "empty.tsv") is None


def test_hostile_lines_give_the_serial_readers_chunks_with_1_and_2_threads(tmp_path: Path) -> None:
    """Ragged, empty, non-UTF-8, byte-order-marked and over-long lines, in every block: the same rows, lines,
    ragged rows and chunk cuts as the serial streaming reader."""
    rng = np.random.default_rng(5)
    lines = [b"\xef\xbb\xbf0\tq\tz"]
    for i in range(1, 400):
        r = rng.random()
        kind = [b"x\ty", b"", b"1\t\xff\t3\t4", b"\xef\xbb\xbf%d\tq\tz" % i, b"L" * int(rng.integers(300, 700)) + b"\t1\t2"]
        lines.append(kind[int(r * 100)] if r < 0.05 else b"%d\t%s\t%d" % (i, b"v" * int(rng.integers(0, 30)), i % 9))
    src = tmp_path / "h.tsv"
    src.write_bytes(b"\n".join(lines))  # no newline at the end
    for block_size in (128, 256, 1000):
        serial = chunks(src, 0, block_size)
        assert sum(len(c[1]) for c in serial) > 300
        assert chunks(src, 1, block_size) == serial
        assert chunks(src, 2, block_size) == serial


def test_pieces_add_up_to_the_chunks(tmp_path: Path) -> None:
    src = tmp_path / "p.tsv"
    src.write_text("".join(f"{i}\tb\tc\n" if i % 11 else "bad\n" for i in range(1, 500)))
    whole = chunks(src, 2, 200)
    pieces = chunks(src, 2, 200, piece_rows=12)
    assert len(pieces) > len(whole) and all(c[3] for c in whole)
    merged, current = [], ([], [], [])
    for table, lines, ragged, ends in pieces:
        current[0].extend(table["a"]), current[1].extend(lines), current[2].extend(ragged)
        if ends:
            merged.append(current)
            current = ([], [], [])
    assert merged == [(t["a"], lines, ragged) for t, lines, ragged, _ in whole]


def test_a_bad_row_in_a_later_block_is_named_with_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 4096)
    lines = criteo_lines(600)
    fields = lines[437].split("\t")
    lines[437] = "\t".join(fields[:2] + ["not-a-number"] + fields[3:])  # I2 of line 438
    lines[512] = "1\t2\t3"  # ragged, after the bad value
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    assert src.stat().st_size > 20 * 4096  # many blocks
    with pytest.raises(ConversionError) as err:
        convert("criteo", src, tmp_path / "o", progress=False)
    assert (err.value.file, err.value.line, err.value.field) == (str(src), 438, "I2")
    assert "non-numeric dense value 'not-a-number'" in str(err.value)
    lines[437] = criteo_lines(600)[437]
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError) as err:
        convert("criteo", src, tmp_path / "o2", progress=False)
    assert (err.value.line, err.value.field) == (513, "(row)") and "expected 40 columns, found 3" in str(err.value)


def test_the_dataset_is_the_same_with_parallel_blocks_and_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Criteo with bad rows skipped (blocks on 2 threads) and CSV with train statistics (pieces): the same files byte for byte."""
    lines = criteo_lines(1500, seed=3)
    for i in (3, 700, 701, 1499):
        lines[i] = "1\tonly\tthree"
    fields = lines[900].split("\t")
    lines[900] = "\t".join(fields[:3] + ["x1"] + fields[4:])
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    csv = tmp_path / "a.csv"
    rng = np.random.default_rng(1)
    csv.write_text("y,price,user\n" + "".join(f"{i % 2},{rng.lognormal(2, 1):.3f},u{i % 17}\n" for i in range(1200)))
    schema = tmp_path / "s.yaml"
    schema.write_text("label: y\ndense: [price]\nsparse: [user]\ntransforms: {price: standardize}\n")
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 1024)  # many blocks, several per piece
    results = {}
    for threads, pieces in ((0, 1), (2, 4), (1, 7)):
        monkeypatch.setattr(textreader, "PARSE_THREADS", threads)
        monkeypatch.setattr(convert_module, "PIECES", pieces)
        out = tmp_path / f"criteo-{threads}-{pieces}" / "ds"
        spec = convert("criteo", src, out, on_bad_row="skip", chunk_rows=300, rows_per_file=500, progress=False)
        assert spec.bad_rows == 5
        csv_out = tmp_path / f"csv-{threads}-{pieces}" / "ds"
        convert("csv", csv, csv_out, schema_path=schema, chunk_rows=250, progress=False)
        results[threads, pieces] = (digests(out), digests(csv_out))
    first = results[0, 1]
    assert len(first[0]) > 30 and len(first[1]) >= 5
    assert all(r == first for r in results.values())
