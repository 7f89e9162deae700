"""What clients of the service depend on, so a hot swap that changes it can be refused.

The interface of a served model is its sparse features (name, vector width, single- or
multi-valued, weighted) and its dense feature names. The method, the dtype (fp32 -> int8), the
weights and the vocabularies may change between versions; a new dimension (16 -> 8) or feature
set breaks callers that size buffers or build requests from the old one, so ``ModelHolder``
refuses such a version unless the service was started with ``--allow-interface-change``.

Example:
    >>> changes(Interface.of(old_store), Interface.of(new_store))   # doctest: +SKIP
    ['dimension 16 -> 8 (every feature)']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recsys.serving.store import Store


@dataclass(frozen=True)
class Interface:
    sparse: dict[str, tuple[int, bool, bool]]  # name -> (width, multi_valued, weighted)
    dense: tuple[str, ...]

    @classmethod
    def of(cls, store: "Store") -> "Interface":
        info = store.encoder.sparse_info
        sparse = {n: (w, bool(info[n].multi_valued), bool(info[n].weighted)) for n, w in store.widths.items()}
        return cls(sparse, tuple(sorted(store.dense_features)))


def _names(names: list[str]) -> str:
    return ", ".join(sorted(names)[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")


def changes(old: Interface, new: Interface) -> list[str]:
    """How ``new`` differs from ``old`` for a client, one phrase per difference (empty: compatible)."""
    out = []
    removed, added = sorted(set(old.sparse) - set(new.sparse)), sorted(set(new.sparse) - set(old.sparse))
    if removed:
        out.append(f"sparse features removed: {_names(removed)}")
    if added:
        out.append(f"sparse features added: {_names(added)}")
    common = [n for n in old.sparse if n in new.sparse]
    widths = {(old.sparse[n][0], new.sparse[n][0]) for n in common if old.sparse[n][0] != new.sparse[n][0]}
    for a, b in sorted(widths):
        moved = [n for n in common if (old.sparse[n][0], new.sparse[n][0]) == (a, b)]
        out.append(f"dimension {a} -> {b} ({'every feature' if len(moved) == len(common) else _names(moved)})")
    kinds = [n for n in common if old.sparse[n][1:] != new.sparse[n][1:]]
    if kinds:
        out.append(f"single/multi-valued or weighted changed: {_names(kinds)}")
    if old.dense != new.dense:
        out.append(f"dense features {list(old.dense)[:8]} -> {list(new.dense)[:8]}")
    return out
