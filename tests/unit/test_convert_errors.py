"""Bad input to the converter: messages naming file/line/field, skip counting, atomic output."""

from __future__ import annotations

from pathlib import Path

import pytest

import recsys.data.convert as convert_module
from recsys.data.convert import ConversionError, convert
from recsys.features import load_dataset_spec

GOOD = "\t".join(["0", *[str(i) for i in range(13)], *[f"{i:08x}" for i in range(26)]])


def criteo_line(label: str = "0", dense: dict[int, str] | None = None, columns: int = 40) -> str:
    fields = GOOD.split("\t")
    fields[0] = label
    for i, value in (dense or {}).items():
        fields[i] = value
    return "\t".join(fields[:columns] + ["x"] * max(0, columns - 40))


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize(
    ("bad_line", "line_no", "field", "text"),
    [
        (criteo_line(columns=39), 3, "(row)", "expected 40 columns, found 39"),
        (criteo_line(columns=41), 3, "(row)", "expected 40 columns, found 41"),
        (criteo_line(dense={2: "abc"}), 3, "I2", "non-numeric dense value 'abc'"),
        (criteo_line(dense={13: "inf"}), 3, "I13", "non-numeric dense value 'inf'"),
        (criteo_line(label="2"), 3, "label", "label must be 0 or 1, found '2'"),
        (criteo_line(label=""), 3, "label", "label must be 0 or 1"),
    ],
)
def test_criteo_bad_row_names_file_line_field(tmp_path: Path, bad_line: str, line_no: int, field: str, text: str) -> None:
    src = write(tmp_path / "day_0.tsv", [criteo_line(), criteo_line(), bad_line, criteo_line()])
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        convert("criteo", src, out, progress=False)
    err = info.value
    assert (err.file, err.line, err.field) == (str(src), line_no, field)
    assert f"{src}, line {line_no}, field '{field}'" in str(err) and text in str(err)
    assert_no_output(out)


def test_first_bad_row_wins_and_blank_lines_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 2048)
    lines = [criteo_line()] * 30 + [""] + [criteo_line()] * 30 + [criteo_line(dense={5: "1.5.2"}), criteo_line(columns=3)]
    src = write(tmp_path / "in.tsv", lines)
    with pytest.raises(ConversionError, match=r"line 62, field 'I5'"):
        convert("criteo", src, tmp_path / "out", progress=False, chunk_rows=8)
    lines[40] = criteo_line(columns=12)
    src = write(tmp_path / "in.tsv", lines)
    with pytest.raises(ConversionError, match=r"line 41, field '\(row\)': expected 40 columns, found 12"):
        convert("criteo", src, tmp_path / "out", progress=False, chunk_rows=8)


def test_skip_counts_bad_rows_by_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 2048)
    lines = [criteo_line(label=str(i % 2)) for i in range(50)]
    lines[3] = criteo_line(columns=38)
    lines[10] = criteo_line(dense={1: "x"}, label="7")
    lines[20] = criteo_line(dense={4: "--1"})
    lines[33] = criteo_line(label="yes")
    lines[49] = criteo_line(columns=2)
    src = write(tmp_path / "in.tsv", lines + [""])
    spec = convert("criteo", src, tmp_path / "out", on_bad_row="skip", progress=False, chunk_rows=7)
    assert spec.bad_rows == 5
    assert spec.bad_rows_by_reason == {"bad_dense": 1, "bad_label": 2, "wrong_column_count": 2}
    assert sum(s.rows for s in spec.splits.values()) == 45
    assert load_dataset_spec(tmp_path / "out") == spec


def test_all_rows_bad_or_empty_input_is_an_error(tmp_path: Path) -> None:
    cases = {
        "empty.tsv": ("criteo", [], "empty input"),
        "blank.tsv": ("criteo", ["", ""], "empty input"),
        "header_only.csv": ("avazu", ["id,click,hour,C1"], "empty input"),
        "all_bad.tsv": ("criteo", [criteo_line(columns=3)] * 3, "3 bad rows skipped"),
    }
    for name, (fmt, lines, text) in cases.items():
        path = tmp_path / name
        path.write_text("".join(line + "\n" for line in lines))
        with pytest.raises(ConversionError, match=text) as info:
            convert(fmt, path, tmp_path / f"out_{name}", on_bad_row="skip", progress=False)  # type: ignore[arg-type]
        assert info.value.file == str(path)
        assert_no_output(tmp_path / f"out_{name}")


