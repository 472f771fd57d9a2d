from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ingest.frames import events_of
from ingest.joins import impression_click_join
from ingest.validation import validate_frame
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import (
    EpsilonGreedyPolicy,
    UniformRandomPolicy,
    oracle_policy,
    popularity_policy,
)
from simulation.simulator import REACTION_NAMES, sample_candidates, simulate
from simulation.world import World

WORLD = World(n_items=500, n_users=300, seed=9)
MODEL = PositionBasedModel(examination(5))


def test_candidates_are_distinct_and_popular_items_come_first() -> None:
    pool = sample_candidates(WORLD, 20_000, 20, np.random.default_rng(0))
    assert all(len(set(row)) == 20 for row in pool[:2000])
    shown = np.bincount(pool.ravel(), minlength=WORLD.n_items)
    popular, rare = np.argsort(-WORLD.popularity)[:10], np.argsort(WORLD.popularity)[:100]
    assert shown[popular].mean() > 20 * shown[rare].mean()  # exposure is not at random


@pytest.mark.parametrize("policy", [UniformRandomPolicy(),
                                    EpsilonGreedyPolicy(popularity_policy(WORLD), 0.3)],
                         ids=["uniform", "epsilon-greedy"])
def test_reported_propensities_are_the_real_probabilities(policy: object) -> None:
    """Fixed candidates, many draws: how often each item lands at each position must match
    the propensity the policy reported for it there."""
    rng = np.random.default_rng(1)
    candidates = np.tile(np.arange(8), (100_000, 1))
    users = np.zeros(100_000, dtype=np.int64)
    slates, propensity = policy.rank_batch(users, candidates, 3, rng)  # type: ignore[attr-defined]
    for position in range(3):
        for item in range(8):
            here = slates[:, position] == item
            reported = propensity[here, position]
            if here.any():
                assert np.allclose(reported, reported[0])
                assert abs(here.mean() - reported[0]) < 5 * np.sqrt(reported[0] / 100_000)


def test_deterministic_policies_report_one_and_the_oracle_beats_popularity() -> None:
    oracle = simulate(WORLD, oracle_policy(WORLD), MODEL, n=5000, k=5, seed=3)
    popular = simulate(WORLD, popularity_policy(WORLD), MODEL, n=5000, k=5, seed=3)
    assert np.all(oracle.propensity == 1) and np.all(popular.propensity == 1)
    assert oracle.grades.mean() > popular.grades.mean()
    assert oracle.clicks.mean() > popular.clicks.mean()


def test_simulated_events_meet_the_contract_and_join_back() -> None:
    log = simulate(WORLD, EpsilonGreedyPolicy(popularity_policy(WORLD), 0.2), MODEL, n=3000,
                   k=5, seed=4)
    frames = log.frames()
    for kind, frame in frames.items():
        assert validate_frame(kind, frame)[1].height == 0, kind
    assert frames["impression"].height == 3000
    assert frames["click"].height == int(log.clicks.sum())
    assert frames["dwell"].height == int(log.clicks.sum())
    assert frames["reaction"].height == int((log.reactions >= 0).sum())
    assert set(frames["reaction"]["reaction"]) <= set(REACTION_NAMES)
    joined = impression_click_join(frames["impression"].lazy(), frames["click"].lazy(),
                                   frames["reaction"].lazy(), frames["dwell"].lazy()).collect()
    assert joined.height == 3000 * 5
    assert joined.sort("request_id", "position")["clicked"].to_numpy().sum() == log.clicks.sum()
    assert np.allclose(np.sort(joined["propensity"].to_numpy()), np.sort(log.propensity.ravel()))
    assert len(events_of({"click": frames["click"].head(5)})) == 5


def test_dwell_grows_with_relevance() -> None:
    log = simulate(WORLD, UniformRandomPolicy(), MODEL, n=20_000, k=5, seed=5)
    means = [log.dwell[log.clicks & (log.grades == g)].mean() for g in (0, 4)]
    assert means[1] > 3 * means[0]


def test_same_seed_same_log() -> None:
    a = simulate(WORLD, UniformRandomPolicy(), MODEL, n=2000, k=5, seed=6)
    b = simulate(WORLD, UniformRandomPolicy(), MODEL, n=2000, k=5, seed=6)
    assert np.array_equal(a.slates, b.slates) and np.array_equal(a.clicks, b.clicks)
    assert pl.DataFrame(a.frames()["click"]).equals(b.frames()["click"])


def test_reaction_rates_follow_the_tables() -> None:
    from simulation.simulator import CLICKED_REACTIONS, UNCLICKED_REACTIONS

    log = simulate(World(n_items=2000, seed=1), UniformRandomPolicy(), MODEL, n=100_000, k=5,
                   seed=8)
    for clicked, table, offset in ((True, CLICKED_REACTIONS, 0),
                                   (False, UNCLICKED_REACTIONS, len(CLICKED_REACTIONS))):
        for index, probabilities in enumerate(table.values()):
            for grade in (0, 4):
                cell = (log.clicks == clicked) & (log.grades == grade)
                p = probabilities[grade]
                rate = (log.reactions[cell] == offset + index).mean()
                assert abs(rate - p) <= 5 * np.sqrt(max(p, 1e-4) * (1 - p) / cell.sum())


def test_candidates_can_be_most_or_all_of_a_small_catalog() -> None:
    world = World(n_items=80, n_users=10, seed=1)
    for m in (50, 80):
        pool = sample_candidates(world, 3000, m, np.random.default_rng(m))
        assert pool.shape == (3000, m) and all(len(set(row)) == m for row in pool)
    # Without replacement, by weight: the most popular item is in nearly every row of 50.
    top = int(np.argmax(world.popularity))
    assert (sample_candidates(world, 2000, 50, np.random.default_rng(1)) == top).any(
        axis=1).mean() > 0.99


def test_threads_give_the_same_log_and_a_one_at_a_time_policy_refuses_them() -> None:
    policy = EpsilonGreedyPolicy(popularity_policy(WORLD), 0.3)
    one = simulate(WORLD, policy, MODEL, n=10_000, k=5, seed=4, chunk=1000)
    two = simulate(WORLD, policy, MODEL, n=10_000, k=5, seed=4, chunk=1000, workers=2)
    for name in ("slates", "propensity", "grades", "clicks", "dwell", "reactions"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    from simulation.policies import BatchAsRankingPolicy, PerRequestPolicy

    per_request = PerRequestPolicy(BatchAsRankingPolicy(policy))
    with pytest.raises(ValueError, match="must be called from one thread"):
        simulate(WORLD, per_request, MODEL, n=10, k=5, workers=2)
