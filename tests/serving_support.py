"""Tiny trained runs shared by the export and serving tests (built once per pytest session)."""

from __future__ import annotations

import fcntl
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from safetensors.torch import load_file

from recsys.assembly import Assembly
from recsys.config import load_config
from recsys.data.batch import Batch, BatchLayout, ParquetBatchReader
from recsys.data.synthetic import PROFILES, generate
from recsys.features import load_dataset_spec
from recsys.hashing import hash64_strings
from recsys.models.train import TrainModel
from recsys.runfolder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
ROWS = 8000
RUNS = {  # name -> config overrides of its run
    "full": ["embedding.method=full"],
    "hash": ["embedding.method=hash", "embedding.compression=4"],
    "hash-dim8": ["embedding.method=hash", "embedding.compression=4", "model.embedding_dim=8"],  # another interface
}


def ensure_runs(base: Path) -> tuple[Path, dict[str, Path]]:
    """``(dataset folder, name -> run folder)``: synthetic data and one short training run per ``RUNS`` entry."""
    from recsys.training.run import train_experiment

    base.mkdir(parents=True, exist_ok=True)
    data, runs = base / "data", {m: base / f"run-{m}" for m in RUNS}
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "done").exists():
            generate(data, rows=ROWS, profile="small", seed=5, progress=False, overwrite=True)
            for name, extra in RUNS.items():
                cfg = load_config(
                    ROOT / "configs/quickstart.yaml",
                    [
                        f"data.path={data}",
                        "tracking.enabled=false",
                        "training.epochs=1",
                        "training.batch_size=256",
                        "training.max_steps_per_epoch=12",
                        "training.progress=false",
                        *extra,
                    ],
                )
                train_experiment(cfg, runs[name])
            (base / "done").write_text("ok")
    return data, runs


def test_batches(data: Path, id_scheme: str, batch_size: int = 512) -> list[Batch]:
    spec = load_dataset_spec(data)
    return list(ParquetBatchReader(data, "test", BatchLayout.from_spec(spec, id_scheme), batch_size))


test_batches.__test__ = False  # type: ignore[attr-defined]  (a helper, not a test)


def reference_model(run: Path) -> TrainModel:
    """The run's model rebuilt the way training builds it (unsharded), last phase's weights loaded."""
    from recsys.training.checkpoint import load_weights

    folder = RunFolder(run)
    parts = Assembly.of(folder.read_config())
    method = parts.method()
    phase = method.phases()[-1]
    method.enter_phase(phase)
    model = TrainModel(parts.model(method))
    load_weights(model, folder.phase(phase.name).weights)
    method.load_phase_state(load_file(str(folder.phase(phase.name).state)))
    return model.eval()


@torch.no_grad()
def reference_probs(model: TrainModel, batches: list[Batch]) -> np.ndarray:
    return np.concatenate([torch.sigmoid(model(b)[1]).numpy() for b in batches])


def raw_strings(data: Path) -> dict[str, dict[int, str]]:
    """Per sparse field, raw id -> the synthetic raw value (``<field>_<n>``) it hashes from."""
    spec = load_dataset_spec(data)
    out = {}
    for f, n in zip(spec.sparse_fields, PROFILES["small"].cardinalities):
        values = [f"{f.name}_{k}" for k in range(n)]
        out[f.name] = dict(zip(hash64_strings(values).tolist(), values))
    return out


def metadata_of(run: Path) -> dict:
    return RunFolder(run).read_metrics() or {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, interval: float) -> None:
    """Poll ``/readyz`` until it answers 200 (the loop ends at ``timeout``; a dead server fails at once)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(interval)
