"""Bench fixtures for serving: a Criteo-sized dataset contract and an untrained run, without data.

``fake_dataset`` writes ``dataset.json`` and vocabularies whose raw values are ``<field>_<k>``
(so requests can name real vocabulary values); ``fake_run`` writes a run folder (config,
randomly initialised weights) that ``recsys export`` accepts. Tables are what matters for
lookup speed and memory; the weights' values do not.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from recsys.assembly import Assembly
from recsys.config import ExperimentConfig
from recsys.data.synthetic import PROFILES
from recsys.features import NUM_RESERVED, DatasetSpec, FieldSpec, save_dataset_spec
from recsys.hashing import hash64_strings
from recsys.models.train import TrainModel
from recsys.runfolder import RunFolder


def fake_dataset(out: Path, scale: float = 0.5) -> DatasetSpec:
    """Criteo-profile cardinalities (large ones times ``scale``), 13 dense fields, vocabularies."""
    cards = PROFILES["criteo"].scaled_cardinalities(scale)
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    fields = [FieldSpec(name=f"I{i + 1}", kind="dense", transform="slog1p") for i in range(13)]
    for i, n in enumerate(cards):
        name = f"C{i + 1}"
        ids = hash64_strings([f"{name}_{k}" for k in range(n)])
        pq.write_table(pa.table({"id": ids, "count": np.ones(n, np.int64)}), out / "vocab" / f"{name}.parquet")
        fields.append(FieldSpec(name=name, kind="sparse", cardinality=n + NUM_RESERVED, vocabulary=f"vocab/{name}.parquet", num_distinct=n))
    spec = DatasetSpec(name="bench-criteo", source="synthetic", fields=fields, splits={})
    save_dataset_spec(spec, out)
    return spec


def fake_run(data: Path, out: Path, method: str = "full", options: dict | None = None, compression: float | None = None) -> Path:
    """A run folder with randomly initialised weights for ``method`` over ``data``."""
    cfg = ExperimentConfig.model_validate(
        {
            "data": {"path": str(data)},
            "embedding": {"method": method, "options": options or {}, "compression": compression},
            "tracking": {"enabled": False},
        }
    )
    spec = DatasetSpec.model_validate_json((data / "dataset.json").read_text())
    torch.manual_seed(0)
    parts = Assembly.of(cfg, spec)
    model = TrainModel(parts.model(parts.method()))
    run = RunFolder(out)
    phase = run.phase("train")
    phase.root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(phase.weights))
    save_file({}, str(phase.state))
    run.write_config(cfg)
    run.write_metrics({})
    return out


def key_pool(spec: DatasetSpec, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` random ``(feature, raw value)`` pairs, uniform over features then over each vocabulary."""
    rng = np.random.default_rng(seed)
    sparse = spec.sparse_fields
    feats = rng.integers(0, len(sparse), n)
    return [(sparse[f].name, f"{sparse[f].name}_{rng.integers(0, sparse[f].num_distinct)}") for f in feats]


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    """Return once ``url`` answers 200; raise if ``proc`` exits first or ``timeout`` s pass."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(what)


def wait_for_redis(client: Any, tries: int = 100) -> None:
    """Return once the Redis server behind ``client`` answers PING (up to ``tries`` × 0.1 s)."""
    import redis

    for _ in range(tries):
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"redis-server did not answer within {tries * 0.1:.1f} s")


def load_command(target: str, port: int, keys: Path, ids: int, concurrency: int, duration: float, *extra: str) -> list[str]:
    """The ``bench.serving_load`` command line of one load-generator run (its last stdout line is a JSON row)."""
    return [sys.executable, "-m", "bench.serving_load", "--target", target, "--port", str(port), "--keys", str(keys),
            "--ids", str(ids), "--concurrency", str(concurrency), "--duration", str(duration), *extra]  # fmt: skip


def serve_command(art: Path, port: int, workers: int = 1, front: str = "uvicorn-lean") -> list[str]:
    """The ``recsys serve`` command line of the benchmarks: no reload polling, 4096 items, quiet logs."""
    return [sys.executable, "-m", "recsys.cli", "serve", "--model", str(art), "--port", str(port), "--poll-interval", "0",
            "--max-items", "4096", "--log-level", "warning", "--workers", str(workers), "--server", front]  # fmt: skip
