"""Logging policies for simulation, batched, each reporting exact propensities.

Every policy here is a :class:`ranking.policy.BatchPolicy`: ``rank_batch(users, candidates, k,
rng)`` returns item indices into the catalog, shape (n, k), and the probability that the policy
put that item at that position given the candidates. Deterministic policies report 1.

:class:`PerRequestPolicy` and :class:`BatchAsRankingPolicy` bridge to the per-request contract
(:class:`ranking.slate.RankingPolicy`) with the ids ``u<number>`` and ``i<number>``; a policy
that can score only the users or items of one world says how many with ``n_users`` and
``n_items``, and refuses ids outside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranking.policy import BatchPolicy, Context
from ranking.slate import RankingPolicy, Slate, SlateError
from simulation.hashing import hash_normal
from simulation.world import World

# Canonical ids only ("i7", not "i007" or "i²"), so an id and its index map one to one;
# at most 18 digits, so every index fits an int64.
_USER_ID = re.compile(r"u(0|[1-9][0-9]{0,17})")
_ITEM_ID = re.compile(r"i(0|[1-9][0-9]{0,17})")


def _check_k(candidates: np.ndarray, k: int) -> None:
    if not 1 <= k <= candidates.shape[1]:
        raise ValueError(f"k={k} must be in [1, {candidates.shape[1]}] (the candidates given)")


def _check_known(field: str, indices: np.ndarray, n: int | None) -> None:
    # NumPy would raise an IndexError for an index past the end, and silently wrap a
    # negative one to the end of the array: either way not an answer.
    if n is None or indices.size == 0 or (indices.min() >= 0 and indices.max() < n):
        return
    bad = np.argwhere((indices < 0) | (indices >= n))[0]
    where = ", ".join(str(i) for i in bad)
    raise ValueError(f"{field}[{where}]={indices[tuple(bad)]} must be in [0, {n})")


@dataclass(frozen=True)
class UniformRandomPolicy:
    """A uniformly random order of the candidates: every item is at every position with
    probability 1/m."""

    name: str = "uniform-random"

    def rank_batch(self, users: np.ndarray, candidates: np.ndarray, k: int,
                   rng: np.random.Generator, context: Context | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        _check_k(candidates, k)
        slates = rng.permuted(candidates, axis=1)[:, :k]
        return slates, np.full(slates.shape, 1.0 / candidates.shape[1])


@dataclass(frozen=True)
class ScorePolicy:
    """Deterministic: the k candidates of highest ``score(users, items)``; propensity 1.

    ``n_users`` and ``n_items`` are the index ranges ``score`` knows (None: any index); a
    user or candidate outside them is a ``ValueError`` naming it."""

    score: Callable[[np.ndarray, np.ndarray], np.ndarray]
    name: str = "score"
    n_users: int | None = None
    n_items: int | None = None

    def rank_batch(self, users: np.ndarray, candidates: np.ndarray, k: int,
                   rng: np.random.Generator, context: Context | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        _check_k(candidates, k)
        _check_known("users", users, self.n_users)
        _check_known("candidates", candidates, self.n_items)
        scores = self.score(users[:, None], candidates)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(candidates, order, axis=1), np.ones((len(users), k))


def popularity_policy(world: World) -> ScorePolicy:
    """The most popular candidates first, the same for every user (new ones included)."""
    return ScorePolicy(lambda users, items: world.popularity[items], name="popularity",
                       n_items=world.n_items)


def noisy_oracle_policy(world: World, noise: float, salt: int = 0) -> ScorePolicy:
    """True affinity plus noise of scale ``noise`` fixed per (user, item): a deterministic
    ranker of known quality (less noise, better ranker), for planted comparisons."""
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        pair = users.astype(np.int64) * world.n_items + items
        return world.affinity(users, items) + noise * hash_normal(pair, salt)

    return ScorePolicy(score, name=f"noisy-oracle-{noise:g}", n_users=world.n_users,
                       n_items=world.n_items)


def oracle_policy(world: World) -> ScorePolicy:
    """Ranks by the true affinity: the best any policy can do on these candidates."""
    return ScorePolicy(world.affinity, name="oracle", n_users=world.n_users,
                       n_items=world.n_items)


@dataclass(frozen=True)
class EpsilonGreedyPolicy:
    """With probability ``epsilon`` a uniformly random order, otherwise ``base``'s slate
    (deterministic). P(item at p) = (1 - epsilon) [base put it at p] + epsilon / m."""

    base: ScorePolicy
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon={self.epsilon} must be in [0, 1]")

    @property
    def name(self) -> str:
        return f"epsilon-greedy-{self.epsilon:g}({self.base.name})"

    @property
    def n_users(self) -> int | None:
        return self.base.n_users

    @property
    def n_items(self) -> int | None:
        return self.base.n_items

    def rank_batch(self, users: np.ndarray, candidates: np.ndarray, k: int,
                   rng: np.random.Generator, context: Context | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        greedy, _ = self.base.rank_batch(users, candidates, k, rng, context)
        random, _ = UniformRandomPolicy().rank_batch(users, candidates, k, rng)
        explore = rng.random(len(users)) < self.epsilon
        slates = np.where(explore[:, None], random, greedy)
        propensity = (1 - self.epsilon) * (slates == greedy) + self.epsilon / candidates.shape[1]
        return slates, propensity


@dataclass(frozen=True)
class RetrievalOrderPolicy:
    """Deterministic: the first k candidates in the order retrieval gave them."""

    name: str = "retrieval"

    def rank_batch(self, users: np.ndarray, candidates: np.ndarray, k: int,
                   rng: np.random.Generator, context: Context | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        _check_k(candidates, k)
        return candidates[:, :k], np.ones((len(users), k))


def user_id(user: int) -> str:
    return f"u{user}"


def item_id(item: int) -> str:
    return f"i{item}"


def item_index(item: str, field: str = "item_id") -> int:
    """The catalog index of ``item`` (``i<number>``); a :class:`SlateError` naming ``field``
    and the value otherwise."""
    if not isinstance(item, str) or not _ITEM_ID.fullmatch(item):
        raise SlateError(f"{field}={item!r} is not a catalog id (i<number>)")
    return int(item[1:])


@dataclass(frozen=True)
class PerRequestPolicy:
    """Drives a :class:`ranking.slate.RankingPolicy` one request at a time, as serving
    would: ``context`` holds ``user_id`` and the request's context values, candidates and
    slates are item ids. Every slate is checked against the contract before it is used."""

    policy: RankingPolicy
    #: One request after another, as a client of one endpoint would send them.
    thread_safe = False

    @property
    def name(self) -> str:
        return self.policy.name

    def rank_batch(self, users: np.ndarray, candidates: np.ndarray, k: int,
                   rng: np.random.Generator, context: Context | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        _check_k(candidates, k)
        slates = np.empty((len(users), k), dtype=candidates.dtype)
        propensity = np.empty((len(users), k))
        extra = context or {}
        for row, user in enumerate(users):  # one request each: the policy's own protocol
            ids = [item_id(j) for j in candidates[row]]
            request = {"user_id": user_id(int(user)),
                       **{key: values[row] for key, values in extra.items()}}
            try:
                slate = self.policy.rank(request, ids, k).check(ids, k)
            except SlateError as error:
                raise SlateError(f"policy {self.policy.name!r}, request {row}: {error}") \
                    from None
            slates[row] = [item_index(item) for item in slate.items]
            propensity[row] = slate.propensities
        return slates, propensity


@dataclass
class BatchAsRankingPolicy:
    """A batch policy answering one request at a time (to serve a simulated policy over
    HTTP). Context values other than ``user_id`` are passed on as one-element sequences.

    A request the policy cannot answer is a :class:`SlateError` naming the field and the
    value: a ``user_id`` that is not ``u<number>``, a candidate that is not ``i<number>``,
    or, for a policy that knows only one world's users and items (``n_users``,
    ``n_items``), an id outside that world. The simulated world is closed, so such an id
    is a client talking to the wrong world, not a new user to guess for; policies that do
    not look at the user (popularity, random orders) answer any well-formed ``user_id``.
    """

    policy: BatchPolicy
    seed: int = 0

    def __post_init__(self) -> None:
        self.name = self.policy.name
        self._rng = np.random.default_rng(self.seed)

    def rank(self, context: Mapping[str, Any], candidates: Sequence[str], k: int) -> Slate:
        user = context.get("user_id", "")
        if not isinstance(user, str) or not _USER_ID.fullmatch(user):
            raise SlateError(f"user_id={user!r} is not a simulated user id (u<number>)")
        n_users = getattr(self.policy, "n_users", None)
        if n_users is not None and int(user[1:]) >= n_users:
            raise SlateError(f"user_id={user!r} is not a user of this world "
                             f"(u0..u{n_users - 1})")
        n_items = getattr(self.policy, "n_items", None)
        pool = np.empty((1, len(candidates)), dtype=np.int64)
        for position, item in enumerate(candidates):
            field = f"candidates[{position}]"
            pool[0, position] = index = item_index(item, field)
            if n_items is not None and index >= n_items:
                raise SlateError(f"{field}={item!r} is not an item of this world "
                                 f"(i0..i{n_items - 1})")
        extra = {key: [value] for key, value in context.items() if key != "user_id"}
        k = min(k, pool.shape[1])
        slates, propensity = self.policy.rank_batch(np.array([int(user[1:])]), pool, k,
                                                    self._rng, extra)
        return Slate([item_id(j) for j in slates[0]], propensity[0].tolist(),
                     list(range(k, 0, -1)))
