"""Which dtypes each method's served form can be exported at; a clear error for the others."""

from __future__ import annotations

import pytest

from recsys.embeddings import available_methods, get_method
from recsys.export import DTYPES, ArtifactError
from recsys.export.exporter import quantizable_tables, supported_dtypes
from recsys.export.tables import tables_uninitialised
from tests.unit.test_method_contract import contract_ctx, make

FP32_ONLY = {"optembed", "dsl"}  # compact tables / sparse rows outside stock EBCs


def _served(name: str):
    method = make(name).eval()
    exported = method.export()
    state = {k: v.detach().contiguous() for k, v in exported.state.items()}
    with tables_uninitialised():
        served = get_method(exported.name).from_export(contract_ctx(name), exported)
    return served, state


@pytest.mark.parametrize("name", available_methods())
def test_supported_dtypes_of_every_method(name):
    served, state = _served(name)
    expected = ("fp32",) if name in FP32_ONLY else DTYPES
    assert supported_dtypes(served, state) == expected
    for dtype in DTYPES:
        if dtype in expected:
            quantizable_tables(name, served, state, dtype)
        else:
            with pytest.raises(ArtifactError, match=rf"method '{name}' cannot be exported as {dtype}.*supported dtypes for '{name}': fp32$"):
                quantizable_tables(name, served, state, dtype)
