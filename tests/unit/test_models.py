"""CTR models over embedding methods: shapes, gradients, projection, no-dense, loss, learning.

The stand-in method and batches defined here are reused by ``test_models_dmp.py``.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.config import ModelConfig
from recsys.data.batch import Batch
from recsys.embeddings import EmbeddingMethod, FeatureInfo, MethodContext, MethodOptions, build_method, table_bytes
from recsys.models import DLRM, DCNv2, DeepFM, FMInteraction, LearnedConstant, ProjectionArch, SparseArch, TrainModel, available_models, build_model
from recsys.models.reference import ReferenceDLRM

D = 8
FEATURES = (
    FeatureInfo("a", 20),
    FeatureInfo("b", 30, multi_valued=True, pooling=PoolingType.MEAN),
    FeatureInfo("c", 10),
)
MODEL_NAMES = ["dlrm", "dcnv2", "deepfm"]


class StandInMethod(EmbeddingMethod):
    """A stock EBC in ``ebc`` with optional per-feature widths and a fixed aux loss."""

    name = "stand_in"

    def __init__(self, ctx: MethodContext, dims: dict[str, int] | None, aux: torch.Tensor | None) -> None:
        super().__init__(ctx, MethodOptions())
        self.dims = dims or {f.name: ctx.embedding_dim for f in ctx.features}
        self.aux = aux
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(f.cardinality, self.dims[f.name], f"t_{f.name}", feature_names=[f.name], pooling=f.pooling) for f in ctx.features
            ]
        )

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.ebc(features)

    def memory_bytes(self) -> int:
        return sum(table_bytes(f.cardinality, self.dims[f.name]) for f in self.ctx.features)

    def output_dims(self) -> dict[str, int]:
        return dict(self.dims)

    def aux_loss(self) -> torch.Tensor | None:
        return self.aux


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny ops run fastest on one intra-op thread, and stay fast when other processes share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stand_in(dims: dict[str, int] | None = None, aux: torch.Tensor | None = None) -> StandInMethod:
    """The stand-in over ``FEATURES`` at width ``D``."""
    return StandInMethod(MethodContext(FEATURES, D), dims, aux)


def make_batch(batch_size: int, num_dense: int, seed: int = 0) -> Batch:
    """Random batch: one id for a and c, 0-3 ids for b (empty bags included)."""
    g = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for f in FEATURES:
        low, high = (0, 4) if f.multi_valued else (1, 2)
        n = torch.randint(low, high, (batch_size,), generator=g)
        lengths.append(n)
        values.append(torch.randint(0, f.cardinality, (int(n.sum()),), generator=g))
    kjt = KeyedJaggedTensor(keys=[f.name for f in FEATURES], values=torch.cat(values), lengths=torch.cat(lengths).int())
    labels = torch.randint(0, 2, (batch_size,), generator=g).float()
    return Batch(torch.randn(batch_size, num_dense, generator=g), kjt, labels)


def small_config(name: str) -> ModelConfig:
    sizes = {"dense_arch": [16], "over_arch": [16, 8], "deep_layers": [16]}
    return ModelConfig(name=name, embedding_dim=D, dcn_num_layers=2, dcn_low_rank_dim=4, **sizes)


def assert_all_grads(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_registry_builds_each_model() -> None:
    assert available_models() == ["dcnv2", "deepfm", "dlrm"]
    for name, cls in [("dlrm", DLRM), ("dcnv2", DCNv2), ("deepfm", DeepFM)]:
        assert type(build_model(small_config(name), stand_in(), num_dense=4)) is cls
    dcn = build_model(small_config("dcnv2"), stand_in(), num_dense=4)
    assert len(dcn.inter_arch.crossnet.W_kernels) == 2 and dcn.inter_arch.crossnet.W_kernels[0].shape == (4 * D, 4)


@pytest.mark.parametrize("name,num_dense", itertools.product(MODEL_NAMES, [4, 0]))
def test_shape_finite_and_gradients_reach_every_parameter(name: str, num_dense: int) -> None:
    torch.manual_seed(0)
    model = build_model(small_config(name), stand_in(), num_dense)
    batch = make_batch(32, num_dense)
    loss, logits = TrainModel(model)(batch)
    assert logits.shape == (32,) and torch.isfinite(logits).all()
    loss.backward()
    assert_all_grads(model)
    tables = {n for n, _ in model.named_parameters() if n.startswith("embedding.ebc.")}
    assert tables == {f"embedding.ebc.embedding_bags.t_{f.name}.weight" for f in FEATURES}


@pytest.mark.parametrize("name", ["dlrm", "dcnv2"])
def test_no_dense_features_use_a_learned_constant(name: str) -> None:
    model = build_model(small_config(name), stand_in(), num_dense=0)
    assert isinstance(model.dense_arch, LearnedConstant)
    batch = make_batch(5, 0)
    assert torch.equal(model.dense_arch(batch.dense_features), model.dense_arch.value.expand(5, D))
    assert build_model(small_config("deepfm"), stand_in(), num_dense=0).dense_field is None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_differing_widths_are_projected(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(small_config(name), stand_in({"a": D, "b": 4, "c": 6}), num_dense=3)
    projection = model.sparse_arch.projection
    assert isinstance(projection, ProjectionArch) and projection.projected == ["b", "c"]
    loss, logits = TrainModel(model)(make_batch(16, 3))
    assert logits.shape == (16,)
    loss.backward()
    assert_all_grads(model)
    assert build_model(small_config(name), stand_in(), num_dense=3).sparse_arch.projection is None


def test_projection_maps_only_the_other_widths() -> None:
    arch = SparseArch({"a": D, "b": 4}, D)
    a, b = torch.randn(2, D), torch.randn(2, 4)
    fields = arch(KeyedTensor.from_tensor_list(["a", "b"], [a, b]))
    assert fields.shape == (2, 2, D) and torch.equal(fields[:, 0], a)
    assert torch.allclose(fields[:, 1], b @ arch.projection.maps()["b"].T)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_field_projection_maps_every_field_on_its_own(name: str) -> None:
    torch.manual_seed(0)
    cfg = small_config(name).model_copy(update={"field_projection": True})
    model = build_model(cfg, stand_in({"a": D, "b": 4, "c": D}), num_dense=3)
    projection = model.sparse_arch.projection
    assert isinstance(projection, ProjectionArch) and projection.projected == ["a", "b", "c"]
    same = torch.randn(2, D)  # one shared row read by two features: each reads it through its own map
    fields = model.sparse_arch(KeyedTensor.from_tensor_list(["a", "b", "c"], [same, torch.randn(2, 4), same]))
    weights = projection.maps()
    assert torch.allclose(fields[:, 0], same @ weights["a"].T) and torch.allclose(fields[:, 2], same @ weights["c"].T)
    assert not torch.allclose(fields[:, 0], fields[:, 2])
    loss, _ = TrainModel(model)(make_batch(16, 3))
    loss.backward()
    assert_all_grads(model)
    uniform = build_model(cfg, stand_in(), num_dense=3).sparse_arch  # one width: the batched path
    assert uniform.projection.uniform and not projection.uniform
    vectors = {k: torch.randn(5, D) for k in "abc"}
    maps = uniform.projection.maps()
    expected = torch.stack([vectors[k] @ maps[k].T for k in "abc"], dim=1)
    assert torch.allclose(uniform(KeyedTensor.from_tensor_list(list("abc"), [vectors[k] for k in "abc"])), expected, atol=1e-6)
    assert torch.allclose(uniform(KeyedTensor.from_tensor_list(list("cab"), [vectors[k] for k in "cab"])), expected, atol=1e-6)


def test_sparse_arch_orders_fields_by_config_not_by_output() -> None:
    arch = SparseArch({"a": D, "b": D, "c": D}, D)
    tensors = {k: torch.randn(3, D) for k in "abc"}
    ordered = arch(KeyedTensor.from_tensor_list(list("abc"), [tensors[k] for k in "abc"]))
    shuffled = arch(KeyedTensor.from_tensor_list(list("cab"), [tensors[k] for k in "cab"]))
    assert torch.equal(ordered, shuffled) and torch.equal(ordered[:, 2], tensors["c"])


def test_fm_interaction_equals_explicit_pairwise_sum() -> None:
    fields = torch.randn(4, 5, 3)
    expected = sum((fields[:, i] * fields[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(FMInteraction()(fields).squeeze(-1), expected, atol=1e-5)


@pytest.mark.parametrize("aux", [None, torch.tensor(0.25)])
def test_train_model_loss_is_bce_plus_aux(aux: torch.Tensor | None) -> None:
    model = build_model(small_config("dlrm"), stand_in(aux=aux), num_dense=2)
    batch = make_batch(64, 2)
    loss, logits = TrainModel(model)(batch)
    p, y = torch.sigmoid(logits), batch.labels
    manual = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert torch.allclose(loss, manual + (0.0 if aux is None else 0.25), atol=1e-6)
    assert TrainModel(model).embedding is model.embedding


@pytest.mark.parametrize("method,name", itertools.product(["full", "hash"], MODEL_NAMES))
def test_registered_methods_drive_every_model(method: str, name: str) -> None:
    torch.manual_seed(0)
    ctx = MethodContext(FEATURES, D).with_budget(compression=1 if method == "full" else 2)
    model = build_model(small_config(name), build_method(method, ctx), 3)
    loss, logits = TrainModel(model)(make_batch(16, 3))
    assert logits.shape == (16,) and model.sparse_arch.projection is None
    loss.backward()
    assert_all_grads(model)


def planted_batch(batch_size: int, g: torch.Generator, positive_ids: torch.Tensor) -> Batch:
    """Label = (id of "a" in a fixed set), flipped with probability 0.1; b, c and dense are noise."""
    batch = make_batch(batch_size, 2, seed=int(torch.randint(0, 2**31, (1,), generator=g)))
    labels = torch.isin(batch.sparse_features["a"].values(), positive_ids).float()
    flip = torch.rand(batch_size, generator=g) < 0.1
    batch.labels = torch.where(flip, 1 - labels, labels)
    return batch


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_learns_a_planted_rule(name: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    positive_ids = torch.randperm(20, generator=g)[:10]
    train_model = TrainModel(build_model(small_config(name), stand_in(), num_dense=2))
    optimizer = torch.optim.Adam(train_model.parameters(), lr=0.02)
    for _ in range(200):
        loss, _ = train_model(planted_batch(128, g, positive_ids))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = planted_batch(2000, g, positive_ids)
    with torch.no_grad():
        _, logits = train_model(test)
    assert roc_auc_score(test.labels.numpy(), logits.numpy()) > 0.75


@pytest.mark.parametrize("num_dense", [4, 0])
def test_reference_dlrm_shape(num_dense: int) -> None:
    model = ReferenceDLRM(stand_in().embedding_bag_configs(), num_dense, D, [16], [16, 8])
    batch = make_batch(32, num_dense)
    logits = model(batch.dense_features, batch.sparse_features)
    assert logits.shape == (32,) and torch.isfinite(logits).all()
