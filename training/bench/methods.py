"""How a memory budget is put to each benchmarked method: a table from name to a typed method value.

A sweep point is (method, budget, seed). ``SWEEP_METHODS[name]`` says which registered method
it trains with which options (``embedding``: a ``MethodSpec``, validated when this module is
imported; a composition such as ``unified+dsl`` is ``dsl`` with a typed ``base``) and how the
budget (a compression ratio: full fp32 bytes / budget) is set (``budget``: a function of the
``Budget`` giving ``--set`` overrides). Adding a method to the suite is adding a row here;
nothing else in the sweep names methods.

* ``hash``, ``qr``, ``unified``, ``hybrid``, ``auto``, ``dsl``: the method's own ``embedding.compression`` (``dsl``
  fits its density to the budget; on ``full`` its CSR row offsets alone cost 1/D of full, so it
  cannot go below about D× and such points fail, recorded with the method's message).
* ``optembed``: the budget-aware search (``search_compression``); the supernet is trained
  unbudgeted, so it is the same for every budget of a seed and is trained once
  (``shared_phases``): later budgets copy it and only search and retrain.
* ``unified+optembed``: OptEmbed over a ``unified`` base of twice the budget (rows from the
  budget), searched within the budget: pruned rows and fewer chunks buy the other half.
* ``unified+dsl``: DSL over a ``unified`` base at half the compression (twice the budget's
  bytes), its density fitted so that the served CSR tables meet the budget.

OptEmbed's evolutionary search runs 10 generations on 10k validation rows here (the method's
defaults, 30 generations on 20k rows, take minutes per point); ``quick`` overrides shorten it
further in ``--quick`` mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from recsys.embeddings import MethodSpec, method_spec


@dataclass(frozen=True)
class Budget:
    """One budget of a sweep, in the terms a method may need."""

    compression: float  # full fp32 bytes / budget
    budget_bytes: int  # floor(full_bytes / compression)
    full_bytes: int
    embedding_dim: int


def _compression(b: Budget) -> list[str]:
    return [f"embedding.compression={b.compression:g}"]


def _search(b: Budget) -> list[str]:
    return [f"embedding.options.search_compression={b.compression:g}"]


def _unified_base_rows(b: Budget) -> list[str]:
    """Rows of a one-sub-table ``unified`` base (chunks D/2 wide) of twice the budget's bytes."""
    chunk = b.embedding_dim // 2 if b.embedding_dim % 2 == 0 else b.embedding_dim
    return [f"embedding.options.base.options.rows={max(1, 2 * b.budget_bytes // (chunk * 4))}", *_search(b)]


def _half_compression_base(b: Budget) -> list[str]:
    return [f"embedding.options.base_compression={max(1.0, b.compression / 2):g}", *_compression(b)]


@dataclass(frozen=True)
class SweepMethod:
    """A benchmarked method: a registered method with options, and how a budget is applied."""

    embedding: MethodSpec  # the method and its options (a wrapper's base included)
    budget: Callable[[Budget], list[str]] | None = _compression  # None: uncompressed, trained once per seed
    shared_phases: tuple[str, ...] = ()  # phases that do not depend on the budget (reused across budgets)
    quick: dict[str, Any] = field(default_factory=dict)  # option values in --quick mode

    def spec(self, quick: bool = False) -> MethodSpec:
        """The method value of a point (with the ``quick`` options in ``--quick`` mode)."""
        if not quick or not self.quick:
            return self.embedding
        return method_spec(self.embedding.method, self.embedding.options.model_dump(exclude_unset=True) | self.quick)


def spec(method: str, **options: Any) -> MethodSpec:
    """A method value, validated now: ``spec("dsl", base=spec("unified"))``."""
    return method_spec(method, options)


_OPTEMBED_QUICK = {"generations": 3, "parents": 4, "mutations": 4, "crossovers": 4, "eval_rows": 2000}
# A shorter search than the method's default (30 generations, ~550 evaluations: minutes per point).
_OPTEMBED = {"generations": 10, "eval_rows": 10000}
_DSL_QUICK = {"update_every": 5}

SWEEP_METHODS: dict[str, SweepMethod] = {
    "full": SweepMethod(spec("full"), budget=None),
    "hash": SweepMethod(spec("hash")),
    "qr": SweepMethod(spec("qr")),
    "unified": SweepMethod(spec("unified")),
    "hybrid": SweepMethod(spec("hybrid")),
    "auto": SweepMethod(spec("auto")),
    "optembed": SweepMethod(spec("optembed", **_OPTEMBED), budget=_search, shared_phases=("supernet",), quick=_OPTEMBED_QUICK),
    "dsl": SweepMethod(spec("dsl"), quick=_DSL_QUICK),
    "unified+optembed": SweepMethod(spec("optembed", **_OPTEMBED, base=spec("unified")), budget=_unified_base_rows, quick=_OPTEMBED_QUICK),
    "unified+dsl": SweepMethod(spec("dsl", base=spec("unified")), budget=_half_compression_base, quick=_DSL_QUICK),
}
DEFAULT_METHODS = tuple(SWEEP_METHODS)


def sweep_method(name: str) -> SweepMethod:
    try:
        return SWEEP_METHODS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark method '{name}'; available: {', '.join(SWEEP_METHODS)}") from None
