"""The interface every embedding method implements, and the one memory-accounting rule.

A method is an ``nn.Module`` that TorchRec models use in place of an
``EmbeddingBagCollection``: ``forward(KeyedJaggedTensor) -> KeyedTensor`` with one key per
sparse feature, plus ``embedding_bag_configs()`` and ``is_weighted()``. Methods hold their
tables in stock ``EmbeddingBagCollection`` children (never a subclass), so TorchRec's sharder
and fbgemm's fused kernels do the lookups; the method only rewrites the ids going in and the
pooled vectors coming out.

Accounting rule (``memory_bytes``), the same for all methods: the bytes needed to serve the
method in fp32 = Σ over tables rows × dim × 4, plus every index/remap/mask structure the
lookup needs (at their stored dtype). ``full_bytes`` of a context is the collisionless fp32
cost Σ_f cardinality_f × dim × 4; ``compression = full_bytes / memory_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.features import DatasetSpec

BYTES_PER_WEIGHT = 4
IdScheme = Literal["index", "raw"]


def table_bytes(rows: int, dim: int, bytes_per_weight: int = BYTES_PER_WEIGHT) -> int:
    """Bytes of a dense ``rows × dim`` table."""
    return int(rows) * int(dim) * bytes_per_weight


def ebc_configs(ebc: nn.Module) -> list[EmbeddingBagConfig]:
    """Table configs of a stock EBC, or of the sharded EBC that DMP put in its place."""
    return list(ebc._embedding_bag_configs)


def ebc_bytes(ebc: nn.Module) -> int:
    """fp32 bytes of every table of a (possibly sharded) EBC."""
    return sum(table_bytes(t.num_embeddings, t.embedding_dim) for t in ebc_configs(ebc))


@dataclass(frozen=True)
class FeatureInfo:
    """What a method needs to know about one sparse feature."""

    name: str
    cardinality: int  # rows of a collisionless table (vocabulary + reserved rows)
    num_distinct: int | None = None
    multi_valued: bool = False
    weighted: bool = False
    pooling: PoolingType = PoolingType.SUM


@dataclass(frozen=True)
class MethodContext:
    """Everything a method is built from besides its own options."""

    features: tuple[FeatureInfo, ...]
    embedding_dim: int
    budget_bytes: int | None = None  # the method's sizes must fit this, when given
    # per feature, the train counts of its values in index order (index 2..), for methods with
    # ``uses_value_counts``; read from the vocabulary files (``recsys.data.vocab.read_value_counts``)
    value_counts: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_spec(cls, spec: DatasetSpec, embedding_dim: int, compression: float | None = None, budget_bytes: int | None = None) -> "MethodContext":
        """Context for a dataset; ``compression`` (×) or ``budget_bytes`` sets the budget."""
        features = tuple(
            FeatureInfo(
                name=f.name,
                cardinality=int(f.cardinality or 0),
                num_distinct=f.num_distinct,
                multi_valued=f.multi_valued,
                weighted=f.weighted,
                pooling=PoolingType.MEAN if f.multi_valued else PoolingType.SUM,
            )
            for f in spec.sparse_fields
        )
        ctx = cls(features, embedding_dim)
        return ctx.with_budget(compression=compression, budget_bytes=budget_bytes)

    def with_budget(self, compression: float | None = None, budget_bytes: int | None = None) -> "MethodContext":
        if compression is not None and budget_bytes is not None:
            raise ValueError("give either compression or budget_bytes, not both")
        if compression is not None:
            if compression < 1:
                raise ValueError(f"compression must be >= 1 (times smaller than full), got {compression}")
            budget_bytes = math.floor(self.full_bytes / compression)
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        return MethodContext(self.features, self.embedding_dim, budget_bytes, self.value_counts)

    def with_value_counts(self, counts: Mapping[str, Any] | None) -> "MethodContext":
        """The same context with the features' value counts (arrays in index order)."""
        return MethodContext(self.features, self.embedding_dim, self.budget_bytes, counts)

    @property
    def full_bytes(self) -> int:
        """fp32 bytes of collisionless tables at ``embedding_dim``: the compression baseline."""
        return sum(table_bytes(f.cardinality, self.embedding_dim) for f in self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def any_weighted(self) -> bool:
        return any(f.weighted for f in self.features)


@dataclass(frozen=True)
class Phase:
    """One stage of a method's training, run in order by ``recsys train``.

    ``kind="train"`` runs the train/eval loop (``epochs`` overrides ``training.epochs``);
    ``kind="search"`` calls ``method.search(evaluate)`` with the model frozen, where
    ``evaluate()`` returns the validation AUC on at most ``eval_rows`` rows. ``weights`` says
    where the phase starts: ``"continue"`` from the previous phase's best weights,
    ``"initial"`` from the weights the run started with (a rewind). Whatever the method keeps
    in ``phase_state()`` is carried into the next phase either way.
    """

    name: str
    kind: Literal["train", "search"] = "train"
    weights: Literal["continue", "initial"] = "continue"
    epochs: int | None = None
    eval_rows: int | None = None


PHASE_STATE_PREFIX = "__phase__."


@dataclass(frozen=True)
class ExportedMethod:
    """A method's served form, written into the export artifact.

    ``get_method(name).from_export(ctx, exported)`` rebuilds the module the lookup layer runs
    (``forward(kjt) -> KeyedTensor`` like the method's eval forward). ``options`` is JSON-able;
    ``state`` holds tensors only (saved as safetensors, never pickled).
    """

    name: str
    options: dict[str, Any]
    state: dict[str, torch.Tensor]


class MethodOptions(BaseModel):
    """Base of every method's options model (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


Optimizers = list[tuple[list[nn.Parameter], Callable[[list[torch.Tensor]], torch.optim.Optimizer]]]


class EmbeddingMethod(nn.Module):
    """Base class of every embedding method. Subclasses set ``name``, ``Options``, ``ids``.

    Subclasses implement ``forward`` and ``memory_bytes`` and hold their tables in a stock
    ``EmbeddingBagCollection`` child ``ebc``. Every other hook a caller uses is declared here
    with a default (the contract, ``docs/methods.md``): ``prepare``, ``output_dims``,
    ``shares_rows_across_features``, ``aux_loss``, ``separate_optimizers``, the training
    callbacks ``on_train_*``, the phases (``phases``, ``enter_phase``, ``phase_state``, ``search``),
    ``diagnostics``, ``collision_stats``, ``export`` / ``from_export``. A method wrapping
    another derives from ``recsys.embeddings.wrapped.WrappedMethod``.
    """

    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    ids: ClassVar[IdScheme] = "index"  # the ids a (plain) method reads: vocabulary indices or raw hashed ids
    uses_value_counts: ClassVar[bool] = False  # sizes chosen from ``ctx.value_counts`` (read them before building)
    ebc: nn.Module  # the tables: a stock EmbeddingBagCollection (DMP swaps in a sharded one)

    def __init__(self, ctx: MethodContext, options: MethodOptions) -> None:
        super().__init__()
        self.ctx = ctx
        self.options = options

    @classmethod
    def build(cls, ctx: MethodContext, options: MethodOptions) -> "EmbeddingMethod":
        """The method for ``ctx`` and validated ``options`` (``registry.build_method`` calls it);
        a wrapper builds its base here first."""
        return cls(ctx, options)

    @classmethod
    def id_scheme_for(cls, options: MethodOptions) -> IdScheme:
        """The ids a method with these options reads, known before it is built."""
        return cls.ids

    @classmethod
    def value_counts_for(cls, options: MethodOptions) -> bool:
        """Whether a method with these options sizes its tables from ``ctx.value_counts``."""
        return cls.uses_value_counts

    @property
    def id_scheme(self) -> IdScheme:
        """The ids this method reads (``"index"`` or ``"raw"``); a wrapper reads its base's."""
        return self.id_scheme_for(self.options)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Work on the ids alone (e.g. hashing) that the data loader runs on its own thread,
        ahead of the step. ``forward`` takes the result as well as raw features, with the same
        output; preparing twice is preparing once. Default: nothing to do.

        Example:
            >>> method(method.prepare(kjt)).values().equal(method(kjt).values())  # doctest: +SKIP
            True
        """
        return features

    def memory_bytes(self) -> int:  # pragma: no cover - abstract
        """Bytes to store/serve this method by the shared accounting rule."""
        raise NotImplementedError

    def output_dims(self) -> dict[str, int]:
        """Width of each feature's output vector."""
        return {f.name: self.ctx.embedding_dim for f in self.ctx.features}

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The EBC view TorchRec models read: one config per feature with its output width."""
        dims = self.output_dims()
        return [
            EmbeddingBagConfig(
                name=f"out_{f.name}",
                num_embeddings=max(f.cardinality, 1),
                embedding_dim=dims[f.name],
                feature_names=[f.name],
                pooling=f.pooling,
            )
            for f in self.ctx.features
        ]

    def is_weighted(self) -> bool:
        return self.ctx.any_weighted

    def shares_rows_across_features(self) -> bool:
        """Whether one table row serves several features; models then map each field through
        its own projection by default (``ModelConfig.field_projection``)."""
        return False

    def aux_loss(self) -> torch.Tensor | None:
        """Extra loss term added to the task loss (e.g. a regulariser); None when there is none."""
        return None

    def separate_optimizers(self) -> Optimizers:
        """Parameters trained by their own optimizer instead of the dense one, as
        ``(parameters, optimizer factory)`` pairs (e.g. OptEmbed's plain-SGD thresholds); none by default."""
        return []

    def collision_stats(self, vocab_ids: Mapping[str, Any]) -> dict[str, Any] | None:
        """Row sharing among the raw ids ``vocab_ids`` (per feature, e.g. the train vocabularies), for
        methods that hash (``unified``); None when the method reports none (see ``reports_collisions``)."""
        return None

    def reports_collisions(self) -> bool:
        """Whether ``collision_stats`` answers (so a caller reads the vocabularies only then)."""
        return False

    def on_train_begin(self, total_steps: int) -> None:
        """Called once before training with the number of optimizer steps planned."""

    def on_train_step(self, step: int) -> None:
        """Called after every optimizer step with the global step number (0-based)."""

    def on_train_resume(self, steps: int) -> None:
        """Called after ``on_train_begin`` when a fit resumes from a checkpoint taken after
        ``steps`` optimizer steps (weights and optimizer state already restored): set any step
        counter as if those steps had just been taken, without redoing their side effects."""

    def servable(self) -> bool:
        """Whether the method is in the form it serves and its budget counts (DSL: not while its
        density ramps down); the trainer keeps only checkpoints taken when it is."""
        return True

    def phases(self) -> list[Phase]:
        """The method's training stages; most methods train in one phase."""
        return [Phase("train")]

    def enter_phase(self, phase: Phase) -> None:
        """Called on a freshly built method, before sharding, when ``phase`` starts."""

    def phase_state(self) -> dict[str, torch.Tensor]:
        """Decisions carried from one phase to the next (e.g. searched dimensions)."""
        return {}

    def load_phase_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``phase_state`` returned (after the phase's weights are loaded)."""

    def diagnostics(self) -> dict[str, Any]:
        """JSON-able facts about the trained method (e.g. chosen dims, densities), logged as an artifact."""
        return {}

    def search(self, evaluate: Callable[[], float]) -> dict[str, Any]:
        """Run a ``search`` phase; returns a JSON-able summary."""
        raise NotImplementedError(f"method '{self.name}' has no search phase")

    def export(self) -> ExportedMethod:
        """The served form: by default this method's options, ``state_dict`` and ``phase_state``.

        Methods whose served form differs from the trained one (pruned or compact tables)
        override this together with ``from_export``.
        """
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        state.update({PHASE_STATE_PREFIX + k: v.detach().cpu() for k, v in self.phase_state().items()})
        return ExportedMethod(self.name, self.export_options(), state)

    def export_options(self) -> dict[str, Any]:
        """The options an export records: enough to rebuild this method's served form in a context
        without the training data's value counts. By default this method's options; a method that
        sizes itself from the counts (``hybrid``) records the sizes it chose."""
        return self.options.model_dump(mode="json")

    @classmethod
    def from_export(cls, ctx: MethodContext, exported: ExportedMethod) -> nn.Module:
        """The eval-mode module serving ``exported``; by default the method in its last phase
        with ``state`` loaded (tensors assigned, not copied). The lookup layer may swap stock
        ``EmbeddingBagCollection`` children of the result for quantized ones."""
        method = cls(ctx, cls.Options.model_validate(exported.options))
        method.enter_phase(method.phases()[-1])
        weights: Mapping[str, torch.Tensor] = {k: v for k, v in exported.state.items() if not k.startswith(PHASE_STATE_PREFIX)}
        method.load_state_dict(weights, strict=True, assign=True)
        n = len(PHASE_STATE_PREFIX)
        method.load_phase_state({k[n:]: v for k, v in exported.state.items() if k.startswith(PHASE_STATE_PREFIX)})
        return method.eval()

    def compression_ratio(self) -> float:
        return self.ctx.full_bytes / max(self.memory_bytes(), 1)

    def check_budget(self) -> None:
        """Raise if the achieved bytes exceed the context's budget."""
        budget = self.ctx.budget_bytes
        if budget is not None and self.memory_bytes() > budget:
            raise ValueError(f"method '{self.name}' needs {self.memory_bytes()} bytes, over the budget of {budget}")


def keyed_tensor(keys: list[str], tensors: list[torch.Tensor]) -> KeyedTensor:
    """A KeyedTensor of per-key ``[B, d_k]`` tensors, in ``keys`` order."""
    return KeyedTensor(keys=keys, length_per_key=[int(t.shape[1]) for t in tensors], values=torch.cat(tensors, dim=1))
