"""Memory of a 2-worker training run whose dataset is larger than Ray's object store, read from S3.

A moto S3 server on 127.0.0.1 holds a synthetic ``criteo`` dataset (built once into
``bench_out/``, parts of 250k rows, then uploaded). For each code checkout given (``--code
NAME=DIR``; default: this one) a Ray head is started with ``--object-store-memory`` and the
checkout on its ``PYTHONPATH``, and ``recsys train --workers 2 --address ...`` (that checkout's
code) trains one epoch from ``s3://`` into ``s3://``. Runs alternate checkout by checkout.

Sampled every 0.2 s: the summed PSS of the Ray processes and the driver (shared pages split
between processes, so the object store is counted once), the largest RSS of one Ray Train
worker process, and the bytes in Ray's spill folders (objects spilled out of a full object
store); every second, from the raylet, the object store's own use and spill counters (those calls
can fail on a loaded machine: their errors are kept in the JSON). Reported with the run's test AUC and wall time.

Usage: ``python -m bench.train_memory [--rows 1500000] [--object-store-mb 100] [--code base=/tmp/old --code new=.]
[--repeats 1]`` (results in ``bench_out/train_memory.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.s3_stream import BUCKET, start_s3

ROOT = Path(__file__).resolve().parent.parent
OUT = Path("bench_out")
TRAIN = [
    "training.epochs=1",
    "training.batch_size=4096",
    "training.eval_batch_size=8192",
    "training.progress=false",
    "data.max_eval_rows=20000",
    "embedding.method=hash",
    "embedding.compression=100",
    "tracking.enabled=false",
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dataset(rows: int) -> str:
    """The dataset in S3 (built locally once, then uploaded); its URI."""
    from recsys.data.synthetic import generate
    from recsys.features import DATASET_FILE
    from recsys.storage import published

    local = OUT / f"train_memory_{rows}"
    if not (local / DATASET_FILE).exists():
        generate(local, rows=rows, profile="criteo", seed=0, progress=False, overwrite=True, rows_per_file=250_000, min_count=50)
    uri = f"s3://{BUCKET}/data/criteo-{rows}"
    with published(uri, DATASET_FILE) as folder:
        shutil.copytree(local, folder)
    return uri


class Sampler:
    """Peak PSS of the process trees under ``roots``, peak RSS of a Ray Train worker, object store use."""

    def __init__(self, roots: list[int], address: str, temp: str) -> None:
        self.roots, self.address, self.temp = roots, address, temp
        self.peak_pss = self.peak_worker_rss = self.peak_store = self.spilled = self.peak_spill_dir = 0
        self.store_errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._memory, daemon=True), threading.Thread(target=self._store, daemon=True)]

    def _memory(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for root in self.roots:
                try:
                    procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for p in procs:
                    try:
                        info = p.memory_full_info()
                        total += info.pss
                        if "RayTrainWorker" in " ".join(p.cmdline()):
                            self.peak_worker_rss = max(self.peak_worker_rss, info.rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            self.peak_pss = max(self.peak_pss, total)
            self.peak_spill_dir = max(self.peak_spill_dir, _spill_bytes(self.temp))
            self._stop.wait(0.2)

    def _store(self) -> None:
        from ray._private.internal_api import (
            get_memory_info_reply,
            get_state_from_address,
        )

        state = None
        while not self._stop.is_set():
            try:
                state = state or get_state_from_address(self.address)
                stats = get_memory_info_reply(state, timeout_seconds=5).store_stats
                self.peak_store = max(self.peak_store, stats.object_store_bytes_used)
                self.spilled = max(self.spilled, stats.spilled_bytes_total)
            except Exception as exc:  # the cluster is starting or stopping; kept to report
                self.store_errors.append(f"{type(exc).__name__}: {exc}"[:200])
            self._stop.wait(1.0)

    def __enter__(self) -> Sampler:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def _spill_bytes(temp: str) -> int:
    """Bytes in Ray's spill folders (``ray_spilled_objects*``) under the cluster's temp dir."""
    total = 0
    for root, _, files in os.walk(temp):
        if "spill" in root:
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:  # removed meanwhile
                    pass
    return total


def _stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL ``proc`` and its descendants, each by PID."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        if not alive:
            break
        procs = alive


def _run(name: str, code: Path, data: str, object_store_mb: int, index: int) -> dict[str, Any]:
    from recsys.storage import StoragePath

    env = {**os.environ, "PYTHONPATH": str(code), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="raymem-", dir="/tmp")
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            f"--port={port}",
            "--num-cpus=3",
            f"--object-store-memory={object_store_mb << 20}",
            f"--temp-dir={temp}",
            "--include-dashboard=false",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out = f"s3://{BUCKET}/runs/{name}-{index}"
    try:
        time.sleep(5)
        cmd = [
            sys.executable,
            "-m",
            "recsys.cli",
            "train",
            "--config",
            "quickstart",
            "--workers",
            "2",
            "--address",
            address,
            "--out",
            out,
            "--set",
            f"data.path={data}",
            *[a for kv in TRAIN for a in ("--set", kv)],
        ]
        start = time.perf_counter()
        driver = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with Sampler([head.pid, driver.pid], address, temp) as sampler:
            log, _ = driver.communicate(timeout=3000)
        seconds = time.perf_counter() - start
        if driver.returncode != 0:
            raise RuntimeError(f"{name}: recsys train failed:\n{log[-4000:]}")
        metrics = json.loads(StoragePath(out + "/metrics.json").read_text())
    finally:
        _stop_tree(head)
        shutil.rmtree(temp, ignore_errors=True)
    return {
        "code": name,
        "seconds": seconds,
        "test_auc": metrics["test_auc"],
        "peak_pss_mb": sampler.peak_pss / 2**20,
        "peak_worker_rss_mb": sampler.peak_worker_rss / 2**20,
        "peak_object_store_mb": sampler.peak_store / 2**20,
        "spilled_mb": sampler.spilled / 2**20,
        "peak_spill_dir_mb": sampler.peak_spill_dir / 2**20,
        "store_sampler_errors": sampler.store_errors[:3],
        "load_avg": os.getloadavg()[0],
    }


def run(rows: int, object_store_mb: int, codes: dict[str, Path], repeats: int) -> dict[str, Any]:
    from recsys.features import load_dataset_spec
    from recsys.storage import StoragePath

    s3 = start_s3()
    try:
        data = _dataset(rows)
        spec = load_dataset_spec(data)
        parquet_mb = sum(len((StoragePath(data) / f).read_bytes()) for f in spec.splits["train"].files) / 2**20
        results = []
        for i in range(repeats):
            for name, code in codes.items():
                try:
                    results.append(_run(name, code, data, object_store_mb, i))
                except RuntimeError as exc:  # reported in the table: a run that fails is a result too
                    results.append({"code": name, "error": str(exc).splitlines()[0], "log_tail": str(exc)[-2000:], "load_avg": os.getloadavg()[0]})
                print(json.dumps(results[-1])[:2000], flush=True)
        return {
            "rows": rows,
            "train_rows": spec.splits["train"].rows,
            "train_parquet_mb": parquet_mb,
            "object_store_mb": object_store_mb,
            "cpus": os.cpu_count(),
            "train": TRAIN,
            "results": results,
        }
    finally:
        s3.terminate()
        s3.wait(10)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Train split: {report['train_rows']:,} rows, {report['train_parquet_mb']:.1f} MB of Parquet in S3 (moto on 127.0.0.1); "
        f"Ray object store {report['object_store_mb']} MB; {report['cpus']} CPUs (shared box). Config: {' '.join(report['train'])}.",
        "",
        "| code | peak PSS MB (driver + Ray) | peak RSS of a worker MB | peak spill folder MB | test AUC | s | load |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['code']} | failed: {r['error']} | | | | | {r['load_avg']:.1f} |")
            continue
        lines.append(
            f"| {r['code']} | {r['peak_pss_mb']:.0f} | {r['peak_worker_rss_mb']:.0f} | "
            f"{r['peak_spill_dir_mb']:.0f} | {r['test_auc']:.6f} | {r['seconds']:.0f} | {r['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_500_000)
    parser.add_argument("--object-store-mb", type=int, default=100)
    parser.add_argument("--code", action="append", default=[], help="NAME=DIR: a checkout to run (repeatable; default this one)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    codes = {k: Path(v).resolve() for k, v in (c.split("=", 1) for c in args.code)} or {"this": ROOT}
    report = run(args.rows, args.object_store_mb, codes, args.repeats)
    OUT.mkdir(exist_ok=True)
    (OUT / "train_memory.json").write_text(json.dumps(report, indent=2))
    (OUT / "train_memory.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
