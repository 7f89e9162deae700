"""What ``recsys tune`` searches: per method, its key options; for every method, the sparse optimizer.

``SPACES[method]`` maps a config key to the values tried (``--set``-style keys, applied after
the method's budget overrides from ``recsys.training.bench.methods``). ``plan_trials`` draws the trials
from a seed: trial ``i`` takes method ``methods[i % len(methods)]`` (every method is tried
evenly) and one value per key (no trial repeats another while the space allows), so the same ``(methods, trials, seed)`` gives the same trials
(which is what makes a search resumable).

Example:
    >>> [t.method for t in plan_trials(["hash", "qr"], 3, seed=0, embedding_dim=16)]
    ['hash', 'qr', 'hash']
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

COMMON: dict[str, list[Any]] = {
    "training.sparse_lr": [0.02, 0.05, 0.1],
    "training.sparse_eps": [1e-8, 1e-5, 1e-3],
}


def spaces(embedding_dim: int) -> dict[str, dict[str, list[Any]]]:
    """Per benchmark method (``recsys.training.bench.methods``), its searched options."""
    chunks = sorted({max(1, embedding_dim // 4), max(1, embedding_dim // 2)})
    dsl = {"embedding.options.update_every": [5, 20, 100], "embedding.options.zeta0": [0.2, 0.5]}
    # exact_below is left out: UE's collision-free exact tables cost ~n²/(2·exact_pairs) rows, over a 10x
    # budget even for 6-value fields (measured on small_real), so such trials only fail
    unified = {"embedding.options.num_tables": [1, 2], "embedding.options.chunk_dim": chunks}
    return {
        "full": {},
        "hash": {},
        "qr": {"embedding.options.combiner": ["mult", "sum", "concat"]},
        "unified": unified,
        "hybrid": {"embedding.options.hot_share": [None, 0.25, 0.5, 0.75]},
        "optembed": {"embedding.options.alpha": [1e-4, 1e-3, 1e-2], "embedding.options.threshold_lr": [0.5, 2.0, 8.0]},
        "dsl": dsl,
        "unified+dsl": dsl,
        "unified+optembed": {"embedding.options.alpha": [1e-4, 1e-3, 1e-2]},
    }


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a benchmark method and its option values."""

    index: int
    method: str
    options: dict[str, Any]

    @property
    def name(self) -> str:
        digest = hashlib.sha1(json.dumps([self.method, self.options], sort_keys=True).encode()).hexdigest()[:8]
        return f"t{self.index:03d}_{self.method}_{digest}"

    def overrides(self) -> tuple[str, ...]:
        """``KEY=VALUE`` overrides (values as YAML: ``null`` for None)."""
        return tuple(f"{k}={'null' if v is None else v}" for k, v in self.options.items())


def plan_trials(methods: list[str], trials: int, seed: int, embedding_dim: int) -> list[TrialSpec]:
    """``trials`` trials over ``methods``, drawn from ``seed``; see the module docstring."""
    table = spaces(embedding_dim)
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"recsys tune: no search space for {unknown}; methods: {', '.join(table)}")
    rng = np.random.default_rng(seed)
    out: list[TrialSpec] = []
    seen: set[str] = set()
    for i in range(trials):
        method = methods[i % len(methods)]
        space = {**table[method], **COMMON}
        for _ in range(100):  # a repeat of an earlier trial is redrawn (kept when the space is exhausted)
            options = {k: values[int(rng.integers(len(values)))] for k, values in space.items()}
            key = json.dumps([method, options], sort_keys=True)
            if key not in seen:
                break
        seen.add(key)
        out.append(TrialSpec(i, method, options))
    return out
