"""Typed experiment configuration, loaded from YAML with clear errors.

An experiment file has four sections, each either inline or a path to a YAML file holding the
section (relative to the experiment file, or to ``configs/``)::

    data: data/quickstart.yaml
    model: {name: dlrm, embedding_dim: 16}
    embedding: {method: hash, compression: 10}
    training: {epochs: 2, batch_size: 2048}

``load_config(path, overrides=["training.epochs=3"])`` applies ``--set`` overrides (values
parsed as YAML) and validates; each error is one line naming the key path and where it was set:
the experiment file, the included section file, or the ``--set`` argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

_PACKAGE = Path(__file__).resolve().parent
# The built-in configs: recsys/configs in a wheel, configs/ beside recsys/ in a source checkout.
CONFIG_ROOT = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    path: str = Field("data/quickstart", description="dataset folder (holds dataset.json), or a URI such as s3://bucket/prefix (see recsys.storage)")
    max_train_rows: int | None = Field(None, ge=1, description="use only the first N train rows")
    max_eval_rows: int | None = Field(None, ge=1, description="use only the first N rows of valid/test")


class ModelConfig(_Strict):
    name: Literal["dlrm", "dcnv2", "deepfm"] = Field("dlrm", description="CTR model")
    embedding_dim: int = Field(16, ge=1, description="embedding width D of every feature")
    dense_arch: list[int] = Field([64, 32], description="bottom MLP hidden sizes (DLRM/DCNv2 append D)")
    over_arch: list[int] = Field([128, 64], description="top MLP hidden sizes (a final 1-unit logit layer is added)")
    dcn_num_layers: int = Field(3, ge=1, description="DCNv2 cross layers")
    dcn_low_rank_dim: int = Field(16, ge=1, description="DCNv2 low-rank dimension")
    deep_layers: list[int] = Field([256, 128], description="DeepFM deep component hidden sizes")
    field_projection: bool | None = Field(
        None,
        description="a learned D×D linear map per field before the interaction (dense weights, not embedding "
        "bytes), so that dot-product models (DLRM, DeepFM) can tell apart features that share table rows; "
        "default (null): on when the method shares rows between features (`unified`, OptEmbed/DSL over it) and the "
        "model's interaction has no weights of its own per field (DLRM, DeepFM; not DCNv2)",
    )


class EmbeddingConfig(_Strict):
    method: str = Field("full", description="registered method name (see `recsys methods`)")
    compression: float | None = Field(None, ge=1, description="budget as a ratio: full fp32 bytes / budget")
    budget_bytes: int | None = Field(None, ge=1, description="budget in bytes (instead of compression)")
    options: dict[str, Any] = Field(default_factory=dict, description="method-specific options")

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        from recsys.embeddings.registry import registered_name

        return registered_name(method)

    @field_validator("options")
    @classmethod
    def _method_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from recsys.embeddings import parse_options

        if "method" in info.data:  # else the method itself is the error
            parse_options(info.data["method"], options)
        return options

    @model_validator(mode="after")
    def _one_budget(self) -> EmbeddingConfig:
        if self.compression is not None and self.budget_bytes is not None:
            raise ValueError("set either compression or budget_bytes, not both")
        return self


class TrainingConfig(_Strict):
    epochs: int = Field(1, ge=1, description="passes over the train split per train phase (a method's phase may set its own)")
    batch_size: int = Field(2048, ge=1, description="train rows per step (per worker with Ray Train)")
    eval_batch_size: int = Field(8192, ge=1, description="rows per batch when evaluating valid/test")
    seed: int = Field(0, description="seed of the initial weights and of the train shuffle")
    dense_optimizer: Literal["adam", "adagrad"] = Field(
        "adam", description="optimizer of the dense layers (MLPs, and any method parameters outside the tables)"
    )
    dense_lr: float = Field(1e-3, gt=0, description="learning rate of the dense optimizer")
    sparse_optimizer: Literal["sgd", "adagrad", "rowwise_adagrad"] = Field(
        "rowwise_adagrad", description="fbgemm fused optimizer of the embedding tables"
    )
    sparse_lr: float = Field(0.05, gt=0, description="learning rate of the sparse (table) optimizer")
    sparse_eps: float = Field(
        1e-3,
        gt=0,
        description="ε of the Adagrad step lr·g/(√Σg² + ε) (adagrad, rowwise_adagrad): a row whose few gradients are small against ε "
        "moves in proportion to them; with fbgemm's default 1e-8 a value seen once moves a whole lr step, as far as a frequent one",
    )
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay of the dense optimizer (the fused embedding optimizers take none)")
    patience: int = Field(2, ge=0, description="epochs without valid AUC gain before stopping")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on train steps per epoch (default: the whole train split)")
    sharding: Literal["table_wise", "column_wise"] = Field("table_wise", description="TorchRec sharding of every table (fused kernel)")
    workers: int = Field(1, ge=1, description="Ray Train workers (1 = in-process)")
    checkpoint_every: int | None = Field(None, ge=1, description="steps between Ray Train checkpoints (besides one per epoch)")
    max_failures: int = Field(2, ge=-1, description="Ray Train restarts from the last checkpoint after worker failures (-1: unlimited)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] = Field(
        "PACK",
        description="Ray placement of the training workers: PACK fills a node first, SPREAD puts them on different nodes when it can, "
        "STRICT_PACK all on one node",
    )
    progress: bool = Field(True, description="show a tqdm progress bar per epoch")
    log_every: int = Field(50, ge=1, description="steps between logged train loss/throughput")


class TrackingConfig(_Strict):
    enabled: bool = Field(True, description="log the run to MLflow (false: no tracking at all)")
    tracking_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment: str = Field("recsys", description="MLflow experiment name (created when missing)")
    run_name: str | None = Field(None, description="MLflow run name (default: MLflow picks one)")
    required: bool = Field(False, description="stop at start-up when the tracking server is unreachable (else spool locally)")
    system_metrics: bool = Field(True, description="log CPU/memory/disk/network of the training node")
    log_checkpoint: bool = Field(True, description="log the trained weights (phases/*/*.safetensors), so `recsys export --run RUN_ID` works")
    register_as: str | None = Field(None, description="register the trained model under this MLflow model name")
    alias: str = Field("champion", description="alias of the registered version (models:/NAME@ALIAS)")


class ExperimentConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset and how many of its rows to use")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the CTR model around the embeddings")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig, description="the embedding method and its memory budget")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="optimizers, batches, epochs, Ray Train")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking and model registry")


class ConfigError(ValueError):
    """A config problem, with the file and key named."""


SECTIONS = tuple(ExperimentConfig.model_fields)
Key = tuple[str, ...]
Sources = dict[Key, str]  # key path (a prefix of pydantic's error location) -> where it was set


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and its line/column."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None


def _resolve_include(value: str, base: Path) -> Path:
    for candidate in (base.parent / value, CONFIG_ROOT / value):
        if candidate.exists():
            return candidate
    raise ConfigError(f"{base}: included file '{value}' not found (looked next to it and in {CONFIG_ROOT})")


def _load(path: Path) -> tuple[dict[str, Any], Sources]:
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
    sources: Sources = {(): str(path)}
    for section, value in list(raw.items()):
        if isinstance(value, str):
            sub = _resolve_include(value, path)
            raw[section] = _read_yaml(sub)
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{sub}: section '{section}' must be a mapping")
            _record(sources, raw[section], (str(section),), str(sub))
        else:
            _record(sources, value, (str(section),), str(path))
    return raw, sources


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML with section includes resolved (no validation)."""
    return _load(Path(path))[0]


