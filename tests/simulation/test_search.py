from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ingest.joins import impression_click_join
from ingest.sessions import query_chains
from ingest.validation import validate_frame
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import RetrievalOrderPolicy, UniformRandomPolicy
from simulation.queries import Edit, QueryNoise, restore
from simulation.search import Intents, lexical_retrieve, parse_query, simulate_search
from simulation.world import World

WORLD = World(n_items=4000, n_users=3000, seed=5)
MODEL = PositionBasedModel(examination(10))


def test_search_relevance_grades_follow_the_intent() -> None:
    target = 17
    same = np.flatnonzero((WORLD.category == WORLD.category[target])
                          & (WORLD.colour == WORLD.colour[target])
                          & (WORLD.brand != WORLD.brand[target]))
    other = np.flatnonzero(WORLD.category != WORLD.category[target])
    items = np.array([[target, same[0], other[0]]])
    asked = np.array([[True, True, False, True]])  # brand, colour, category
    as_item = Intents(np.array([target]), np.ones((1, 4), bool), np.array([True]))
    as_attributes = Intents(np.array([target]), asked, np.array([False]))
    # Item intent: the target 4; same category and colour, other brand: 1 + (2*2)//3 = 2.
    assert as_item.relevance(WORLD, items).tolist() == [[4, 2, 0]]
    # Attributes brand+colour+category: the target matches both (3), ``same`` half (2).
    assert as_attributes.relevance(WORLD, items).tolist() == [[3, 2, 0]]


def test_clean_queries_retrieve_exact_matches_first_and_noise_breaks_them() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, WORLD.n_items, 300)
    intents = Intents(targets, np.ones((300, 4), bool), np.ones(300, bool))
    clean = intents.clean_queries(WORLD)
    top = lexical_retrieve(WORLD, np.stack([parse_query(q) for q in clean]), 10)
    assert np.all(intents.relevance(WORLD, top)[:, 0] >= 3)  # all four fields match
    assert np.mean(top[:, 0] == targets) > 0.9  # usually the one item with these words
    typo = QueryNoise({"typo": 1.0})
    noisy = [typo.apply(q, rng).noisy for q in clean]
    top = lexical_retrieve(WORLD, np.stack([parse_query(q) for q in noisy]), 10)
    assert np.mean(intents.relevance(WORLD, top)[:, 0] >= 3) < 0.1


def test_sessions_reformulate_with_less_noise_and_end_once() -> None:
    search = simulate_search(WORLD, RetrievalOrderPolicy(), MODEL, 4000, seed=1,
                             max_reformulations=3, abandon=0.0)
    steps = search.steps
    by_step = steps.group_by("step").agg(
        noisy=(pl.col("noisy") != pl.col("clean")).mean(), level=pl.col("level").first(),
        found=pl.col("found").mean()).sort("step")
    assert by_step["step"].to_list() == [0, 1, 2, 3]
    assert by_step["level"].to_list() == pytest.approx([1.0, 0.4, 0.16, 0.064])
    assert all(np.diff(by_step["noisy"].to_numpy()) < 0)
    ends = steps.filter(pl.col("outcome") != "reformulated")
    assert ends["session"].n_unique() == ends.height == 4000  # one end per session
    # With abandon=0 a session ends early only when the user found something.
    assert (ends.filter(pl.col("step") < 3)["outcome"] == "found").all()
    assert ((steps["outcome"] == "found") == steps["found"]).all()
    # Clean queries are found more often than noisy ones.
    clean = steps.filter(pl.col("noisy") == pl.col("clean"))["found"].mean()
    noisy = steps.filter(pl.col("noisy") != pl.col("clean"))["found"].mean()
    assert clean > noisy + 0.15
    # The record: every typed query goes back to its clean query.
    for row in steps.iter_rows(named=True):
        assert restore(row["noisy"], [Edit(**e) for e in row["edits"]]) == row["clean"]


def test_abandonment_rate_is_applied_per_failure() -> None:
    search = simulate_search(WORLD, UniformRandomPolicy(), MODEL, 6000, seed=2,
                             abandon=0.5, max_reformulations=5)
    failed = search.steps.filter(~pl.col("found") & (pl.col("step") < 5))
    share = (failed["outcome"] == "abandoned").mean()
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / failed.height)


def test_search_events_meet_the_contract_and_give_back_the_query_chains() -> None:
    users = np.random.default_rng(3).permutation(WORLD.n_users)[:1500]  # one session each
    search = simulate_search(WORLD, RetrievalOrderPolicy(), MODEL, 1500, users=users, seed=3)
    frames = search.log.frames()
    for kind, frame in frames.items():
        assert validate_frame(kind, frame)[1].height == 0, kind
    joined = impression_click_join(frames["impression"].lazy(), frames["click"].lazy()).collect()
    assert joined.height == search.log.n * 10
    assert joined["query"].null_count() == 0
    chains = query_chains(frames["query"].lazy(), frames["click"].lazy()).collect()
    expected = (search.steps.sort("session", "step").group_by("session", maintain_order=True)
                .agg(user=pl.col("user").first(), queries=pl.col("noisy")))
    got = dict(zip(chains["user_id"], chains["queries"].to_list(), strict=True))
    assert len(got) == 1500
    assert all(got[f"u{u}"] == q for u, q in zip(expected["user"],
                                                   expected["queries"].to_list(), strict=True))


@pytest.mark.parametrize(("name", "value"), [("abandon", 1.5), ("noise_decay", -0.1)])
def test_bad_session_parameters_are_named(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{name}={value} must be in"):
        simulate_search(WORLD, RetrievalOrderPolicy(), MODEL, 10, **{name: value})
