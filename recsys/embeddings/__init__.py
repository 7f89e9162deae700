"""Embedding methods behind one interface; importing this package registers the built-in ones."""

from recsys.embeddings.base import EmbeddingMethod, FeatureInfo, MethodContext, MethodOptions, Phase, table_bytes
from recsys.embeddings.registry import available_methods, build_method, get_method, parse_options, register_method

from recsys.embeddings import dsl, full, hashtrick, hybrid, optembed, qr, unified  # noqa: F401  (importing registers the built-in methods)

__all__ = [
    "EmbeddingMethod",
    "FeatureInfo",
    "MethodContext",
    "MethodOptions",
    "Phase",
    "available_methods",
    "build_method",
    "get_method",
    "parse_options",
    "register_method",
    "table_bytes",
]
