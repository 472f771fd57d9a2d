"""Behaviour logs with string item ids (a generic CSV, a parquet log store) and the evaluation
policies of ``clickloop ope --policy``: rows read and rejected by line and column, the
long-format policy table, the logged policy's frequencies, and a learner checkpoint served as
the top k of its mean estimate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bandits.context import ContextFeatures, ItemVectors
from bandits.learner import LearnerSink, TrainingRows, read_state
from bandits.ope import (
    OPEInputError,
    learner_scores,
    logged_policy,
    policy_matrix,
    read_generic_log,
    read_log_store,
    read_policy_table,
    top_k_policy,
)
from bandits.policies import DiagLinUCB
from ingest.frames import EventFrames
from ingest.logstore import ParquetLogStore
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import EpsilonGreedyPolicy, popularity_policy
from simulation.simulator import simulate
from simulation.world import World

#: Item ids as text: "007" and "7" are two items. Sorted, so index i is ITEMS[i].
ITEMS = ("007", "7", "a", "b", "c")
RELEVANCE = np.array([0.1, 0.5, 0.2, 0.35, 0.05])
EXAMINATION = np.array([1.0, 0.6, 0.3])
N_POSITIONS = len(EXAMINATION)
#: The learner's features; the simulated contexts carry these fields.
FEATURES = ContextFeatures(n_hash_buckets=4, user_numeric=("age",),
                           user_categorical=("segment",))
SIM_ITEMS = 30


def write_generic_log(path: Path, rounds: int, seed: int, balanced: bool = False) -> np.ndarray:
    """``rounds`` slates of 3 of the 5 items drawn uniformly without replacement (each item's
    probability at each position is 1/5, the logged propensity), clicked with probability
    RELEVANCE[item] * EXAMINATION[position]. ``balanced`` shows items (r, r+1, r+2) mod 5 in
    round r instead, so that with rounds a multiple of 5 every item is at every position
    exactly 1/5 of the time. Returns the clicks, (rounds * 3,) in file order."""
    rng = np.random.default_rng(seed)
    if balanced:
        slates = (np.arange(rounds)[:, None] + np.arange(N_POSITIONS)[None, :]) % len(ITEMS)
    else:
        slates = np.argsort(rng.random((rounds, len(ITEMS))), axis=1)[:, :N_POSITIONS]
    clicks = rng.random(slates.shape) < RELEVANCE[slates] * EXAMINATION[None, :]
    ages = rng.normal(size=slates.shape)
    pl.DataFrame({
        "round": np.repeat(np.arange(rounds), N_POSITIONS),
        "item_id": np.asarray(ITEMS)[slates.ravel()],
        "position": np.tile(np.arange(1, N_POSITIONS + 1), rounds),
        "click": clicks.ravel().astype(np.int64),
        "propensity": np.full(slates.size, 0.2),
        "user_age": ages.ravel(),
    }).write_csv(path)
    return clicks.ravel().astype(np.float64)


def simulated_frames(n: int = 300, seed: int = 0) -> EventFrames:
    """``n`` simulated impressions of 3 slots (an epsilon-greedy popularity policy, real
    propensities) with a user context, and their clicks."""
    world = World(n_items=SIM_ITEMS, n_users=40, seed=0)
    log = simulate(world, EpsilonGreedyPolicy(popularity_policy(world), 0.3),
                   PositionBasedModel(examination(N_POSITIONS)), n=n, k=N_POSITIONS, seed=seed)
    frames = log.frames()
    user = pl.col("user_id").str.slice(1).cast(pl.Int64)
    impressions = frames["impression"].with_columns(
        context=pl.format('{{"age": {}, "segment": "s{}"}}', user % 50, user % 3))
    return {"impression": impressions, "click": frames["click"]}


def sim_items() -> ItemVectors:
    world = World(n_items=SIM_ITEMS, n_users=1, seed=0)
    return ItemVectors([f"i{n}" for n in range(SIM_ITEMS)], world.item_vectors)


def write_store(root: Path, frames: EventFrames) -> Path:
    with ParquetLogStore(root) as store:
        store.write(frames)
        store.flush({}, None)
    return root


def write_checkpoint(folder: Path, frames: EventFrames) -> Path:
    """A ``clickloop learn`` checkpoint of a Diag-LinUCB learner fed ``frames``."""
    sink = LearnerSink(folder, TrainingRows(FEATURES, sim_items(),
                                            tuple(examination(N_POSITIONS))))
    try:
        sink.write(frames)
        sink.flush({("events", 0): 1}, "cluster")
        sink.drain()
    finally:
        sink.close()
    return folder


# ----------------------------------------------------------------------------- readers


def test_a_generic_log_keeps_ids_as_text_and_indexes_them_sorted(tmp_path: Path) -> None:
    clicks = write_generic_log(tmp_path / "log.csv", 40, seed=0)
    log = read_generic_log(tmp_path / "log.csv")
    assert log.item_ids == ITEMS
    assert log.n == 120 and log.n_positions == 3 and log.rejected == ()
    assert np.array_equal(log.reward, clicks)
    assert np.array_equal(log.pscore, np.full(120, 0.2))
    frame = pl.read_csv(tmp_path / "log.csv", schema_overrides={"item_id": pl.String})
    assert [log.item_ids[a] for a in log.action] == frame["item_id"].to_list()
    assert np.array_equal(log.slate, np.repeat(np.arange(40), 3))
    # One standardized user feature.
    assert log.user_columns == ("user_age",)
    assert log.user.mean() == pytest.approx(0.0, abs=1e-12)
    assert log.user.std() == pytest.approx(1.0, abs=1e-12)


def test_bad_rows_are_rejected_by_line_and_column_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("round,item_id,position,reward,propensity,user_x\n"
                    "1,a,1,1,0.5,0.1\n"     # line 2: good
                    "1,b,2,0,abc,0.2\n"     # line 3: propensity not a number
                    "2,a,1,0,1.5,0.3\n"     # line 4: propensity outside (0, 1]
                    "2,b,0,1,0.5,0.4\n"     # line 5: position < 1
                    "3,,1,1,0.5,0.5\n"      # line 6: no item
                    "3,c,2,x,0.5,0.6\n"     # line 7: reward not a number
                    "4,c,1,1,0.25,1e9x\n"   # line 8: user feature not a number
                    "4,b,2,0,0.25,0.8\n"    # line 9: good
                    "5,a,1,2,0.5,0.9\n")    # line 10: a reward the click model cannot read
    log = read_generic_log(path)
    assert log.n == 2 and log.item_ids == ("a", "b")
    assert np.array_equal(log.reward, [1.0, 0.0]) and np.array_equal(log.pscore, [0.5, 0.25])
    assert log.rejected == (
        "line 3: column 'propensity'='abc' is not a number",
        "line 4: column 'propensity'=1.5 must be in (0, 1]",
        "line 5: column 'position'=0 must be >= 1",
        "line 6: column 'item_id' is empty",
        "line 7: column 'reward'='x' is not a number",
        "line 8: column 'user_x'='1e9x' is not a number",
        "line 10: column 'reward'=2.0 must be 0 or 1",
    )
    path.write_text("item_id,position,reward,propensity\na,1,1,0\n")
    with pytest.raises(OPEInputError, match=r"no usable row \(1 rejected; the first, line 2: "
                                            r"column 'propensity'=0.0 must be in \(0, 1\]\)"):
        read_generic_log(path)


def test_a_policy_table_is_long_format_and_each_position_must_sum_to_one(tmp_path: Path
                                                                          ) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("item_id,position,probability\n007,1,0.25\n7,1,0.75\nb,2,1\n")
    table = read_policy_table(path)
    dist = policy_matrix(table, ITEMS, 3 - 1)
    assert np.array_equal(dist, [[0.25, 0], [0.75, 0], [0, 0], [0, 1], [0, 0]])
    with pytest.raises(OPEInputError, match=r"the probabilities of position 3 sum to 0; "
                                            r"each position's must sum to 1 \(within 1e-06\)"):
        policy_matrix(table, ITEMS, 3)
    path.write_text("item_id,position,probability\n007,1,0.25\n7,1,0.7\nb,2,1\n")
    with pytest.raises(OPEInputError, match="position 1 sum to 0.95"):
        policy_matrix(read_policy_table(path), ITEMS, 2)
    path.write_text("item_id,position,probability\n007,1,1\n007,1,0\n")
    with pytest.raises(OPEInputError, match=r"line 3 .* listed on an earlier line too"):
        read_policy_table(path)


def test_a_log_store_gives_every_shown_slot_with_its_propensity_and_context(
        tmp_path: Path) -> None:
    frames = simulated_frames(60)
    log = read_log_store(write_store(tmp_path / "store", frames))
    slots = frames["impression"].explode("slots").unnest("slots")
    assert log.n == slots.height == 180
    assert log.user_columns == ("age",)  # segment is text: not a numeric feature
    clicked = frames["click"].select("request_id", "item_id").with_columns(c=pl.lit(1.0))
    expected = (slots.join(clicked, on=["request_id", "item_id"], how="left")
                .with_columns(pl.col("c").fill_null(0.0)))
    assert log.reward.sum() == expected["c"].sum() > 0
    assert sorted(log.pscore.tolist()) == sorted(slots["propensity"].to_list())
    assert log.contexts is not None and len(log.contexts) == 60
    assert json.loads(log.contexts[0]).keys() == {"age", "segment"}
    with pytest.raises(OPEInputError, match="'segment' is not a numeric field"):
        read_log_store(tmp_path / "store", ("age", "segment"))


# ---------------------------------------------------------------------------- policies


def test_the_logged_policy_is_the_empirical_item_position_frequency() -> None:
    action = np.array([0, 1, 1, 2, 0, 0])
    position = np.array([0, 0, 0, 0, 1, 1])
    dist = logged_policy(action, position, 3, 3)
    assert dist.shape == (6, 3, 3)
    assert np.array_equal(dist[0], [[0.25, 1, 1 / 3], [0.5, 0, 1 / 3], [0.25, 0, 1 / 3]])
    assert np.array_equal(dist[5], dist[0])


def test_a_learner_checkpoint_shows_the_top_k_of_its_mean(tmp_path: Path) -> None:
    frames = simulated_frames(300)
    folder = write_checkpoint(tmp_path / "state", frames)
    log = read_log_store(write_store(tmp_path / "store", frames))
    items = sim_items()
    scores = learner_scores(folder, items, log.item_ids, log.contexts)
    dist = top_k_policy(scores, log.slate, N_POSITIONS)
    # The same means, computed apart: the policy loaded by hand, contexts as Python dicts.
    state = read_state(folder)
    policy = DiagLinUCB(FEATURES.dim(items.dim)).load_state_dict(state.policy)
    contexts = [json.loads(c) for c in log.contexts]
    vectors, known = items.lookup(np.array([list(log.item_ids)] * len(contexts), dtype=object))
    expected = policy.mean(FEATURES.transform(contexts, vectors, known)).numpy()
    assert np.allclose(scores, expected, rtol=1e-10, atol=1e-12)
    assert np.ptp(scores) > 0  # it learned something
    top = np.argsort(-expected, axis=1, kind="stable")[:, :N_POSITIONS]
    assert dist.shape == (log.n, log.n_items, N_POSITIONS)
    assert np.array_equal(dist.sum(axis=1), np.ones((log.n, N_POSITIONS)))
    assert np.array_equal(dist.argmax(axis=1), top[log.slate])
    with pytest.raises(OPEInputError, match="the item vectors have 2 columns; the learner"):
        learner_scores(folder, ItemVectors(["i0"], np.zeros((1, 2))), log.item_ids,
                       log.contexts)
