"""What ``recsys tune`` searches: per method, its key options; for every method, the sparse optimizer.

``SPACES[method]`` maps a config key to the values tried (``--set``-style keys, applied after
the method's budget overrides from ``recsys.training.bench.methods``). ``plan_trials`` is seeded
and deterministic: first each method at its defaults (the suite's point of that method, so a
search never does worse on validation than the default configurations it covers), then random
draws, trial ``i`` taking the methods in turn and one value per key (no trial repeats another
while the space allows). A draw ``accept`` refuses (a method that cannot meet the budget with
those options) is drawn again, so the same ``(methods, trials, seed)`` gives the same trials,
which is what makes a search resumable.

The values come from the quality suite (``docs/results/suite.md``): at 10× ``qr`` won on the
Criteo sample, ``dsl`` / ``unified+dsl`` on the Avazu sample and ``small_real``, ``hybrid`` on
``criteo_100k``; at 100× ``unified`` and ``unified+dsl``. ``sparse_lr`` / ``sparse_eps``: on
8k-row sets (80 steps in all) a larger step and ε = 1e-8 can matter (``docs/results/sparse_eps.md``).

Example:
    >>> [(t.method, t.options) for t in plan_trials(["hash", "qr"], 3, seed=0, embedding_dim=16)][:2]
    [('hash', {}), ('qr', {})]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

COMMON: dict[str, list[Any]] = {
    "training.sparse_lr": [0.02, 0.05, 0.1, 0.2],
    "training.sparse_eps": [1e-8, 1e-5, 1e-3, 1e-2],
}


def spaces(embedding_dim: int) -> dict[str, dict[str, list[Any]]]:
    """Per benchmark method (``recsys.training.bench.methods``), its searched options."""
    chunks = sorted({max(1, embedding_dim // 4), max(1, embedding_dim // 2)})
    dsl = {
        "embedding.options.update_every": [5, 20, 100, None],
        "embedding.options.zeta0": [0.2, 0.5],
        "embedding.options.global_budget": [True, False],
    }
    # exact_below is left out: UE's collision-free exact tables cost ~n²/(2·exact_pairs) rows, over a 10x
    # budget even for 6-value fields (measured on small_real), so such trials only fail
    unified = {"embedding.options.num_tables": [1, 2], "embedding.options.chunk_dim": chunks, "embedding.options.chunks": [None, "auto"]}
    return {
        "full": {},
        "hash": {},
        "qr": {"embedding.options.combiner": ["mult", "sum", "concat"]},
        "unified": unified,
        "hybrid": {"embedding.options.hot_share": [None, 0.1, 0.25, 0.5, 0.75]},
        "auto": {},
        "optembed": {"embedding.options.alpha": [1e-4, 1e-3, 1e-2], "embedding.options.threshold_lr": [0.5, 2.0, 8.0]},
        "dsl": dsl,
        "unified+dsl": {**dsl, "embedding.options.base.options.num_tables": [1, 2]},
        "unified+optembed": {"embedding.options.alpha": [1e-4, 1e-3, 1e-2]},
    }


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a benchmark method and its option values (none: the method's defaults)."""

    index: int
    method: str
    options: dict[str, Any]

    @property
    def name(self) -> str:
        digest = hashlib.sha1(json.dumps([self.method, self.options], sort_keys=True).encode()).hexdigest()[:8]
        return f"t{self.index:03d}_{self.method}_{digest}"

    def overrides(self) -> tuple[str, ...]:
        """``KEY=VALUE`` overrides (values as YAML: ``null`` for None)."""
        return tuple(f"{k}={_yaml(v)}" for k, v in self.options.items())


def _yaml(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def plan_trials(
    methods: list[str], trials: int, seed: int, embedding_dim: int, accept: Callable[[str, dict[str, Any]], bool] | None = None
) -> list[TrialSpec]:
    """``trials`` trials over ``methods``, drawn from ``seed``; see the module docstring. ``accept(method,
    options)`` false: the draw is redrawn (a method none of whose draws is accepted gets no random trial)."""
    table = spaces(embedding_dim)
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"recsys tune: no search space for {unknown}; methods: {', '.join(table)}")
    rng = np.random.default_rng(seed)
    out = [TrialSpec(i, m, {}) for i, m in enumerate(methods[:trials])]
    seen = {json.dumps([t.method, t.options], sort_keys=True) for t in out}
    turn = 0
    while len(out) < trials and turn < 50 * trials:
        method = methods[turn % len(methods)]
        turn += 1
        space = {**table[method], **COMMON}
        for _ in range(100):  # a repeat of an earlier trial is redrawn (kept when the space is exhausted)
            options = {k: values[int(rng.integers(len(values)))] for k, values in space.items()}
            key = json.dumps([method, options], sort_keys=True)
            if key not in seen:
                break
        if accept is not None and not accept(method, options):
            continue
        seen.add(key)
        out.append(TrialSpec(len(out), method, options))
    return out
