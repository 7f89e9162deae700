"""The compiled kernels are part of an installed package: the tests that compare them with their
numpy references skip when a checkout was never built, so this test fails instead of passing quietly."""

import importlib

import pytest


@pytest.mark.parametrize("module", ["recsys.serving.idpath", "recsys.data.fastcat", "recsys.data.fastparse"])
def test_compiled_extension_is_built(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"{module} is not built ({exc}): run `make install` (or `pip install -e .` with gcc and the Python headers)")
