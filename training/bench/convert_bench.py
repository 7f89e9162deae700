"""Conversion and batch-building throughput on a Criteo-format file.

Builds a file of at least ``--rows`` rows (copies of ``../shared/data/criteo_kaggle_sample_10k.tsv``
when that exists, else random Criteo-format rows), converts it in a child process (rows/s and
the child's peak RSS), then times ``ParquetBatchReader`` over the train split at batch 2048
for both id schemes. Prints a report and writes ``bench_out/convert.json``.

Usage: ``python -m recsys.training.bench.convert_bench [--rows 1000000] [--random] [--workdir /tmp/x] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SAMPLE = Path("..") / "shared" / "data" / "criteo_kaggle_sample_10k.tsv"  # beside the folder it runs from
TARGETS = {"convert_rows_per_s": 250_000, "peak_rss_gib": 2.0, "batch_rows_per_s": 1_000_000}
_FIELD_CARDINALITIES = [
    1_400,
    550,
    1_000_000,
    200_000,
    300,
    24,
    12_000,
    600,
    3,
    90_000,
    5_000,
    800_000,
    3_000,
    27,
    10_000,
    500_000,
    10,
    4_500,
    2_000,
    4,
    700_000,
    17,
    15,
    250_000,
    100,
    60_000,
]


def _random_column(rng: np.random.Generator, n: int, card: int, empty: float, hex_values: bool) -> pa.Array:
    """Skewed values from a table of ``card`` strings, '' with probability ``empty``."""
    table = [f"{v:08x}" if hex_values else str(v) for v in rng.permutation(card * 3)[:card]] + [""]
    index = np.minimum((card * rng.random(n) ** 3).astype(np.int64), card - 1)
    index[rng.random(n) < empty] = card
    return pa.array(table).take(pa.array(index))


def write_random_criteo(path: Path, rows: int, seed: int = 0, block: int = 200_000) -> int:
    """Random rows in Criteo Kaggle TSV format; returns the number of rows written."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            cols = [pa.array(np.where(rng.random(n) < 0.25, "1", "0"))]
            cols += [_random_column(rng, n, 2_000, 0.2, hex_values=False) for _ in range(13)]
            cols += [_random_column(rng, n, card, 0.05, hex_values=True) for card in _FIELD_CARDINALITIES]
            lines = pc.binary_join_element_wise(*cols, "\t")
            f.write(("\n".join(lines.to_pylist()) + "\n").encode())
    return rows


