"""A learning-to-rank setting where the truth is known: a biased production log, features a
ranker can learn from, and held-out contexts judged by their true grades.

One setting serves the unbiased-LTR tests, the benchmark, the notebook and the quick start,
so their figures are about the same thing:

- **Log.** A production ranker orders each context's candidates by item popularity plus a
  per-(user, item) term unrelated to relevance (promotions, say); a position-based click
  model with examination ``theta_k`` (:func:`simulation.clicks.examination`, severity
  ``eta``) clicks on the slates. Popularity in the order misleads a naive ranker: clicks pile
  up on popular items because they are shown high. The unrelated term is what lets a joint
  model (DLA) tell position from relevance: were the order a function of the ranker's
  features alone, the ranker could explain position effects itself and the examination
  curve would not be identified (Zhang et al., "Towards Disentangling Relevance and Bias in
  Unbiased Learning to Rank", KDD 2023).
- **Features** of a (user, item) pair: the product of the user's vector and the item's
  vector as content features see it (the world's, plus fixed noise), and the item's log
  popularity.
- **Evaluation.** Users never in the log, each with candidates drawn as the log's were,
  ranked by a model and judged by their true grades: nDCG@k over the contexts with at least
  one relevant candidate.

Users ``0 .. train_users - 1`` appear in logs; the rest are the held-out contexts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
import polars as pl

from ingest.joins import impression_click_join
from models.ultr import ListDataModule, ListRanker, fit
from ranking.metrics import mean_over_users, ndcg_at_k
from simulation.clicks import PositionBasedModel, examination
from simulation.hashing import hash_normal
from simulation.policies import ScorePolicy
from simulation.simulator import SimulatedLog, sample_candidates, simulate
from simulation.world import World


class Ranker(Protocol):
    """Anything that orders candidate lists by their feature vectors: ``rank`` takes
    (B, L, F) and returns slot indices, best first, (B, L) or (B, k)."""

    def rank(self, features: np.ndarray) -> object: ...


@dataclass(frozen=True)
class HeldOut:
    """Held-out contexts: candidate ``features`` (B, L, F) and true ``grades`` (B, L)."""

    features: np.ndarray
    grades: np.ndarray


@dataclass(frozen=True)
class Judgement:
    """A ranker's true nDCG@k: the ``mean`` over contexts with a relevant candidate, and
    ``per_context`` (B,), for paired comparisons."""

    mean: float
    per_context: np.ndarray


@dataclass(frozen=True)
class RankingExperiment:
    """See the module doc. ``popularity_weight`` is the world's: relevance mostly personal
    (0.1, not the world's default 0.3), else popularity alone nearly orders the
    popularity-drawn candidates and every ranker ties at the top. ``promotion`` scales the
    production ranker's relevance-free term; ``feature_noise`` is the noise on item vectors,
    in units of their spread."""

    n_items: int = 2000
    n_users: int = 3000
    train_users: int = 2000
    k: int = 10
    eta: float = 1.0
    popularity_weight: float = 0.1
    promotion: float = 2.0
    feature_noise: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.train_users < self.n_users:
            raise ValueError(f"train_users={self.train_users} must be in (0, n_users="
                             f"{self.n_users}): the rest are the held-out contexts")
        if self.k < 1 or self.eta < 0 or self.promotion < 0 or self.feature_noise < 0:
            raise ValueError(f"k={self.k}, eta={self.eta}, promotion={self.promotion}, "
                             f"feature_noise={self.feature_noise}: need k >= 1 and the "
                             "others >= 0")

    @cached_property
    def world(self) -> World:
        return World(n_items=self.n_items, n_users=self.n_users,
                     popularity_weight=self.popularity_weight, seed=self.seed)

    @cached_property
    def examination(self) -> np.ndarray:
        """The true ``theta_k`` of positions 1..k."""
        return examination(self.k, eta=self.eta)

    @cached_property
    def observed_items(self) -> np.ndarray:
        vectors = self.world.item_vectors
        rng = np.random.default_rng([self.seed, 1])
        noise = rng.normal(size=vectors.shape).astype(np.float32)
        return vectors + self.feature_noise * vectors.std() * noise

    def production_policy(self) -> ScorePolicy:
        world = self.world

        def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            pair = users.astype(np.int64) * world.n_items + items
            return np.log(world.popularity[items]) + self.promotion * hash_normal(pair, 7)

        return ScorePolicy(score, name="production", n_users=world.n_users,
                           n_items=world.n_items)

    def log(self, n_lists: int, seed: int = 1) -> SimulatedLog:
        """``n_lists`` production slates of ``k`` out of ``k`` candidates for training users,
        clicked by the position-based model (with reactions and dwell)."""
        rng = np.random.default_rng([self.seed, 2, seed])
        return simulate(self.world, self.production_policy(),
                        PositionBasedModel(self.examination), n=n_lists, k=self.k,
                        candidates=self.k, users=rng.integers(0, self.train_users, n_lists),
                        seed=seed)

    def rows(self, log: SimulatedLog) -> pl.DataFrame:
        """The impression-click join of ``log`` with each slot's true ``grade``."""
        frames = log.frames()
        return self.with_grades(impression_click_join(
            frames["impression"].lazy(), frames["click"].lazy(), frames["reaction"].lazy(),
            frames["dwell"].lazy()).collect())

    def with_grades(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` of a join (ids ``u<n>``, ``i<n>``) with each slot's true ``grade``."""
        return rows.with_columns(grade=self.world.relevance(*self._indices(rows)))

    def features_of(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Feature vectors of (user, item) index pairs of any matching shapes, (..., F)."""
        product = self.world.user_vectors[users] * self.observed_items[items]
        popularity = np.log(self.world.popularity[items] * self.world.n_items)[..., None]
        return np.concatenate([product, popularity], axis=-1).astype(np.float32)

    def features(self, rows: pl.DataFrame) -> np.ndarray:
        """Feature vectors of the join's slots (ids ``u<n>``, ``i<n>``), (rows, F): the
        ``features`` argument of :meth:`models.ultr.ListDataModule.from_join`."""
        return self.features_of(*self._indices(rows))

    def held_out(self, n_contexts: int = 2000, n_candidates: int = 50, seed: int = 3
                 ) -> HeldOut:
        """Contexts of users never in a log, candidates drawn as the log's were."""
        rng = np.random.default_rng([self.seed, 3, seed])
        users = rng.integers(self.train_users, self.n_users, n_contexts)
        candidates = sample_candidates(self.world, n_contexts, n_candidates, rng)
        return HeldOut(self.features_of(users[:, None], candidates),
                       self.world.relevance(users[:, None], candidates).astype(np.float64))

    def lists(self, rows: pl.DataFrame, labels: str = "clicked",
              examination: np.ndarray | None = None, batch_size: int = 512, seed: int = 0
              ) -> ListDataModule:
        """The slates of ``rows`` as training lists with this setting's features: ``labels``
        the target column (``"grade"`` for an oracle), ``examination`` the curve whose
        inverse weights each click (None: unweighted)."""
        return ListDataModule.from_join(rows, self.features, labels=labels,
                                        examination=examination, batch_size=batch_size,
                                        seed=seed)

    def train_and_judge(self, rankers: Mapping[str, tuple[ListRanker, ListDataModule]],
                        held_out: HeldOut, *, max_epochs: int = 30, seed: int = 0,
                        k: int = 10) -> dict[str, Judgement]:
        """Fit each named (ranker, lists) pair and judge it on ``held_out`` by true nDCG@k,
        in the order given."""
        judged = {}
        for name, (ranker, data) in rankers.items():
            fit(ranker, data, max_epochs=max_epochs, seed=seed)
            judged[name] = self.judge(ranker, held_out, k)
        return judged

    @staticmethod
    def judge(ranker: Ranker, held_out: HeldOut, k: int = 10) -> Judgement:
        """True nDCG@k of ``ranker`` on the held-out contexts."""
        order = np.asarray(_numpy(ranker.rank(held_out.features)))
        ranked = np.take_along_axis(held_out.grades, order, axis=1)
        per_context = ndcg_at_k(ranked, ideal=held_out.grades, k=k)
        return Judgement(float(mean_over_users(per_context, (held_out.grades > 0).sum(axis=1))),
                         per_context)

    @staticmethod
    def _indices(rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return (rows["user_id"].str.slice(1).cast(pl.Int64).to_numpy(),
                rows["item_id"].str.slice(1).cast(pl.Int64).to_numpy())


def _numpy(values: object) -> np.ndarray:
    # A torch tensor (on any device) or an array: the module needs no torch import for this.
    cpu = getattr(values, "cpu", None)
    return np.asarray(cpu().numpy() if cpu is not None else values)
