"""``recsys export``: a finished run folder to a serving artifact (see ``recsys.export.artifact``).

The method and model are rebuilt from the run's ``config.yaml`` and the dataset contract,
the last phase's weights and phase state are loaded, and the method's ``export()`` (its served
form) is written with the dense weights, the vocabularies and a checksummed manifest. The
folder is written beside ``out`` and renamed into place, so a reader never sees half of it.

Example:
    >>> export_run(Path("runs/dlrm-hash"), Path("artifacts/dlrm-hash-int8"), dtype="int8")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recsys.assembly import Assembly
from recsys.config import ExperimentConfig
from recsys.embeddings import get_method
from recsys.embeddings.base import EmbeddingMethod
from recsys.export.artifact import (
    DENSE_FILE,
    DTYPES,
    EMBEDDING_FILE,
    VOCAB_DIR,
    ArtifactError,
    ContextEntry,
    DatasetContract,
    Manifest,
    MethodEntry,
    TableEntry,
    write_manifest,
)
from recsys.export.tables import quantize_tables, table_shapes
from recsys.features import NUM_RESERVED, DatasetSpec
from recsys.hashing import HASH_NAME
from recsys.models import resolve_model_config
from recsys.models.blocks import CTRModel
from recsys.runfolder import RunFolder
from recsys.storage import Location, location, read_parquet

MODEL_PREFIX = "model."


def load_run(run_dir: Path, data_path: str | Path | None = None) -> tuple[ExperimentConfig, DatasetSpec, EmbeddingMethod, CTRModel]:
    """The trained method and model of a run folder, in eval mode, on CPU."""
    run = RunFolder(Path(run_dir))
    cfg = run.read_config()
    parts = Assembly.of(cfg, data_path=data_path)
    method = parts.method()
    last = method.phases()[-1]
    method.enter_phase(last)
    model = parts.model(method)
    folder = run.phase(last.name)
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in load_file(str(folder.weights)).items()}
    model.load_state_dict(weights, strict=True)
    method.load_phase_state(load_file(str(folder.state)) if folder.state.exists() else {})
    return cfg, parts.spec, method, model.eval()


def _write_vocab(spec: DatasetSpec, data_dir: Location, out: Path) -> dict[str, str]:
    """Each sparse field's vocabulary as Arrow IPC sorted by raw id: ``id``, ``index``."""
    (out / VOCAB_DIR).mkdir()
    files: dict[str, str] = {}
    for f in spec.sparse_fields:
        ids = np.zeros(0, np.int64)
        if f.vocabulary:
            ids = read_parquet(data_dir / f.vocabulary, columns=["id"]).column("id").to_numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        table = pa.table({"id": ids[order], "index": (order + NUM_RESERVED).astype(np.int32)})
        name = f"{VOCAB_DIR}/{f.name}.arrow"
        with pa.OSFile(str(out / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        files[f.name] = name
    return files


def _scalar_metrics(run_dir: Path) -> dict[str, float]:
    data = RunFolder(run_dir).read_metrics() or {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _stock_tables(served: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[int, int]], bool]:
    """``key -> (rows, dim)`` of the served stock-EBC tables stored in ``state``, and whether those
    are all the tables the served module keeps (then fbgemm can quantize every one)."""
    served_tables = table_shapes(served)
    shapes = {k: s for k, s in served_tables.items() if k in state and tuple(state[k].shape) == s}
    return shapes, bool(shapes) and len(shapes) == len(served_tables)


def supported_dtypes(served: nn.Module, state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The dtypes a served module can be exported at: all of ``DTYPES`` when every table it keeps is
    a stock EBC table (quantized by fbgemm), else only ``fp32``."""
    return DTYPES if _stock_tables(served, state)[1] else ("fp32",)


def quantizable_tables(name: str, served: nn.Module, state: dict[str, torch.Tensor], dtype: str) -> dict[str, tuple[int, int]]:
    """``key -> (rows, dim)`` of the served stock-EBC tables stored in ``state``; raises
    ``ArtifactError`` naming the method and its supported dtypes when ``dtype`` is not one of them
    (OptEmbed's compact tables and DSL's sparse rows are stored outside stock EBCs: fp32 only)."""
    supported = supported_dtypes(served, state)
    if dtype not in supported:
        raise ArtifactError(
            f"method '{name}' cannot be exported as {dtype}: its served tables ({type(served).__name__}) are not stock "
            f"EmbeddingBagCollections, which fbgemm's quantized tables need; supported dtypes for '{name}': {', '.join(supported)}"
        )
    return _stock_tables(served, state)[0]


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "fp32",
    data_path: str | Path | None = None,
    overwrite: bool = False,
    source: str | None = None,
) -> Manifest:
    """Write the serving artifact of ``run_dir`` to ``out_dir``; returns its manifest.

    ``source`` is what the manifest names as the run (default: ``run_dir``'s absolute path;
    ``mlflow-run:<id>`` for a run resolved through MLflow, see ``recsys.export.mlflow_run``).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    cfg, spec, method, model = load_run(run_dir, data_path)
    data_dir = location(data_path or cfg.data.path)
    exported = method.export()
    served = get_method(exported.name).from_export(method.ctx, exported)
    state = {k: v.detach().cpu().contiguous() for k, v in exported.state.items()}
    shapes = quantizable_tables(method.name, served, state, dtype)
    if dtype != "fp32":
        _, quantized = quantize_tables(served, dtype)
        state.update({k: quantized[k] for k in shapes})
    dense = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / EMBEDDING_FILE), metadata={"format": "recsys-embedding", "dtype": dtype})
        save_file(dense, str(tmp / DENSE_FILE), metadata={"format": "recsys-dense"})
        vocab = _write_vocab(spec, data_dir, tmp) if method.id_scheme == "index" else {}
        manifest = Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source_run=source or str(run_dir.resolve()),
            dataset=DatasetContract(name=spec.name, fields=spec.fields, id_scheme=spec.id_scheme, hash=HASH_NAME, vocabularies=vocab),
            method=MethodEntry(
                name=method.name, served=exported.name, options=exported.options, id_scheme=method.id_scheme, memory_bytes=method.memory_bytes()
            ),
            context=ContextEntry.of(method.ctx),
            model=resolve_model_config(cfg.model, method).model_dump(mode="json"),  # as built: the served form may not say
            num_dense=len(spec.dense_fields),
            dtype=dtype,
            tables={k: TableEntry(rows=r, dim=d, dtype=dtype) for k, (r, d) in shapes.items()},
            metrics=_scalar_metrics(run_dir),
        )
        manifest = write_manifest(tmp, manifest, [EMBEDDING_FILE, DENSE_FILE, *vocab.values()])
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
