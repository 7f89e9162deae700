"""Hyper-parameter search over a method's options at a byte budget, on Ray Tune (``recsys tune``)."""
