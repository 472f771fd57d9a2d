"""Implicit-feedback settings where the truth is known, for recommenders: one code path for the
tests, the benchmark and anyone comparing learners.

- :class:`FlippedPositives` (noisy labels): half of each user's relevant items (true grade >=
  3) observed as training positives, the other half the test set, and a noisy copy of the
  training rows with a share of them replaced by random items irrelevant to their user.
  What a denoising learner should undo: clicks on items the user does not like.
- :class:`MNARExposure` (missing-not-at-random exposure): candidates drawn by popularity, the
  most popular shown first (some requests in random order), clicks by a position-based model,
  so that clicks mix exposure with relevance; with each item's true exposure propensity, and
  uniformly random items per user graded by the world's true relevance to judge a ranking.
  What a debiasing learner (Rel-MF) should undo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from ingest.joins import impression_click_join
from ranking.metrics import dcg_at_k, mean_over_users, recall_at_k
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import EpsilonGreedyPolicy, popularity_policy
from simulation.simulator import SimulatedLog, sample_candidates, simulate
from simulation.world import World


def flip_rows(users: np.ndarray, items: np.ndarray, relevant: np.ndarray, share: float,
              rng: np.random.Generator) -> np.ndarray:
    """``items`` with ``share`` of the rows, drawn at random, replaced by a random item that
    is not relevant to the row's user and not already one of their rows."""
    items = items.copy()
    taken = relevant.copy()
    taken[users, items] = True
    pending = rng.choice(len(users), size=round(share * len(users)), replace=False)
    wanted = np.bincount(users[pending], minlength=relevant.shape[0])
    free = relevant.shape[1] - taken.sum(axis=1)
    if (wanted > free).any():
        user = int(np.argmax(wanted > free))
        raise ValueError(f"share={share} must leave every user enough items to flip to: user "
                         f"{user} needs {wanted[user]}, has {free[user]} free")
    while len(pending):
        drawn = rng.integers(0, relevant.shape[1], len(pending))
        free = ~taken[users[pending], drawn]
        # Two rows of one user drawing the same item: only the first takes it.
        _, first = np.unique(users[pending] * relevant.shape[1] + drawn, return_index=True)
        free &= np.isin(np.arange(len(pending)), first)
        items[pending[free]] = drawn[free]
        taken[users[pending[free]], drawn[free]] = True
        pending = pending[~free]
    return items


@dataclass(frozen=True)
class FlippedPositives:
    """See the module doc. ``share``: the share of training rows flipped; ``relevant_grade``:
    the true grade from which an item is relevant; ``observed``: the chance that a relevant
    item is a training positive rather than a test one; ``rank`` and ``seed``: the world's.

    The fields the learners need: :attr:`users` with :attr:`clean` and :attr:`noisy` items
    (one training row each), :attr:`test` (users x items, the held-out relevant items) and
    :attr:`seen` (users x items, every clean or noisy training pair: neither is ranked)."""

    n_users: int = 1000
    n_items: int = 500
    share: float = 0.2
    relevant_grade: int = 3
    observed: float = 0.5
    rank: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_users, self.n_items, self.rank) < 1:
            raise ValueError(f"n_users={self.n_users}, n_items={self.n_items}, "
                             f"rank={self.rank}: each must be >= 1")
        if not 0 <= self.share < 1:
            raise ValueError(f"share={self.share} must be in [0, 1)")
        if not 0 < self.observed < 1:
            raise ValueError(f"observed={self.observed} must be in (0, 1)")

    @cached_property
    def world(self) -> World:
        return World(n_items=self.n_items, n_users=self.n_users, rank=self.rank, seed=self.seed)

    @cached_property
    def relevant(self) -> np.ndarray:
        """(users, items): true grade >= ``relevant_grade``."""
        grades = self.world.relevance(
            np.arange(self.n_users)[:, None],
            np.broadcast_to(np.arange(self.n_items), (self.n_users, self.n_items)))
        return grades >= self.relevant_grade

    @cached_property
    def _rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # One generator for the split and the flips, in this order: the rows of a share
        # are those of any other share, only the flipped ones differ.
        rng = np.random.default_rng(self.seed)
        users, items = np.nonzero(self.relevant)
        kept = rng.random(len(users)) < self.observed
        users, items = users[kept], items[kept]
        return users, items, flip_rows(users, items, self.relevant, self.share, rng)

    @property
    def users(self) -> np.ndarray:
        return self._rows[0]

    @property
    def clean(self) -> np.ndarray:
        """Each training row's item before flipping: a relevant one."""
        return self._rows[1]

    @property
    def noisy(self) -> np.ndarray:
        """Each training row's item, ``share`` of them flipped to irrelevant ones."""
        return self._rows[2]

    @cached_property
    def test(self) -> np.ndarray:
        test = self.relevant.copy()
        test[self.users, self.clean] = False
        return test

    @cached_property
    def seen(self) -> np.ndarray:
        seen = np.zeros_like(self.relevant)
        seen[self.users, self.clean] = seen[self.users, self.noisy] = True
        return seen

    def excluded(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of :attr:`seen`, for ``recommend(exclude=...)``."""
        users, items = np.nonzero(self.seen)
        return np.ascontiguousarray(users), np.ascontiguousarray(items)

    def recall(self, top: np.ndarray, k: int = 20) -> float:
        """True Recall@k of each user's recommended items ``top`` (users x >= k, best first,
        none of them :attr:`seen`) against :attr:`test`, over users with a test item."""
        hits = np.take_along_axis(self.test, np.asarray(top)[:, :k], axis=1)
        n_relevant = self.test.sum(axis=1)
        return mean_over_users(recall_at_k(hits, n_relevant, k), n_relevant)


def dcg_at_5(grades: np.ndarray, scores: np.ndarray) -> float:
    """Mean over rows of the DCG@5 of ``grades`` in the order of ``scores`` (ties keep the
    column order)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    return float(dcg_at_k(np.take_along_axis(grades, top, axis=1), 5).mean())


