"""The stock ``EmbeddingBagCollection`` tables inside a served module, and their quantization.

Quantized tables are torchrec's quantized ``EmbeddingBagCollection`` (``torchrec.quant``), built
on fbgemm's ``IntNBitTableBatchedEmbeddingBagsCodegen`` (row-wise scale and bias for int8/int4;
fp16 rows), which runs on CPU. Rows are stored without padding (``ROW_ALIGNMENT = 1``).

Example:
    >>> weights = quantize_tables(served, "int8")   # doctest: +SKIP  (export side)
    >>> served = empty_quantized_tables(served, "int8"); load_tables(served, file)   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.ao.quantization import PlaceholderObserver, QConfig
from torchrec.modules.embedding_configs import DataType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import MODULE_ATTR_ROW_ALIGNMENT_INT
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection

ROW_ALIGNMENT = 1
DATA_TYPES: dict[str, DataType] = {"fp32": DataType.FP32, "fp16": DataType.FP16, "int8": DataType.INT8, "int4": DataType.INT4}
_TORCH_DTYPES = {"fp32": torch.float, "fp16": torch.float16, "int8": torch.quint8, "int4": torch.quint4x2}
_INIT_LOCK = threading.Lock()


def stock_ebcs(module: nn.Module) -> dict[str, EmbeddingBagCollection]:
    """Every stock (not subclassed) EBC inside ``module``, by module path."""
    return {path: m for path, m in module.named_modules() if type(m) is EmbeddingBagCollection}


def table_key(path: str, table: str) -> str:
    """State-dict key of a table's weight, relative to the served module."""
    return f"{path}.embedding_bags.{table}.weight" if path else f"embedding_bags.{table}.weight"


def table_shapes(module: nn.Module) -> dict[str, tuple[int, int]]:
    """``key -> (rows, dim)`` of every table of every stock EBC in ``module``."""
    return {
        table_key(path, c.name): (int(c.num_embeddings), int(c.embedding_dim))
        for path, ebc in stock_ebcs(module).items()
        for c in ebc.embedding_bag_configs()
    }


def _replace(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    if not path:
        return new
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)
    return root


def _raw(t: torch.Tensor) -> torch.Tensor:
    """The uint8 bytes of a quantized weight (torchrec wraps int4 rows in a ``UInt4Tensor``)."""
    return t.view(torch.uint8) if type(t) is not torch.Tensor else t


def _empty_quantized(ebc: nn.Module, dtype: str) -> QuantEmbeddingBagCollection:
    configs = copy.deepcopy(ebc.embedding_bag_configs())
    for c in configs:
        c.data_type = DATA_TYPES[dtype]
    return QuantEmbeddingBagCollection(configs, ebc.is_weighted(), torch.device("cpu"), row_alignment=ROW_ALIGNMENT)


def quantize_tables(module: nn.Module, dtype: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Replace every stock EBC by a quantized one (``from_float``) holding its weights at ``dtype``.

    Returns the module (a new root only when ``module`` itself is an EBC) and the quantized
    row bytes of every table by ``table_key``: what ``embedding.safetensors`` stores.
    """
    qconfig = QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.float),
        weight=PlaceholderObserver.with_args(dtype=_TORCH_DTYPES[dtype]),
    )
    out: dict[str, torch.Tensor] = {}
    for path, ebc in stock_ebcs(module).items():
        ebc.qconfig = qconfig
        setattr(ebc, MODULE_ATTR_ROW_ALIGNMENT_INT, ROW_ALIGNMENT)
        quant = QuantEmbeddingBagCollection.from_float(ebc)
        for key, value in quant.state_dict().items():
            out[f"{path}.{key}" if path else key] = _raw(value).clone()
        module = _replace(module, path, quant)
    return module, out


def empty_quantized_tables(module: nn.Module, dtype: str) -> nn.Module:
    """Replace every stock EBC by an empty quantized one (filled by ``load_quantized``)."""
    for path, ebc in stock_ebcs(module).items():
        module = _replace(module, path, _empty_quantized(ebc, dtype))
    return module


def quantized_targets(module: nn.Module) -> dict[str, torch.Tensor]:
    """``table_key -> uint8 view`` of every table storage of the quantized EBCs in ``module``."""
    out: dict[str, torch.Tensor] = {}
    for path, m in module.named_modules():
        if isinstance(m, QuantEmbeddingBagCollection):
            for c in m.embedding_bag_configs():
                out[table_key(path, c.name)] = _raw(m.embedding_bags[c.name].weight)
    return out


@contextmanager
def tables_uninitialised() -> Iterator[None]:
    """Build EBCs without their random init, whose weights are about to be replaced.

    ``torch.empty`` memory is not touched, so a served module is built without a transient
    fp32 copy of its tables. Class-level patch, so builds are serialised by a lock.
    """
    with _INIT_LOCK:
        saved = (EmbeddingBagCollection.reset_parameters, nn.EmbeddingBag.reset_parameters)
        EmbeddingBagCollection.reset_parameters = lambda self: None  # type: ignore[method-assign]
        nn.EmbeddingBag.reset_parameters = lambda self: None  # type: ignore[method-assign]
        try:
            yield
        finally:
            EmbeddingBagCollection.reset_parameters, nn.EmbeddingBag.reset_parameters = saved  # type: ignore[method-assign]
