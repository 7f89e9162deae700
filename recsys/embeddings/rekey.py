"""Rebuilding a KeyedJaggedTensor under expanded keys, the one helper of ``hash``, ``qr`` and ``unified``.

Each rewrites the ids of a KJT into table rows: ``hash`` keeps the keys, ``qr`` and ``unified``
first repeat each input key once per table it reads (``f@q``/``f@r``, the probes ``f#j``).
``Expanded`` does the permute, spreads per-key constants (salts, sizes, divisors) over the
values and builds the new KJT with the same bags.

Example:
    >>> ex = Expanded(kjt, [0, 0, 1], torch.tensor([0, 0, 1], dtype=torch.int32))   # doctest: +SKIP
    >>> ex.rebuilt(["a#0", "a#1", "b#0"], ex.values % ex.per_value(rows))           # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

_SAME = object()  # ``rebuilt``'s default: the source's weights


class Expanded:
    """``features`` with key ``permute[i]`` at position ``i`` (all keys unchanged when ``permute`` is None)."""

    def __init__(self, features: KeyedJaggedTensor, permute: list[int] | None = None, permute_tensor: torch.Tensor | None = None) -> None:
        self.source = features if permute is None else features.permute(permute, permute_tensor)
        self.values = self.source.values()
        self.length_per_key = self.source.length_per_key()
        self._counts = torch.tensor(self.length_per_key, device=self.values.device)

    def per_value(self, per_key: torch.Tensor) -> torch.Tensor:
        """A tensor of one entry per (expanded) key repeated over that key's values."""
        return torch.repeat_interleave(per_key, self._counts, output_size=self.values.numel())

    def rebuilt(self, keys: list[str], values: torch.Tensor, weights: torch.Tensor | None | object = _SAME) -> KeyedJaggedTensor:
        """The KJT of ``values`` (one per source value) under ``keys``, with the source's bags and,
        unless given, its weights."""
        source = self.source
        return KeyedJaggedTensor(
            keys=keys,
            values=values,
            weights=source.weights_or_none() if weights is _SAME else weights,
            lengths=source.lengths(),
            offsets=source.offsets_or_none(),
            stride=source.stride(),
            length_per_key=self.length_per_key,
            offset_per_key=source.offset_per_key(),
        )