def apply_override(raw: dict[str, Any], assignment: str, sources: Sources | None = None) -> None:
    """Apply ``key.path=value`` (value parsed as YAML) to a raw config dict in place; ``sources``
    records that the key was set by this ``--set``."""
    key, eq, value = assignment.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(parts):
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: '{part}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment}: invalid YAML value: {_yaml_problem(exc)}") from None
    if sources is not None:
        for k in [k for k in sources if k[: len(parts)] == tuple(parts)]:
            del sources[k]  # replaced, with whatever was below it
        _record(sources, node[parts[-1]], tuple(parts), f"--set {assignment}")


def _record(sources: Sources, node: Any, key: Key, source: str) -> None:
    """Note ``source`` for every leaf key under ``node`` (and for ``key`` itself)."""
    sources[key] = source
    if isinstance(node, dict):
        for k, v in node.items():
            _record(sources, v, (*key, str(k)), source)


def _source_of(loc: Key, sources: Sources, default: str) -> str:
    """Where the value at ``loc`` came from: the ``--set`` or file that set it (or the nearest
    section above it); for a check over a whole section, the sources of the keys inside it."""
    inside = [sources[k] for k in sources if len(k) > len(loc) and k[: len(loc)] == loc]
    above = max((k for k in sources if loc[: len(k)] == k), key=len, default=None)
    found = inside or ([sources[above]] if above is not None else [])
    return ", ".join(dict.fromkeys(found)) or default


def _format_errors(exc: ValidationError, source: str, sources: Sources | None = None) -> str:
    """One line per problem: ``SOURCE: key.path: message``."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        error = err.get("ctx", {}).get("error")
        keys = [loc + key for key in getattr(error, "keys", [])] or [loc]  # a method's options: the keys at fault
        where = ", ".join(dict.fromkeys(_source_of(k, sources, source) for k in keys)) if sources else source
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {'.'.join(loc) or '(root)'}: {message}")
    return "\n".join(lines)


def validate_config(raw: dict[str, Any], source: str = "<config>", sources: Sources | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, sources)) from None


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where each of its keys was set (file, included file, ``--set``)."""

    config: ExperimentConfig
    sources: Sources

    def source_of(self, key: str) -> str:
        """The file or ``--set`` argument that set ``key`` (``a.b.c``), or ``<defaults>``."""
        return _source_of(tuple(key.split(".")), self.sources, "<defaults>")


def builtin_configs() -> list[str]:
    """Names of the experiment configs shipped with the package (``recsys train --config NAME``)."""
    return sorted(p.stem for p in CONFIG_ROOT.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """``path`` itself when it is a file, else the built-in config of that name.

    >>> resolve_config_path("quickstart").name
    'quickstart.yaml'
    """
    given = Path(path)
    if given.exists() or given.suffix in (".yaml", ".yml") or len(given.parts) > 1:
        return given
    builtin = CONFIG_ROOT / f"{given.name}.yaml"
    if builtin.is_file():
        return builtin
    raise ConfigError(f"{path}: no such file, and no built-in config of that name (built-in: {', '.join(builtin_configs())})")


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> LoadedConfig:
    """Load, override and validate an experiment config (a YAML file or a built-in name such as
    ``quickstart``), keeping the source of every key; errors name the file, included file or
    ``--set`` argument that holds the bad key."""
    if path is not None:
        path = resolve_config_path(path)
    raw, sources = _load(Path(path)) if path is not None else ({}, {})
    for assignment in overrides or []:
        apply_override(raw, assignment, sources)
    return LoadedConfig(validate_config(raw, str(path) if path is not None else "<defaults>", sources), sources)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, override and validate an experiment config."""
    return load_experiment(path, overrides).config


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flat ``a.b.c -> value`` view of a config (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump(mode="json").items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value
