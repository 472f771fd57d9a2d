from __future__ import annotations

import numpy as np
import pytest

from simulation.world import GRADE_SHARES, World


def test_same_seed_same_world_and_other_seed_another() -> None:
    a, b, c = World(n_items=500, seed=1), World(n_items=500, seed=1), World(n_items=500, seed=2)
    assert np.array_equal(a.item_vectors, b.item_vectors)
    assert a.titles(range(5)) == b.titles(range(5)) != c.titles(range(5))
    assert not np.array_equal(a.popularity, c.popularity)


def test_grades_have_the_designed_shares() -> None:
    world = World(n_items=20_000, n_users=2000, seed=4)
    rng = np.random.default_rng(0)
    grades = world.relevance(rng.integers(0, 2000, 200_000), rng.integers(0, 20_000, 200_000))
    shares = np.bincount(grades, minlength=5) / len(grades)
    assert np.allclose(shares, GRADE_SHARES, atol=0.01)


def test_titles_are_composed_from_the_item_attributes() -> None:
    world = World(n_items=100)
    title = world.titles([7])[0].split()
    assert len(title) == 4 and title[-1] in ("jacket", "coat", "sneaker", "boot", "shirt",
                                             "sweater", "jeans", "dress", "skirt", "scarf",
                                             "hat", "bag", "belt", "watch", "sandal", "hoodie",
                                             "parka", "blazer", "vest", "glove")


def test_oracle_slate_is_ordered_by_true_affinity() -> None:
    world = World(n_items=3000, seed=2)
    items, grades = world.ideal_slate(user=11, k=10)
    scores = world.affinity(np.full(10, 11), items)
    everything = world.affinity(np.full(3000, 11), np.arange(3000))
    assert np.all(np.diff(scores) <= 0) and np.isclose(scores[0], everything.max())
    assert grades[0] == world.relevance(np.array([11]), items[:1])[0]


def test_popularity_sampler_follows_popularity() -> None:
    world = World(n_items=1000, seed=6)
    draws = world.popularity_sampler()(np.random.default_rng(1), (1_000_000,))
    frequency = np.bincount(draws, minlength=1000) / len(draws)
    p = world.popularity
    assert np.all(np.abs(frequency - p) <= 5 * np.sqrt(p * (1 - p) / len(draws)) + 1e-6)


def test_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="n_items=0"):
        World(n_items=0)
