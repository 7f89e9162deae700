"""Fast response and request bodies for the hot endpoint (numpy only, no extra dependencies).

``float32_json``: a ``[n, d]`` float32 array as a JSON array of arrays, formatted in bulk by numpy
instead of one ``float.__repr__`` per number (``json.dumps(v.tolist())`` costs ~0.5 µs a number;
this ~20 ns). Every number is written with 9 significant digits in a fixed-width exponent form,
``-1.23456789e-02``, positives padded with a leading space (whitespace between JSON tokens is
legal). Nine significant digits identify a float32 exactly, so ``np.float32(float(text))`` gives
back the served value bit for bit. Non-finite values (not valid JSON) fall back to ``json``.

``fast_pairs``: the ``items`` of a ``/v1/embeddings`` body as ``(feature, value)`` pairs when the
body is well-formed, checked in a few C-speed passes; ``None`` otherwise, and the caller then
runs the full pydantic model to produce the detailed 422.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

_VALUE_TYPES = {str, int, type(None)}  # exact types: bool and float are refused (pydantic explains)
_DIGITS = 9
_POW10 = 10.0 ** np.arange(-60, 61)  # exact for the exponents used below (|k| <= 60 covers float32)
_WIDTH = 15  # sign, d, '.', 8 digits, 'e', sign, 2 digits


_FOUR = np.array([[ord(c) for c in f"{i:04d}"] for i in range(10_000)], np.uint8)  # 0..9999 as 4 digit characters
_TWO = _FOUR[:100, 2:]


def _format(x: np.ndarray) -> np.ndarray:
    """``uint8 [m, 15]``: each float32 of ``x`` (finite, 1-d) as `` d.ddddddddde±XX`` text."""
    v = x.astype(np.float64)
    a = np.abs(v)
    zero = a == 0
    e = np.floor(np.log10(np.where(zero, 1.0, a))).astype(np.int64)
    # mantissa with 9 significant digits: round(a * 10^(8 - e)); log10 may be off by one near powers of ten
    m = np.rint(a * _POW10[60 + _DIGITS - 1 - e]).astype(np.int64)
    off = (m < 10 ** (_DIGITS - 1)) | (m >= 10**_DIGITS)
    if off.any():
        e[off] += np.where(m[off] >= 10**_DIGITS, 1, -1)
        m[off] = np.rint(a[off] * _POW10[60 + _DIGITS - 1 - e[off]]).astype(np.int64)
        over = m >= 10**_DIGITS  # rounding carried into a tenth digit: 9.999999999 -> 10.0000000
        e[over] += 1
        m[over] //= 10
    m[zero] = 0
    e[zero] = 0
    out = np.empty((len(v), _WIDTH), np.uint8)
    out[:, 0] = np.where(np.signbit(v), ord("-"), ord(" "))
    lead, rest = np.divmod(m, 10**8)
    out[:, 1] = lead + ord("0")
    out[:, 2] = ord(".")
    hi, lo = np.divmod(rest, 10_000)
    out[:, 3:7] = _FOUR[hi]
    out[:, 7:11] = _FOUR[lo]
    out[:, 11] = ord("e")
    out[:, 12] = np.where(e < 0, ord("-"), ord("+"))
    out[:, 13:15] = _TWO[np.abs(e)]
    return out


def float32_json(v: np.ndarray) -> bytes:
    """``v`` (``[n, d]``) as the JSON text of a list of lists of numbers; exact for float32."""
    n, d = v.shape
    if n == 0 or d == 0:
        return json.dumps(v.tolist()).encode()
    if not np.isfinite(v).all():
        return json.dumps(v.astype(np.float32).tolist()).encode()
    cells = _format(v.astype(np.float32, copy=False).ravel()).reshape(n, d, _WIDTH)
    row = np.empty((n, 1 + d * (_WIDTH + 1) + 1), np.uint8)  # '[' + d x (number + ',') with the last ',' -> ']' + ','
    row[:, 0] = ord("[")
    body = row[:, 1 : 1 + d * (_WIDTH + 1)].reshape(n, d, _WIDTH + 1)
    body[:, :, :_WIDTH] = cells
    body[:, :, _WIDTH] = ord(",")
    row[:, d * (_WIDTH + 1)] = ord("]")
    row[:, -1] = ord(",")
    flat = row.reshape(-1)
    return b"[" + flat[:-1].tobytes() + b"]"


def fast_pairs(doc: Any, max_items: int, max_length: int) -> list[tuple[str, Any]] | None:
    """``[(feature, value)]`` of a body ``{"items": [{"feature": str, "value": str|int|null}, ...]}``
    within the limits, else ``None`` (anything unusual: let the pydantic model explain it)."""
    if type(doc) is not dict or len(doc) != 1:
        return None
    items = doc.get("items")
    if type(items) is not list or len(items) > max_items:
        return None
    if not items:
        return []
    if set(map(type, items)) != {dict} or set(map(len, items)) != {2}:
        return None
    try:
        features = [i["feature"] for i in items]
        values = [i["value"] for i in items]
    except KeyError:
        return None
    try:
        names = set(features)  # a request names few features: check each once
    except TypeError:  # an unhashable feature (list, object)
        return None
    if set(map(type, names)) != {str} or min(map(len, names)) == 0 or max(map(len, names)) > max_length:
        return None
    kinds = set(map(type, values))
    if not kinds <= _VALUE_TYPES:
        return None
    if kinds == {str} and max(map(len, values)) > max_length:
        return None
    if str in kinds and len(kinds) > 1 and max(len(v) for v in values if type(v) is str) > max_length:
        return None
    return list(zip(features, values))