@dataclass(frozen=True)
class MNARExposure:
    """See the module doc. ``per_user`` impressions of ``k`` out of ``candidates`` items per
    user; ``epsilon`` of the requests in random order; ``eval_items`` uniformly random items
    per user are judged. ``popularity_weight`` 0: relevance does not follow popularity, so
    whatever popularity adds to the clicks is exposure alone."""

    n_users: int = 500
    n_items: int = 300
    k: int = 10
    per_user: int = 60
    candidates: int = 50
    epsilon: float = 0.3
    eval_items: int = 50
    rank: int = 4
    exposure_draws: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_users, self.n_items, self.k, self.per_user, self.rank,
               self.exposure_draws) < 1:
            raise ValueError(f"n_users={self.n_users}, n_items={self.n_items}, k={self.k}, "
                             f"per_user={self.per_user}, rank={self.rank}, exposure_draws="
                             f"{self.exposure_draws}: each must be >= 1")
        if not self.k <= self.candidates <= self.n_items:
            raise ValueError(f"candidates={self.candidates} must be in [k={self.k}, "
                             f"n_items={self.n_items}]")
        if not self.eval_items <= self.n_items or self.eval_items < 1:
            raise ValueError(f"eval_items={self.eval_items} must be in [1, n_items="
                             f"{self.n_items}]")
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon={self.epsilon} must be in [0, 1]")

    @cached_property
    def world(self) -> World:
        return World(n_items=self.n_items, n_users=self.n_users, rank=self.rank,
                     popularity_weight=0.0, seed=self.seed)

    @cached_property
    def policy(self) -> EpsilonGreedyPolicy:
        return EpsilonGreedyPolicy(popularity_policy(self.world), epsilon=self.epsilon)

    @cached_property
    def theta(self) -> np.ndarray:
        """The examination curve of positions 1..k."""
        return examination(self.k)

    def log(self) -> SimulatedLog:
        users = np.random.default_rng(self.seed).permutation(
            np.repeat(np.arange(self.n_users), self.per_user))
        return simulate(self.world, self.policy, PositionBasedModel(self.theta, noise_floor=0.0),
                        n=len(users), k=self.k, candidates=self.candidates, users=users,
                        seed=self.seed)

    @cached_property
    def exposure(self) -> np.ndarray:
        """Per item, the chance that a user examined it at least once.

        Per impression, item i is examined with probability e_i = sum_p theta_p P(i shown
        at p), measured on fresh draws of the same exposure law (the popularity policy
        ignores the user); over a user's impressions the chance of having examined i at
        least once is 1 - (1 - e_i)^n."""
        rng = np.random.default_rng(self.seed + 1)
        draws = self.exposure_draws
        pools = sample_candidates(self.world, draws, self.candidates, rng)
        slates, _ = self.policy.rank_batch(np.zeros(draws, dtype=np.int64), pools, self.k, rng)
        examined = np.bincount(slates.ravel(), np.tile(self.theta, draws), self.n_items) / draws
        return 1.0 - (1.0 - examined) ** self.per_user

    @property
    def user_ids(self) -> list[str]:
        return [f"u{u}" for u in range(self.n_users)]

    @property
    def item_ids(self) -> list[str]:
        return [f"i{i}" for i in range(self.n_items)]

    def rows(self) -> pl.DataFrame:
        """The impression-click join of :meth:`log` with each item's true ``exposure``: what
        :meth:`models.data.InteractionDataModule.from_join` reads (with ``user_ids`` and
        ``item_ids`` the whole catalog, and ``propensity="exposure"`` for Rel-MF)."""
        frames = self.log().frames()
        rows = impression_click_join(frames["impression"].lazy(),
                                     frames["click"].lazy()).collect()
        return rows.join(pl.DataFrame({"item_id": self.item_ids, "exposure": self.exposure}),
                         on="item_id")

    @cached_property
    def _judged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The items, then the random order: one generator, drawn in this order.
        rng = np.random.default_rng(self.seed + 2)
        items = np.argsort(rng.random((self.n_users, self.n_items)), axis=1)[:, :self.eval_items]
        grades = self.world.relevance(np.repeat(np.arange(self.n_users), self.eval_items),
                                      items.ravel()).reshape(self.n_users, self.eval_items)
        return items, grades, rng.random(grades.shape)

    @property
    def judged_items(self) -> np.ndarray:
        """(users, eval_items): the items each user's ranking is judged on."""
        return self._judged[0]

    @property
    def grades(self) -> np.ndarray:
        """(users, eval_items): their true grades."""
        return self._judged[1]

    def true_dcg_at_5(self, scores: np.ndarray) -> float:
        """True DCG@5 of ``scores`` (users x eval_items) of :attr:`judged_items`."""
        return dcg_at_5(self.grades, scores)

    def random_dcg_at_5(self) -> float:
        """True DCG@5 of a random order: the floor a learner must clear."""
        return dcg_at_5(self.grades, self._judged[2])
