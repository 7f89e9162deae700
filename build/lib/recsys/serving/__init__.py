"""Serving: the in-process lookup layer (``Store``), the HTTP service and the MLflow pyfunc.

Imports ``recsys`` only, never ``training``.
"""
