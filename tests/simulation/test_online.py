"""The closed serving-learning loop: learners that serve from what they learned beat random
slates, and the loop through a real Kafka broker ends exactly where the in-process one does."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bandits.learner import LearnerConfig, LearnerSink
from bandits.policies import EpsilonGreedy
from ingest.broker import EmbeddedBroker
from ingest.consumer import EventConsumer
from ingest.producer import EventProducer
from ingest.settings import Settings
from simulation.online import Arm, BanditWorld, KafkaFeedback, SinkFeedback, run_loop
from simulation.world import World

BANDITS = BanditWorld(World(n_items=400, n_users=500, rank=4, seed=3), k=4, candidates=20)


def simulated_clock() -> Callable[[], float]:
    """One second of event time per call: each round's events close the previous round's
    join window (0.5 s) and none of its own."""
    tick = itertools.count()
    return lambda: 1_767_225_600.0 + next(tick)


def learner(path: Path, policy: str) -> LearnerSink:
    return LearnerSink(path, BANDITS.rows(), LearnerConfig(policy=policy, window_s=0.5))


def test_learners_in_the_loop_approach_the_oracle_and_leave_random_behind(
        tmp_path: Path, one_thread: None) -> None:
    linucb, greedy = learner(tmp_path / "linucb", "linucb"), learner(tmp_path / "eg",
                                                                   "epsilon-greedy")
    arms = [Arm("linucb", linucb.policy_, SinkFeedback(linucb)),
            Arm("epsilon-greedy", greedy.policy_, SinkFeedback(greedy)),
            Arm("random", EpsilonGreedy(linucb.rows.dim, epsilon=1.0))]
    result = run_loop(BANDITS, arms, rounds=12, requests=100, seed=1, clock=simulated_clock())
    first = {r["arm"]: r for r in result.summary(first=1).iter_rows(named=True)}
    late = {r["arm"]: r for r in result.summary(last=4).iter_rows(named=True)}
    for name in ("linucb", "epsilon-greedy"):
        # Round 0 is served before anything was learned: no better than random.
        assert first[name]["of_oracle"] < 0.7
        assert late[name]["of_oracle"] > 0.85, late
    assert late["random"]["of_oracle"] < 0.6
    # Every impression but the last round's (its window is still open) was applied.
    assert linucb.counters.impressions_applied == 11 * 100
    assert linucb.counters.clicks_orphaned == linucb.counters.clicks_late == 0
    assert result.rounds.height == 3 * 12


def test_the_loop_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    policy = EpsilonGreedy(BANDITS.rows().dim, epsilon=1.0)
    with pytest.raises(ValueError, match="rounds=0"):
        run_loop(BANDITS, [Arm("a", policy)], rounds=0, requests=10)
    with pytest.raises(ValueError, match="must be distinct"):
        run_loop(BANDITS, [Arm("a", policy), Arm("a", policy)], rounds=1, requests=10)
    with pytest.raises(ValueError, match="candidates=3"):
        BanditWorld(World(n_items=100, n_users=10), k=5, candidates=3)


@pytest.mark.kafka
def test_the_loop_through_kafka_ends_where_the_in_process_loop_does(
        tmp_path: Path, broker: EmbeddedBroker, settings_factory: Callable[..., Settings],
        one_thread: None) -> None:
    settings = settings_factory(ingest={"poll_timeout_s": 0.05}, kafka={"partitions": 2})
    local = learner(tmp_path / "local", "linucb")
    run = dict(rounds=5, requests=60, seed=2)
    direct = run_loop(BANDITS, [Arm("linucb", local.policy_, SinkFeedback(local))],
                      clock=simulated_clock(), **run)

    remote = learner(tmp_path / "kafka", "linucb")
    with EventConsumer(settings, remote, broker.bootstrap) as consumer, \
            EventProducer(settings, broker.bootstrap) as producer:
        feedback = KafkaFeedback(producer, consumer)
        through = run_loop(BANDITS, [Arm("linucb", remote.policy_, feedback)],
                           clock=simulated_clock(), **run)
        consumed = consumer.counters
        # Before the consumer closes: what a learner does when it leaves is not the point.
        state, counters = remote.policy_.state_dict(), remote.counters.as_dict()
    assert consumed.consumed == consumed.applied == feedback.produced
    # The same slates were shown, so the same events were learned from, in another order
    # (two partitions): equal up to floating-point summation.
    assert through.rounds.equals(direct.rounds)
    for name, tensor in local.policy_.state_dict().items():
        torch.testing.assert_close(state[name], tensor, rtol=1e-9, atol=1e-9, msg=name)
    assert counters == local.counters.as_dict()
