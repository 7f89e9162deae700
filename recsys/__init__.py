"""Compressed embedding tables for TorchRec CTR models."""

__version__ = "0.1.0"
