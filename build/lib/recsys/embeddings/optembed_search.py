"""OptEmbed's evolutionary search over per-field dimensions, pure and budget-aware.

A candidate is a tuple of per-field dimensions ``d_f ∈ 1..max_dims[f]``; a cost function
gives its bytes (for OptEmbed: kept rows × stored columns × 4, plus the remap structures). Each generation keeps the ``parents`` best distinct candidates of
the current population (fitness descending, then bytes ascending) and breeds ``mutations``
children by mutation (each field resampled uniformly with probability ``mutation_prob``)
and ``crossovers`` children by single-point crossover. As in the authors' search there is no
elitism: the best candidate ever seen is tracked and returned.

Two bugs of the authors' code are avoided: the crossover cut is drawn over FIELDS (between
the parents' first and last differing field, so a child is never a copy of a parent), and
candidates are immutable tuples (mutation cannot modify a parent in place).

With a budget, every candidate is repaired before evaluation: its dimensions are scaled down
by the largest common factor that fits (``d_f → max(1, ⌊s·d_f⌋)``), so the search only
evaluates candidates within the budget. Fitness values are cached by candidate: a candidate
seen before is never re-evaluated.

Example:
    >>> space = SearchSpace(max_dims=(4, 4), cost=lambda c: 40 * c[0] + 400 * c[1])
    >>> result = evolve(space, lambda c: -abs(c[0] - 3) - abs(c[1] - 1), EvolutionConfig(generations=5))
    >>> result.best
    (3, 1)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

Candidate = tuple[int, ...]


@dataclass(frozen=True)
class SearchSpace:
    """Per-field dimensions ``1..max_dims[f]``, the byte cost of a candidate, and the budget.

    ``cost`` must not decrease when a dimension grows (repairs rely on it).
    """

    max_dims: tuple[int, ...]
    cost: Callable[[Candidate], int]
    budget_bytes: int | None = None
    fill: bool = False  # also scale fitting candidates up towards the budget (see ``repair``)

    def __post_init__(self) -> None:
        if not self.max_dims or min(self.max_dims) < 1:
            raise ValueError(f"every field needs at least one dimension, got max_dims={self.max_dims}")

    @property
    def num_fields(self) -> int:
        return len(self.max_dims)

    def bytes(self, cand: Candidate) -> int:
        """Bytes of a candidate."""
        return int(self.cost(cand))

    def fits(self, cand: Candidate) -> bool:
        return self.budget_bytes is None or self.bytes(cand) <= self.budget_bytes

    def largest(self) -> Candidate:
        return tuple(self.max_dims)

    def check_feasible(self) -> None:
        """Raise when even one dimension per field is over the budget."""
        smallest = (1,) * self.num_fields
        if not self.fits(smallest):
            raise ValueError(
                f"the search budget of {self.budget_bytes} bytes is below the smallest candidate "
                f"({self.bytes(smallest)} bytes: one dimension per field for every kept row)"
            )

    def repair(self, cand: Candidate) -> Candidate:
        """``cand`` if it fits, else its dims scaled by the largest common factor that fits.

        With ``fill`` (and a budget) a fitting candidate is scaled up instead, by the largest
        common factor that still fits (each dim capped at its maximum): every candidate then
        spends about the budget, and the search only decides how to share it between fields.
        """
        fits = self.fits(cand)
        if fits and not (self.fill and self.budget_bytes is not None):
            return cand
        if not fits:
            self.check_feasible()

        def scaled(s: float) -> Candidate:
            return tuple(min(m, max(1, math.floor(d * s))) for d, m in zip(cand, self.max_dims))

        low, high = (1.0, max(m / d for d, m in zip(cand, self.max_dims))) if fits else (0.0, 1.0)
        if fits and self.fits(scaled(high)):
            return scaled(high)
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if self.fits(scaled(mid)) else (low, mid)
        return scaled(low)


@dataclass(frozen=True)
class EvolutionConfig:
    """Hyperparameters of the search (the authors' values by default)."""

    generations: int = 30
    parents: int = 10  # the top-k distinct candidates that breed
    mutations: int = 10
    crossovers: int = 10
    mutation_prob: float = 0.1
    seed: int = 0

    @property
    def population(self) -> int:
        return self.mutations + self.crossovers


@dataclass
class SearchResult:
    """Best candidate ever seen, its fitness and bytes, and what the search cost."""

    best: Candidate
    best_fitness: float
    best_bytes: int
    evaluations: int
    cache_hits: int
    history: list[dict[str, Any]] = field(default_factory=list)


def random_candidate(space: SearchSpace, rng: random.Random) -> Candidate:
    return space.repair(tuple(rng.randint(1, m) for m in space.max_dims))


def mutate(parent: Candidate, space: SearchSpace, prob: float, rng: random.Random) -> Candidate:
    """A new candidate: each field of ``parent`` resampled in ``1..max`` with probability ``prob``."""
    child = tuple(rng.randint(1, m) if rng.random() < prob else d for d, m in zip(parent, space.max_dims))
    return space.repair(child)


def crossover(a: Candidate, b: Candidate, rng: random.Random) -> Candidate | None:
    """``a[:cut] + b[cut:]`` with the cut drawn over fields so that the child differs from both
    parents; None when the parents differ in fewer than two fields (no such cut exists)."""
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(diff) < 2:
        return None
    cut = rng.randint(diff[0] + 1, diff[-1])
    return a[:cut] + b[cut:]


def breed(parents: list[Candidate], space: SearchSpace, cfg: EvolutionConfig, rng: random.Random) -> list[Candidate]:
    """The next population: ``cfg.mutations`` mutants and ``cfg.crossovers`` crossover children."""
    children = [mutate(parents[i % len(parents)], space, cfg.mutation_prob, rng) for i in range(cfg.mutations)]
    pairs = [(i, j) for i in range(len(parents)) for j in range(len(parents)) if i != j]
    rng.shuffle(pairs)
    crossed: list[Candidate] = []
    for i, j in pairs:
        if len(crossed) == cfg.crossovers:
            break
        child = crossover(parents[i], parents[j], rng)
        if child is not None:
            crossed.append(space.repair(child))
    while len(crossed) < cfg.crossovers:  # too few distinct parents: fill with mutants
        crossed.append(mutate(rng.choice(parents), space, max(cfg.mutation_prob, 0.5), rng))
    return children + crossed


def evolve(space: SearchSpace, fitness: Callable[[Candidate], float], cfg: EvolutionConfig) -> SearchResult:
    """Run the search; ``fitness`` (e.g. validation AUC) is called once per distinct candidate."""
    space.check_feasible()
    rng = random.Random(cfg.seed)
    cache: dict[Candidate, float] = {}
    hits = 0

    def score(cand: Candidate) -> float:
        nonlocal hits
        if cand in cache:
            hits += 1
        else:
            value = float(fitness(cand))
            cache[cand] = value if math.isfinite(value) else -math.inf
        return cache[cand]

    def key(cand: Candidate) -> tuple[float, int]:
        return (-cache[cand], space.bytes(cand))

    population = [random_candidate(space, rng) for _ in range(cfg.population)]
    best: Candidate | None = None
    history: list[dict[str, Any]] = []
    for generation in range(cfg.generations):
        scores = [score(c) for c in population]
        ranked = sorted(population, key=key)
        if best is None or key(ranked[0]) < key(best):
            best = ranked[0]
        history.append({"generation": generation, "best": max(scores), "mean": sum(scores) / len(scores), "evaluated": len(cache)})
        parents = list(dict.fromkeys(ranked))[: cfg.parents]
        population = breed(parents, space, cfg, rng)
    assert best is not None, "generations must be at least 1"
    return SearchResult(best, cache[best], space.bytes(best), len(cache), hits, history)