def test_missing_file_unknown_format_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="no such file") as info:
        convert("criteo", tmp_path / "nope.tsv", tmp_path / "out", progress=False)
    assert info.value.file == str(tmp_path / "nope.tsv")
    src = write(tmp_path / "in.tsv", [criteo_line()])
    with pytest.raises(ConversionError, match="unknown format 'orc'") as info:
        convert("orc", src, tmp_path / "out", progress=False)  # type: ignore[arg-type]
    assert info.value.field == "format"
    with pytest.raises(ConversionError, match="split"):
        convert("criteo", src, tmp_path / "out", split=(0.5, 0.1, 0.1), progress=False)
    with pytest.raises(ConversionError, match="needs a schema"):
        convert("csv", src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")


def test_avazu_errors(tmp_path: Path) -> None:
    src = write(tmp_path / "a.csv", ["id,click,C1", "1,0,5"])
    with pytest.raises(ConversionError, match=r"line 1, field 'hour'"):
        convert("avazu", src, tmp_path / "out", progress=False)
    src = write(tmp_path / "b.csv", ["id,click,hour,C1", "1,0,14102100,5", "2,1,14103225,5"])
    with pytest.raises(ConversionError, match=r"b.csv, line 3, field 'hour': hour must be YYMMDDHH, found '14103225'"):
        convert("avazu", src, tmp_path / "out", progress=False)


def test_libfm_errors(tmp_path: Path) -> None:
    src = write(tmp_path / "a.fm", ["1 1:1", "0 2:x"])
    with pytest.raises(ConversionError, match=r"a.fm, line 2, field 'features': .* found '2:x'"):
        convert("libfm", src, tmp_path / "out", progress=False)
    src = write(tmp_path / "b.fm", ["1 1:1", "", "2 3:1"])
    with pytest.raises(ConversionError, match=r"b.fm, line 3, field 'label'"):
        convert("libfm", src, tmp_path / "out", progress=False)
    src = write(tmp_path / "c.fm", ["1 1:1", "1 7"])
    with pytest.raises(ConversionError, match=r"line 2, field 'features'"):
        convert("libfm", src, tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    ("schema", "key", "text"),
    [
        ("label: y\nsparse: [a]\ndelimter: ';'\n", "delimter", "Extra inputs are not permitted"),
        ("sparse: [a]\n", "label", "Field required"),
        ("label: y\nsparse: a\n", "sparse", "valid list"),
        ("label: y\nsparse: [a]\ndense: [a]\n", "columns", "listed under both"),
        ("label: y\nheader: false\nsparse: [a]\n", "columns", "required when header is false"),
        ("label: y\ndelimiter: ';;'\nsparse: [a]\n", "delimiter", "one character"),
        ("label: y\nsparse: [a__id]\n", "sparse", "reserved"),
        ("label: [y\n", None, "invalid YAML"),
    ],
)
def test_schema_errors_name_file_and_key(tmp_path: Path, schema: str, key: str | None, text: str) -> None:
    schema_path = tmp_path / "schema.yaml"
    schema_path.write_text(schema)
    src = write(tmp_path / "d.csv", ["y,a", "1,x"])
    with pytest.raises(ConversionError, match=text) as info:
        convert("csv", src, tmp_path / "out", schema_path=schema_path, progress=False)
    assert info.value.file == str(schema_path) and info.value.field == key


def test_schema_columns_must_match_header(tmp_path: Path) -> None:
    schema_path = tmp_path / "schema.yaml"
    schema_path.write_text("label: y\nsparse: [a, b]\n")
    src = write(tmp_path / "d.csv", ["y,a", "1,x"])
    with pytest.raises(ConversionError, match="missing from the header") as info:
        convert("csv", src, tmp_path / "out", schema_path=schema_path, progress=False)
    assert (info.value.file, info.value.line, info.value.field) == (str(src), 1, "b")
    src = write(tmp_path / "e.csv", ["y,a,b,extra", "1,x,y,z"])
    with pytest.raises(ConversionError, match="not listed") as info:
        convert("csv", src, tmp_path / "out", schema_path=schema_path, progress=False)
    assert (info.value.file, info.value.field) == (str(schema_path), "extra")


def test_output_is_atomic_and_not_overwritten_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ds"
    src = write(tmp_path / "in.tsv", [criteo_line(label=str(i % 2)) for i in range(40)])
    first = convert("criteo", src, out, progress=False)
    with pytest.raises(ConversionError, match="overwrite=True"):
        convert("criteo", src, out, progress=False)
    monkeypatch.setattr(convert_module, "BLOCK_SIZE", 2048)
    bad = write(tmp_path / "bad.tsv", [criteo_line()] * 60 + [criteo_line(label="3")])
    with pytest.raises(ConversionError, match="line 61"):
        convert("criteo", bad, out, progress=False, overwrite=True, chunk_rows=8)
    assert load_dataset_spec(out) == first, "a failed conversion leaves the old dataset alone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv", "ds", "in.tsv"]
    second = convert("criteo", src, out, progress=False, overwrite=True, seed=1)
    assert load_dataset_spec(out) == second
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty"):
        convert("criteo", src, tmp_path / "other", progress=False, overwrite=True)
    (tmp_path / "empty").mkdir()
    assert convert("criteo", src, tmp_path / "empty", progress=False).splits["train"].rows > 0
