"""Benchmark scripts of the source checkout (not installed): per-method studies, serving, Ray, conversion comparisons.

The library the ``recsys bench`` command runs (quality sweep, speed report) is ``recsys.training.bench``
(``training/bench/``), installed with the package; these scripts build on it: ``python -m bench.NAME``.
"""
