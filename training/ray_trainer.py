"""Distributed training on Ray Train: the same ``Experiment`` phases and ``Trainer`` in every worker.

``train_distributed`` (what ``train_experiment`` calls when ``training.workers > 1``) joins the
Ray cluster at ``RAY_ADDRESS`` (``recsys train --address``) or starts a local one with the
machine's CPUs, and runs ``TorchTrainer`` with ``training.workers`` workers (gloo on CPU, NCCL
when every worker gets a GPU). Each worker builds the experiment, shards it with TorchRec DMP
over the Ray-created process group and streams its shard of each split from Parquet
(``recsys.training.shard_input``: planned once by the driver, no Ray object store).

Checkpoints (``recsys.training.sharded_checkpoint`` folders plus ``loop.json``: phase, step, epoch and
loop state) are reported every epoch and every ``training.checkpoint_every`` steps. After a
worker failure Ray restarts the group (up to ``training.max_failures`` times) and the phase in
progress resumes from the last checkpoint (rank 0 waits until Ray has registered each
checkpoint, at most its 2 s poll, so that is the last one written); finished phases are skipped. ``--resume`` does the
same for a run that stopped: Ray restores the last checkpoint of ``<out>/ray/train``.
``<out>/progress.jsonl`` records starts, resumes and checkpoints (once Ray registered them).

The driver owns the MLflow run (params, system metrics, final metrics, artifacts, registry);
rank 0 logs step and epoch metrics into it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from recsys.config import ExperimentConfig, validate_config
from recsys.data.batch import BatchLayout
from recsys.embeddings import Phase
from recsys.features import load_dataset_spec
from recsys.runfolder import PROGRESS, RAY_OUTPUTS, RAY_STORAGE, WORKER_METRICS, WORKERS
from recsys.storage import Location, StoragePath, append_text, is_uri, location
from recsys.training.experiment import Experiment, ReaderFactory, row_limit
from recsys.training.loop import LoopState
from recsys.training.phases import run_phases
from recsys.training.session import open_run_folder, tracking_session
from recsys.training.shard_input import Piece, ShardReader, plan_split
from recsys.training.sharded_checkpoint import (
    init_optimizer_state,
    load_sharded,
    save_sharded,
    training_state,
)
from recsys.training.tracking import NullTracker, make_tracker

ROOT = Path(__file__).resolve().parent.parent
FAIL_ENV = "RECSYS_FAIL_AT_STEP"  # test hook: "RANK:PHASE:STEP:MARKER_FILE" makes RANK exit once there


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``) or start a local cluster; False if Ray was already up."""
    import ray

    if ray.is_initialized():
        return False
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), runtime_env=runtime_env)
    return True


def dataset_key(split: str, rows: int | None) -> str:
    return split if rows is None else f"{split}@{rows}"


def _plans(exp: Experiment) -> dict[str, list[Piece]]:
    """The planned row groups (``plan_split``) of every (split, row limit) the phases read."""
    cfg = exp.cfg
    wanted = {(s, row_limit(cfg, s)) for s in ("train", "valid", "test")}
    wanted |= {("valid", row_limit(cfg, "valid", p.eval_rows)) for p in exp.phases()}
    seed = cfg.training.seed
    return {dataset_key(s, n): plan_split(cfg.data.path, exp.spec, s, n, seed if s == "train" else None) for s, n in sorted(wanted, key=str)}


def _scaling(workers: int, placement_strategy: str = "PACK") -> tuple[Any, int, bool]:
    """Scaling config, torch threads per worker, GPU use. One CPU stays free (the driver, Ray's controller)."""
    import ray
    from ray.train import ScalingConfig

    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) >= workers
    per_worker = max(resources.get("CPU", 1) - 1, 0.5) / workers
    cpus = float(int(per_worker)) if per_worker >= 1 else round(max(per_worker, 0.1), 2)
    scaling = ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}, placement_strategy=placement_strategy)
    return scaling, max(1, int(cpus)), use_gpu


