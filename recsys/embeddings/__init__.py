"""Embedding methods behind one interface; importing this package registers the built-in ones."""

from recsys.embeddings import auto, dsl, full, hashtrick, hybrid, optembed, qr, unified  # noqa: F401  (importing registers the built-in methods)
from recsys.embeddings.base import EmbeddingMethod, FeatureInfo, MethodContext, MethodOptions, Phase, table_bytes
from recsys.embeddings.registry import MethodSpec, available_methods, build_method, get_method, method_spec, parse_options, register_method
from recsys.embeddings.wrapped import WrappedMethod, WrapperOptions

__all__ = [
    "EmbeddingMethod",
    "FeatureInfo",
    "MethodContext",
    "MethodOptions",
    "MethodSpec",
    "Phase",
    "available_methods",
    "build_method",
    "get_method",
    "method_spec",
    "parse_options",
    "register_method",
    "table_bytes",
    "WrappedMethod",
    "WrapperOptions",
]
