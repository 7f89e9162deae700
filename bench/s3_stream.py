"""Reading a dataset larger than Ray's object store from object storage: peak memory.

A moto S3 server on 127.0.0.1 (``python -m moto.server``) holds a synthetic dataset written by
``recsys data synth --out s3://...``. A local Ray cluster with a small ``object_store_memory``
then reads the train split, projected to the training columns, two ways:

1. ``stream``: Ray Data's ``read_parquet`` (projected) → ``iter_batches`` (Ray Data's streaming
   executor; blocks are released once consumed);
2. ``shards``: the training input path, ``plan_split`` and a ``ShardReader`` for each of 2 ranks
   (pyarrow reads of each rank's row groups, no object store), both shards' batches in turn
   (their tensors' bytes are reported).

Each reports the rows read, the Arrow bytes of the projected columns, the peak proportional
set size (PSS: shared pages split between processes, so the object store is counted once) of
the driver plus every Ray process it started, sampled every 50 ms, and the bytes Ray spilled.

Usage: ``python -m bench.s3_stream [--rows 600000] [--object-store-mb 80]`` (results in
``bench_out/s3_stream.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

OUT = Path("bench_out")
BUCKET = "recsys-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_s3() -> subprocess.Popen:
    """moto's S3 server on a free port of 127.0.0.1 (``AWS_*`` set for it) with the bucket ``BUCKET``."""
    import pyarrow.fs as pafs

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir(BUCKET)
    return proc


class PeakMemory:
    """Samples the summed PSS of this process and its descendants (every 50 ms) in a thread."""

    def __init__(self, exclude: set[int]) -> None:
        import psutil

        self.me = psutil.Process()
        self.exclude = exclude
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            if p.pid in self.exclude:
                continue
            try:
                total += p.memory_full_info().pss
            except Exception:  # a process that just ended
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(0.05)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def _spilled(session_dir: str) -> int:
    total = 0
    for root, _, files in os.walk(session_dir):
        if "spill" in root:
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files if os.path.exists(os.path.join(root, f)))
    return total


def _measure(name: str, read: Callable[[], tuple[int, int]], exclude: set[int], session_dir: str) -> dict[str, Any]:
    with PeakMemory(exclude) as mem:
        base = mem.sample()
        start = time.perf_counter()
        rows, nbytes = read()
        seconds = time.perf_counter() - start
    return {
        "name": name,
        "rows": rows,
        "arrow_mb": nbytes / 2**20,
        "seconds": seconds,
        "pss_before_mb": base / 2**20,
        "peak_pss_mb": mem.peak / 2**20,
        "spilled_mb": _spilled(session_dir) / 2**20,
    }


def run(rows: int, object_store_mb: int) -> dict[str, Any]:
    import ray
    import ray.data

    from recsys.cli import main
    from recsys.data.batch import BatchLayout
    from recsys.features import load_dataset_spec
    from recsys.storage import StoragePath, arrow_filesystem
    from recsys.training.shard_input import ShardReader, plan_split

    s3 = start_s3()
    try:
        uri = f"s3://{BUCKET}/data/large"
        assert main(["data", "synth", "--out", uri, "--rows", str(rows), "--profile", "criteo", "--seed", "0"]) == 0
        parquet_mb = sum(len((StoragePath(uri) / f).read_bytes()) for f in load_dataset_spec(uri).splits["train"].files) / 2**20
        spill = tempfile.mkdtemp(prefix="recsys-spill-")
        ray.init(
            num_cpus=2,
            object_store_memory=object_store_mb << 20,
            include_dashboard=False,
            _system_config={"object_spilling_config": json.dumps({"type": "filesystem", "params": {"directory_path": spill}})},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        spec = load_dataset_spec(uri)
        layout = BatchLayout.from_spec(spec, "index")
        exclude = {s3.pid}

        def stream() -> tuple[int, int]:
            n = b = 0
            fs, base = arrow_filesystem(StoragePath(uri))
            ds = ray.data.read_parquet([f"{base}/{f}" for f in spec.splits["train"].files], filesystem=fs).select_columns(layout.columns())
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                n, b = n + table.num_rows, b + table.nbytes
            return n, b

        def shards() -> tuple[int, int]:
            pieces = plan_split(uri, spec, "train", None, 0)
            n = b = 0
            for rank in range(2):
                for batch in ShardReader(uri, pieces, layout, 4096, rank, 2, train=True, seed=0):
                    kjt = batch.sparse_features
                    n += len(batch)
                    b += sum(t.numel() * t.element_size() for t in (batch.labels, batch.dense_features, kjt.values(), kjt.lengths()))
            return n, b

        results = [_measure("stream", stream, exclude, spill), _measure("shards", shards, exclude, spill)]
        return {
            "rows": rows,
            "train_rows": spec.splits["train"].rows,
            "train_parquet_mb": parquet_mb,
            "object_store_mb": object_store_mb,
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "results": results,
        }
    finally:
        ray.shutdown()
        s3.terminate()
        s3.wait(10)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Train split: {report['train_rows']:,} rows, {report['train_parquet_mb']:.1f} MB of Parquet in S3 (moto on 127.0.0.1); "
        f"Ray object store {report['object_store_mb']} MB; {report['cpus']} CPUs, load average {report['load_avg'][0]:.1f}.",
        "",
        "| read | rows | projected Arrow MB | peak PSS MB (driver + Ray) | PSS before MB | spilled MB | s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {r['arrow_mb']:.0f} | {r['peak_pss_mb']:.0f} | {r['pss_before_mb']:.0f} | {r['spilled_mb']:.0f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--object-store-mb", type=int, default=80)
    args = parser.parse_args()
    report = run(args.rows, args.object_store_mb)
    OUT.mkdir(exist_ok=True)
    (OUT / "s3_stream.json").write_text(json.dumps(report, indent=2))
    (OUT / "s3_stream.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