def build_input(path: Path, rows: int, random_rows: bool = False) -> tuple[int, str]:
    """Write the benchmark input; returns (rows, where they came from)."""
    if SAMPLE.is_file() and not random_rows:
        sample = SAMPLE.read_bytes()
        per_copy = sample.count(b"\n")
        copies = -(-rows // per_copy)
        with open(path, "wb") as f:
            for _ in range(copies):
                f.write(sample)
        return copies * per_copy, f"{copies} copies of {SAMPLE.name}"
    return write_random_criteo(path, rows), "random Criteo-format rows"


def child_convert(input_path: Path, out_dir: Path, result_path: Path) -> None:
    """Run in the child process: convert and write timing JSON."""
    from recsys.data.convert import convert

    rss_before = _rss_mib()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    spec = convert("criteo", input_path, out_dir, progress=False)
    seconds = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    rows = sum(s.rows for s in spec.splits.values())
    cpu = {"user_s": end.ru_utime - usage.ru_utime, "sys_s": end.ru_stime - usage.ru_stime}
    result_path.write_text(json.dumps({"rows": rows, "seconds": seconds, "rss_before_convert_mib": rss_before, **cpu}))


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_conversion(input_path: Path, out_dir: Path, workdir: Path) -> dict:
    """Convert in a child process; wall time, rows/s and the child's peak RSS."""
    result_path = workdir / "child.json"
    cmd = [sys.executable, "-m", "recsys.training.bench.convert_bench", "--child", str(input_path), str(out_dir), str(result_path)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    child = json.loads(result_path.read_text())
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "rows": child["rows"],
        "convert_seconds": round(child["seconds"], 3),
        "convert_rows_per_s": round(child["rows"] / child["seconds"]),
        "process_wall_seconds": round(wall, 3),
        "convert_user_s": round(child["user_s"], 2),  # CPU of all the conversion's threads
        "convert_sys_s": round(child["sys_s"], 2),
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "rss_before_convert_mib": round(child["rss_before_convert_mib"], 1),
    }


def batch_throughput(folder: Path, id_scheme: str, batch_size: int = 2048, repeats: int = 2) -> dict:
    """Rows/s of ``ParquetBatchReader`` over the shuffled train split: best of ``repeats`` passes after a warm-up."""
    from recsys.data.batch import BatchLayout, ParquetBatchReader
    from recsys.features import load_dataset_spec

    layout = BatchLayout.from_spec(load_dataset_spec(folder), id_scheme=id_scheme)  # type: ignore[arg-type]
    reader = ParquetBatchReader(folder, "train", layout, batch_size=batch_size, shuffle=True, seed=0)
    rows = sum(len(batch) for batch in reader)
    times = []
    for epoch in range(repeats):
        reader.set_epoch(epoch + 1)
        start = time.perf_counter()
        rows = sum(len(batch) for batch in reader)
        times.append(time.perf_counter() - start)
    return {"rows": rows, "seconds": round(min(times), 3), "rows_per_s": round(rows / min(times))}


def report(result: dict) -> str:
    c = result["conversion"]
    lines = [
        f"input: {result['input_rows']:,} rows ({result['input_source']}), {result['input_mib']:.0f} MiB; "
        f"{result['cpu_count']} CPUs, load average {result['load_average_before']}",
        f"convert: {c['convert_rows_per_s']:,} rows/s ({c['convert_seconds']} s; target >= "
        f"{TARGETS['convert_rows_per_s']:,}; CPU user {c['convert_user_s']} + sys {c['convert_sys_s']} s), peak RSS "
        f"{c['peak_rss_gib']} GiB (target < {TARGETS['peak_rss_gib']}; {c['rss_before_convert_mib']} MiB after imports)",
    ]
    for scheme, b in result["batches"].items():
        lines.append(f"batches ({scheme} ids, 2048): {b['rows_per_s']:,} rows/s (target >= {TARGETS['batch_rows_per_s']:,})")
    lines.append("targets met: " + ", ".join(f"{k}={v}" for k, v in result["targets_met"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--random", action="store_true", help="random rows even if the real sample exists")
    parser.add_argument("--out", type=Path, default=Path("bench_out") / "convert.json")
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_convert(*args.child)
        return {}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convert_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = _run(workdir, args.rows, args.random)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"wrote {args.out}")
    return result


def _run(workdir: Path, rows: int, random_rows: bool) -> dict:
    input_path = workdir / "criteo.tsv"
    out_dir = workdir / "dataset"
    shutil.rmtree(out_dir, ignore_errors=True)
    input_rows, source = build_input(input_path, rows, random_rows)
    load = os.getloadavg()[0]
    conversion = run_conversion(input_path, out_dir, workdir)
    batches = {scheme: batch_throughput(out_dir, scheme) for scheme in ("index", "raw")}
    met = {
        "convert_rows_per_s": conversion["convert_rows_per_s"] >= TARGETS["convert_rows_per_s"],
        "peak_rss": conversion["peak_rss_gib"] < TARGETS["peak_rss_gib"],
        "batch_rows_per_s": all(b["rows_per_s"] >= TARGETS["batch_rows_per_s"] for b in batches.values()),
    }
    return {
        "input_rows": input_rows,
        "input_source": source,
        "input_mib": round(os.path.getsize(input_path) / 2**20, 1),
        "cpu_count": os.cpu_count(),
        "load_average_before": round(load, 2),
        "conversion": conversion,
        "batches": batches,
        "targets": TARGETS,
        "targets_met": met,
    }


if __name__ == "__main__":
    main()