def train_distributed(cfg: ExperimentConfig, out_dir: str | Path | StoragePath, resume: bool = False) -> dict[str, Any]:
    """Train one experiment with ``cfg.training.workers`` Ray Train workers; returns its metrics.

    ``out_dir`` (and ``data.path``) may be URIs (``recsys.storage``): on a multi-node cluster
    they must be, since every node reads the data and writes into the run folder, and Ray
    Train's ``storage_path`` (``<out>/ray``) must be storage every node reaches."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = location(out_dir).resolve()
    load_dataset_spec(cfg.data.path)  # a missing dataset fails before a folder or an MLflow run exists
    open_run_folder(out, resume, RAY_OUTPUTS)
    if not is_uri(cfg.data.path):
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(Path(cfg.data.path).resolve())})})
    started = init_ray()
    try:
        with tracking_session(cfg, out) as session:
            exp = Experiment(cfg, out, NullTracker())
            plans = _plans(exp)
            scaling, threads, use_gpu = _scaling(cfg.training.workers, cfg.training.placement_strategy)
            tracker = session.tracker
            config = {
                "cfg": cfg.model_dump(mode="json"),
                "out": str(out),
                "plans": plans,
                "threads": threads,
                "run_id": tracker.run_id if cfg.tracking.enabled else None,
                "fail": os.environ.get(FAIL_ENV),
                "uri": getattr(tracker, "uri", None),
            }
            trainer = TorchTrainer(
                _worker,
                train_loop_config=config,
                scaling_config=scaling,
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                run_config=RunConfig(
                    name="train",
                    storage_path=str(out / RAY_STORAGE),
                    failure_config=FailureConfig(max_failures=cfg.training.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=2),
                ),
            )
            trainer.fit()
            metrics = json.loads((out / WORKER_METRICS).read_text())
            session.finish(metrics)
            return metrics
    finally:
        if started:
            import ray

            ray.shutdown()


def _event(out: Location, **event: Any) -> None:
    append_text(out / PROGRESS, json.dumps({"time": time.time(), **event}) + "\n")


def _record_worker(out: Location, rank: int, world: int) -> None:
    """``<out>/workers/rank-<r>.json``: the process (pid, host, Ray node) running each rank now."""
    import socket

    import ray

    info = {
        "rank": rank,
        "world": world,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "time": time.time(),
    }
    (out / WORKERS / f"rank-{rank}.json").write_text(json.dumps(info))


class RayCheckpointer:
    """Mid-phase checkpoints through ``ray.train.report`` (every rank writes its shards)."""

    def __init__(self, out: Location, rank: int, world: int) -> None:
        import ray.train

        self.out, self.rank, self.world = out, rank, world
        self.latest = ray.train.get_checkpoint()

    def restore(self, phase: Phase, sharded: Any) -> LoopState | None:
        state = None
        if self.latest is not None:
            with self.latest.as_directory() as folder:
                meta = json.loads((Path(folder) / "loop.json").read_text())
                if meta["phase"] == phase.name:
                    init_optimizer_state(sharded.optimizer)
                    load_sharded(folder, training_state(sharded.module, sharded.optimizer))
                    state = LoopState.from_json(meta["state"])
        if self.rank == 0:
            _event(self.out, event="resume" if state else "start", phase=phase.name, step=state.step if state else 0, world=self.world)
        return state

    def save(self, phase: Phase, sharded: Any, state: LoopState) -> None:
        import ray.train
        from ray.train import Checkpoint, CheckpointConsistencyMode

        with tempfile.TemporaryDirectory() as folder:
            save_sharded(folder, training_state(sharded.module, sharded.optimizer), self.rank)
            if self.rank == 0:
                (Path(folder) / "loop.json").write_text(json.dumps({"phase": phase.name, "world": self.world, "state": state.to_json()}))
            ray.train.report({"phase": phase.name, "step": state.step, "epoch": state.epoch}, checkpoint=Checkpoint.from_directory(folder))
        if self.rank == 0:  # wait until Ray registered it: a failure from here on resumes from it
            ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
            _event(self.out, event="checkpoint", phase=phase.name, step=state.step, epoch=state.epoch)  # only once registered


def _fail_hook(spec: str | None, rank: int, out: Location) -> Any:
    """Test hook (``RECSYS_FAIL_AT_STEP=RANK:PHASE:STEP:MARKER``): that rank exits at that logged
    step of that phase, once (the marker file remembers it)."""
    if not spec:
        return None
    fail_rank, fail_phase, fail_step, marker = spec.split(":", 3)

    def check(phase: str, step: int) -> None:
        if rank == int(fail_rank) and phase == fail_phase and step == int(fail_step) and not Path(marker).exists():
            Path(marker).write_text(str(step))
            _event(out, event="injected_failure", rank=rank, step=step)
            os._exit(1)

    return check


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the experiment's phases on this rank's data shards."""
    import ray.train

    warnings.filterwarnings("ignore", message=".*ShardedTensor", category=FutureWarning)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    cfg = validate_config(config["cfg"])
    if config["uri"]:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"tracking_uri": config["uri"]})})
    out = location(config["out"])
    (out / WORKERS).mkdir(parents=True, exist_ok=True)
    _record_worker(out, rank, world)
    run_id = config["run_id"]
    spool = out if isinstance(out, Path) else None  # a URI run folder: no worker spool (calls MLflow refuses are warned about)
    tracker = make_tracker(cfg.tracking, run_dir=spool, run_id=run_id, rank=rank) if run_id else NullTracker()
    exp = Experiment(cfg, out, tracker, _readers(cfg, config["plans"], rank, world), RayCheckpointer(out, rank, world))
    exp.step_hook = _fail_hook(config["fail"], rank, out)
    try:
        metrics = run_phases(exp, resume=True)
    finally:
        tracker.close()
    if rank == 0:
        (out / WORKER_METRICS).write_text(json.dumps(metrics))


def _readers(cfg: ExperimentConfig, plans: dict[str, list[Any]], rank: int, world: int) -> ReaderFactory:
    """Reader factory of a worker: its shard of the driver's plan for (split, row limit)."""
    t = cfg.training

    def make(split: str, layout: BatchLayout, limit: int | None) -> ShardReader:
        pieces = [Piece(*p) for p in plans[dataset_key(split, limit)]]
        batch = t.batch_size if split == "train" else t.eval_batch_size
        return ShardReader(cfg.data.path, pieces, layout, batch, rank, world, train=split == "train", seed=t.seed)

    return make
