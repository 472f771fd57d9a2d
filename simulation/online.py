"""A closed loop of serving and learning: simulated users meet bandit policies, their events
go to the online learner, and the next round is served from what the learner holds.

Each round, every :class:`Arm` serves ``requests`` users. A request's candidates are drawn
from the catalog by popularity (as the simulator draws them); the features of (context,
candidate) are the learner's own (:class:`~bandits.learner.TrainingRows`: the context carries
the user's vector, crossed with the item's); the arm's policy picks k of them with a
propensity per slot; the world answers with clicks under its click model. The impressions,
with their context, and the clicks then go to the arm's :class:`Feedback`: straight into a
:class:`~bandits.learner.LearnerSink` (:class:`SinkFeedback`), or through a Kafka topic
that a consumer feeds into one (:class:`KafkaFeedback`, the production path). The learner
holds an impression back until its join window closes, so a round learns from the earlier
rounds whose window has closed, as it would in production.

The truth is known, so every round also records the expected clicks of what was shown and
of the best slate of the same candidates (the oracle), whose difference is the regret.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch

from bandits.context import ContextFeatures, ItemVectors
from bandits.learner import TrainingRows
from ingest.frames import EventFrames, frames_in_time_order, message_records
from simulation.clicks import ClickModel, PositionBasedModel, examination
from simulation.policies import item_id, oracle_policy
from simulation.simulator import SimulatedLog, respond, sample_candidates
from simulation.world import World


class SlatePolicy(Protocol):
    """What an arm serves with: the bandit policies of :mod:`bandits.policies`."""

    def select(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]: ...


class Feedback(Protocol):
    """Where an arm's events go. When :meth:`deliver` returns, the learner has taken in
    everything delivered so far (what its join window lets it apply)."""

    def deliver(self, frames: EventFrames) -> None: ...


@dataclass(frozen=True)
class Arm:
    """One variant of the loop: a name, the policy that serves it and where its events go
    (None: it does not learn)."""

    name: str
    policy: SlatePolicy
    feedback: Feedback | None = None


@dataclass(frozen=True)
class BanditWorld:
    """The simulated world as the bandits see it.

    A request's ``context`` holds the user's vector as numeric fields ``u0, u1, ...`` (what a
    trained recommender's user embedding would give); an item's vector is its latent vector
    and its popularity bonus, so the world's affinity is linear in their outer product.
    """

    world: World
    k: int = 5
    candidates: int = 50
    click_model: ClickModel = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.candidates <= self.world.n_items:
            raise ValueError(f"k={self.k}, candidates={self.candidates} must satisfy "
                             f"1 <= k <= candidates <= n_items={self.world.n_items}")
        if self.click_model is None:
            object.__setattr__(self, "click_model", PositionBasedModel(examination(self.k)))

    @property
    def context_fields(self) -> tuple[str, ...]:
        return tuple(f"u{j}" for j in range(self.world.rank))

    def contexts(self, users: np.ndarray) -> pl.DataFrame:
        """One row per request, the context fields as columns."""
        vectors = self.world.user_vectors[users].astype(np.float64)
        return pl.DataFrame(vectors, schema=list(self.context_fields))

    def item_vectors(self) -> np.ndarray:
        """(n_items, rank + 1): row i is item i's vector."""
        world = self.world
        return np.hstack([world.item_vectors, world.popularity_bonus[:, None]])

    def items(self) -> ItemVectors:
        """The item vectors by event id (``i<index>``), as the learner looks them up."""
        return ItemVectors([item_id(i) for i in range(self.world.n_items)],
                           self.item_vectors())

    def rows(self, curve: Sequence[float] | None = None) -> TrainingRows:
        """The learner's rows for this world; the examination ``curve`` defaults to the
        click model's own (a learner told the truth about position bias)."""
        features = ContextFeatures(user_numeric=self.context_fields, cold_start=False)
        theta = getattr(self.click_model, "theta", None)
        return TrainingRows(features, self.items(),
                            curve if curve is not None else tuple(theta[: self.k]))


@dataclass
class OnlineResult:
    """Per arm and round: impressions, clicks, the expected clicks of the shown slates and
    of the oracle's, their difference (regret); and the seconds each arm's feedback took."""

    rounds: pl.DataFrame
    feedback_s: dict[str, float]

    def summary(self, first: int | None = None, last: int | None = None) -> pl.DataFrame:
        """Per arm, over all rounds, the ``first`` ones or the ``last`` ones: clicks and
        expected clicks per impression, the share of the oracle's expected clicks, and
        total regret."""
        frame = self.rounds
        if first is not None:
            frame = frame.filter(pl.col("round") < frame["round"].min() + first)
        if last is not None:
            frame = frame.filter(pl.col("round") > frame["round"].max() - last)
        return (frame.group_by("arm", maintain_order=True).agg(
            impressions=pl.col("impressions").sum(),
            clicks_per_impression=pl.col("clicks").sum() / pl.col("impressions").sum(),
            expected_per_impression=pl.col("expected").sum() / pl.col("impressions").sum(),
            of_oracle=pl.col("expected").sum() / pl.col("oracle").sum(),
            regret=pl.col("regret").sum()))


def run_loop(bandits: BanditWorld, arms: Sequence[Arm], rounds: int, requests: int, *,
             seed: int = 0, clock: Callable[[], float] = time.time,
             progress: Callable[[int], None] | None = None) -> OnlineResult:
    """``rounds`` rounds of ``requests`` requests per arm (see the module doc). Every arm
    meets the same users and candidates in a round, so the arms differ only by policy.
    ``clock`` stamps the events (wall time by default, so the learner's freshness is real;
    a simulated clock makes the run reproducible); ``progress`` is called after each
    round."""
    if rounds < 1 or requests < 1:
        raise ValueError(f"rounds={rounds}, requests={requests} must be >= 1")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names {names} must be distinct")
    world, k = bandits.world, bandits.k
    training = bandits.rows()
    features = training.features
    # Serving knows the candidates by catalog index: one gather, no round trip through ids.
    table = torch.as_tensor(bandits.item_vectors(), dtype=features.dtype)
    oracle = oracle_policy(world)
    records: list[dict[str, Any]] = []
    feedback_s = dict.fromkeys(names, 0.0)
    for round_ in range(rounds):
        rng = np.random.default_rng([seed, round_])
        users = rng.integers(0, world.n_users, requests)
        pool = sample_candidates(world, requests, bandits.candidates, rng)
        contexts = bandits.contexts(users)
        x = features.transform(contexts, table[torch.as_tensor(pool)])
        best, _ = oracle.rank_batch(users, pool, k, rng)
        activity = world.activity_of(users)
        oracle_clicks = bandits.click_model.click_probability(
            world.relevance(users[:, None], best), activity).sum(axis=1)
        context_json = contexts.select(pl.struct(pl.all()).struct.json_encode())
        for index, arm in enumerate(arms):
            arm_rng = np.random.default_rng([seed, round_, index])
            generator = torch.Generator().manual_seed(int(arm_rng.integers(2**62)))
            chosen, propensity = arm.policy.select(x, k, generator)
            slates = np.take_along_axis(pool, chosen.cpu().numpy(), axis=1)
            grades = world.relevance(users[:, None], slates)
            clicks, dwell, reactions = respond(world, bandits.click_model, users, grades,
                                               arm_rng)
            expected = bandits.click_model.click_probability(grades, activity).sum(axis=1)
            records.append({"arm": arm.name, "round": round_, "impressions": requests,
                            "clicks": int(clicks.sum()), "expected": float(expected.sum()),
                            "oracle": float(oracle_clicks.sum()),
                            "regret": float((oracle_clicks - expected).sum())})
            if arm.feedback is None:
                continue
            now = clock()
            log = SimulatedLog(
                policy=arm.name, users=users, ts=np.full(requests, now), slates=slates,
                propensity=propensity.cpu().numpy(), grades=grades, clicks=clicks,
                dwell=dwell, reactions=reactions,
                first_request=(round_ * len(arms) + index) * requests,
                # Clicks within the round, so that an event is never stamped in the future.
                slot_seconds=1e-3)
            frames = log.frames()
            started = time.perf_counter()
            arm.feedback.deliver({
                "impression": frames["impression"].with_columns(
                    context=context_json.to_series()),
                "click": frames["click"]})
            feedback_s[arm.name] += time.perf_counter() - started
        if progress is not None:
            progress(round_)
    return OnlineResult(pl.DataFrame(records), feedback_s)


class SinkFeedback:
    """Events straight into a learner sink, one flush per delivery (no broker)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def deliver(self, frames: EventFrames) -> None:
        self.sink.write(frames)
        self.sink.flush({}, None)


class KafkaFeedback:
    """Events through Kafka: produced to the topic a learner's consumer reads; delivery
    returns once the consumer has consumed everything produced so far and flushed, so the
    learner holds it. ``timeout_s`` bounds the wait for one delivery."""

    def __init__(self, producer: Any, consumer: Any, timeout_s: float = 60.0) -> None:
        self.producer = producer
        self.consumer = consumer
        self.timeout_s = timeout_s
        self.produced = 0

    def deliver(self, frames: EventFrames) -> None:
        messages = frames_in_time_order(frames)
        self.producer.send_raw(message_records(messages))
        self.producer.flush()
        self.produced += messages.height
        deadline = time.monotonic() + self.timeout_s
        while self.consumer.counters.consumed < self.produced:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the learner consumed {self.consumer.counters.consumed:,} of "
                    f"{self.produced:,} events within {self.timeout_s:g} s")
            self.consumer.poll_once()
        self.consumer.flush()
