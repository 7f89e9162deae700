"""The evolutionary search of ``optembed``: operators, budget repair, caching, determinism."""

from __future__ import annotations

import random

import pytest

from recsys.embeddings.optembed_search import (
    EvolutionConfig,
    SearchSpace,
    breed,
    crossover,
    evolve,
    mutate,
    random_candidate,
)

UNITS = (40, 4, 400, 12, 4000, 8)
SPACE = SearchSpace(max_dims=(16,) * len(UNITS), cost=lambda c: 100 + sum(u * d for u, d in zip(UNITS, c)))


def test_crossover_cut_is_drawn_over_fields_and_never_copies_a_parent() -> None:
    rng = random.Random(0)
    a, b = (1, 2, 3, 4, 5, 6), (11, 12, 13, 14, 15, 16)
    cuts = set()
    for _ in range(500):
        child = crossover(a, b, rng)
        assert child is not None and child not in (a, b)
        cut = next(i for i, x in enumerate(child) if x == b[i])
        assert child == a[:cut] + b[cut:]
        cuts.add(cut)
    assert cuts == {1, 2, 3, 4, 5}  # every cut between fields (the authors' draw runs over dimensions)
    assert crossover((1, 2, 3, 4, 5, 6), (9, 2, 3, 4, 5, 7), rng) == (1, 2, 3, 4, 5, 7)  # differing ends kept apart
    for _ in range(200):  # random parents differing in >= 2 fields: children differ from both
        p, q = random_candidate(SPACE, rng), random_candidate(SPACE, rng)
        if sum(x != y for x, y in zip(p, q)) >= 2:
            assert crossover(p, q, rng) not in (p, q, None)


def test_crossover_of_parents_differing_in_one_field_is_refused() -> None:
    assert crossover((1, 2, 3), (1, 5, 3), random.Random(0)) is None
    assert crossover((1, 2, 3), (1, 2, 3), random.Random(0)) is None


def test_mutation_makes_a_new_candidate_and_keeps_the_parent() -> None:
    rng = random.Random(1)
    space = SearchSpace(max_dims=(64,) * 40, cost=sum)
    parent = tuple([32] * 40)
    changed = 0
    for _ in range(500):
        child = mutate(parent, space, 0.1, rng)
        assert parent == tuple([32] * 40)
        assert all(1 <= d <= 64 for d in child)
        changed += sum(c != p for c, p in zip(child, parent))
    expected = 500 * 40 * 0.1 * (63 / 64)  # a resampled field may draw its old value
    assert abs(changed - expected) < 0.1 * expected


def test_breed_makes_the_authors_population() -> None:
    rng = random.Random(2)
    parents = [random_candidate(SPACE, rng) for _ in range(10)]
    before = list(parents)
    children = breed(parents, SPACE, EvolutionConfig(), rng)
    assert len(children) == 20 and parents == before
    assert all(isinstance(c, tuple) and len(c) == len(UNITS) for c in children)


def test_repair_fits_the_budget_and_leaves_fitting_candidates_alone() -> None:
    budget = SPACE.bytes((4,) * len(UNITS))
    space = SearchSpace(SPACE.max_dims, SPACE.cost, budget)
    assert space.repair((3,) * len(UNITS)) == (3,) * len(UNITS)
    big = (16, 16, 16, 16, 16, 16)
    fixed = space.repair(big)
    assert space.bytes(fixed) <= budget and all(1 <= d <= 16 for d in fixed)
    assert space.bytes(fixed) >= space.bytes((3,) * len(UNITS))  # scaled, not collapsed to ones
    with pytest.raises(ValueError, match="budget"):
        SearchSpace(SPACE.max_dims, SPACE.cost, 10).repair(big)


def test_fill_scales_fitting_candidates_up_to_the_budget() -> None:
    budget = SPACE.bytes((8,) * len(UNITS))
    space = SearchSpace(SPACE.max_dims, SPACE.cost, budget, fill=True)
    small = (1, 2, 3, 1, 2, 3)
    grown = space.repair(small)
    assert space.bytes(grown) <= budget and all(g >= s for g, s in zip(grown, small))
    assert space.bytes(grown) > space.bytes(tuple(2 * d for d in small))  # scaled by more than 2x
    bigger = tuple(min(16, d + 1) for d in grown)
    assert not space.fits(bigger)  # no common step up is left within the budget
    assert space.repair((16,) * len(UNITS)) == SearchSpace(SPACE.max_dims, SPACE.cost, budget).repair((16,) * len(UNITS))
    assert space.repair((8,) * len(UNITS)) == (8,) * len(UNITS)  # exactly at the budget: kept
    capped = SearchSpace(SPACE.max_dims, SPACE.cost, SPACE.bytes((16,) * len(UNITS)), fill=True)
    assert capped.repair(small) == (16,) * len(UNITS)  # the budget holds every field at its maximum
    assert SearchSpace(SPACE.max_dims, SPACE.cost, None, fill=True).repair(small) == small  # no budget: unchanged


def test_evolve_finds_a_separable_optimum_and_caches_fitness() -> None:
    target = (3, 16, 1, 8, 2, 12)
    calls: list[tuple[int, ...]] = []

    def fitness(c: tuple[int, ...]) -> float:
        calls.append(c)
        return -sum(abs(x - y) for x, y in zip(c, target))

    result = evolve(SPACE, fitness, EvolutionConfig(generations=30, seed=0))
    assert len(calls) == len(set(calls)) == result.evaluations  # never re-evaluated
    assert result.evaluations + result.cache_hits == 30 * 20
    assert result.best_fitness >= -3 and result.best_fitness == fitness(result.best)
    assert [h["generation"] for h in result.history] == list(range(30))
    assert all(h["best"] <= result.best_fitness for h in result.history)


def test_evolve_is_deterministic_for_a_seed() -> None:
    def fitness(c: tuple[int, ...]) -> float:
        return sum(c) / (1 + SPACE.bytes(c))

    runs = [evolve(SPACE, fitness, EvolutionConfig(generations=5, seed=s)) for s in (7, 7, 8)]
    assert runs[0].best == runs[1].best and runs[0].history == runs[1].history
    assert runs[0].history != runs[2].history


def test_evolve_only_evaluates_candidates_within_the_budget() -> None:
    budget = SPACE.bytes((5,) * len(UNITS))
    space = SearchSpace(SPACE.max_dims, SPACE.cost, budget)
    seen: list[int] = []

    def fitness(c: tuple[int, ...]) -> float:
        seen.append(space.bytes(c))
        return float(sum(c))  # prefers large dims: pushes against the budget

    result = evolve(space, fitness, EvolutionConfig(generations=10, seed=3))
    assert max(seen) <= budget and result.best_bytes <= budget
    with pytest.raises(ValueError, match="budget"):
        evolve(SearchSpace(SPACE.max_dims, SPACE.cost, 50), fitness, EvolutionConfig(generations=1))
