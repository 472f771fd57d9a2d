"""A/B tests and interleaving in the simulated world: hashed assignment, metrics over time,
and their tests.

Users are split into variants by a salted hash of their id, so a user always sees the same
variant. Each round, every variant serves its users' requests; per-impression metrics are
recorded with the truth the world knows (true nDCG@k, regret against the oracle):

- ``ctr``: clicks / slots; ``clicks``: clicks per impression; ``ndcg``: true nDCG@k against
  the best order of the same candidates; ``reacted``: a like, love or share;
  ``abandoned``: no click at all; ``regret``: expected clicks of the oracle's slate minus
  expected clicks of the shown one (under the click model).

The comparison of two variants is Welch's two-sample t-test on per-impression values, with
the confidence interval of the difference and the minimum detectable effect at the given
power (Welch, Biometrika 1947; the MDE formula of Kohavi, Tang and Xu, "Trustworthy Online
Controlled Experiments", 2020, ch. 17).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats

from ranking.interleaving import InterleavingResult, credit, team_draft
from ranking.metrics import ndcg_at_k
from ranking.policy import BatchPolicy
from simulation.clicks import ClickModel
from simulation.hashing import hash_bucket
from simulation.policies import oracle_policy
from simulation.simulator import CLICKED_REACTIONS, SimulatedLog, sample_candidates, simulate
from simulation.world import World

METRICS = ("ctr", "clicks", "ndcg", "reacted", "abandoned", "regret")
_POSITIVE = [i for i, name in enumerate(CLICKED_REACTIONS) if name in ("like", "love", "share")]


@dataclass(frozen=True)
class WelchTest:
    """B minus A on a per-impression metric."""

    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    mde: float

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def welch_test(a: np.ndarray, b: np.ndarray, alpha: float = 0.05, power: float = 0.8
               ) -> WelchTest:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 values per group, got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    difference = b.mean() - a.mean()
    if se == 0:
        p = 1.0 if difference == 0 else 0.0
        return WelchTest(a.mean(), b.mean(), difference, difference, difference, p, 0.0)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t_crit = stats.t.ppf(1 - alpha / 2, dof)
    p = 2 * stats.t.sf(abs(difference) / se, dof)
    mde = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se
    return WelchTest(float(a.mean()), float(b.mean()), float(difference),
                     float(difference - t_crit * se), float(difference + t_crit * se),
                     float(p), float(mde))


@dataclass
class ABResult:
    """Per-impression metrics of every variant and round, and tests against the control."""

    impressions: pl.DataFrame  # variant, round, and one column per metric
    control: str

    def over_time(self) -> pl.DataFrame:
        """Mean of each metric by variant and round, with cumulative regret."""
        return (self.impressions.group_by("variant", "round").agg(
            *(pl.col(m).mean() for m in METRICS), regret_sum=pl.col("regret").sum(),
            impressions=pl.len())
            .sort("variant", "round")
            .with_columns(cumulative_regret=pl.col("regret_sum").cum_sum().over("variant")))

    def cumulative(self, metric: str, alpha: float = 0.05) -> pl.DataFrame:
        """By variant and round: impressions so far, the running ``total`` of the metric and
        its ``mean`` per impression, each with a normal-approximation (1 - alpha) interval
        (the per-impression variance of all rounds so far; rounds are independent)."""
        self._check(metric)
        z = float(stats.norm.ppf(1 - alpha / 2))
        return (self.impressions.group_by("variant", "round").agg(
            n=pl.len(), total=pl.col(metric).sum(), squares=(pl.col(metric) ** 2).sum())
            .sort("variant", "round")
            .with_columns(pl.col("n", "total", "squares").cum_sum().over("variant"))
            .with_columns(mean=pl.col("total") / pl.col("n"))
            .with_columns(variance=(pl.col("squares") / pl.col("n") - pl.col("mean") ** 2)
                          .clip(lower_bound=0.0))
            .with_columns(half=z * (pl.col("variance") * pl.col("n")).sqrt())
            .select("variant", "round", impressions="n", total="total",
                    total_low=pl.col("total") - pl.col("half"),
                    total_high=pl.col("total") + pl.col("half"), mean="mean",
                    mean_low=pl.col("mean") - pl.col("half") / pl.col("n"),
                    mean_high=pl.col("mean") + pl.col("half") / pl.col("n")))

    def _check(self, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not one of {', '.join(METRICS)}")

    def test(self, metric: str, variant: str, alpha: float = 0.05) -> WelchTest:
        self._check(metric)
        values = {v: self.impressions.filter(pl.col("variant") == v)[metric].to_numpy()
                  for v in (self.control, variant)}
        return welch_test(values[self.control], values[variant], alpha)


@dataclass(frozen=True)
class ABTest:
    """Variants (the first is the control) served side by side in one world.

    A variant with an ``update(users, slates, rewards, weight=None)`` method (an online
    policy, e.g. :class:`bandits.policies.FeaturePolicy`) learns after every round from its
    own impressions of that round: the reward of the item at position p is its click, or
    with ``examination`` (theta_1..theta_k of the click model) the click divided by
    theta_p, the inverse-propensity correction of position bias (Joachims, Swaminathan and
    Schnabel, "Unbiased learning-to-rank with biased feedback", WSDM 2017), whose
    expectation is the item's click probability once examined. Fixed variants are served as
    they are; each variant's traffic and random streams do not depend on what the others
    learn.
    """

    world: World
    click_model: ClickModel
    variants: Mapping[str, BatchPolicy]
    k: int = 10
    candidates: int = 20
    salt: int = 0
    examination: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.examination is not None:
            theta = np.asarray(self.examination, dtype=np.float64)
            if theta.ndim != 1 or len(theta) < self.k or not np.all((theta > 0) & (theta <= 1)):
                raise ValueError(f"examination={np.atleast_1d(theta).tolist()} must be at least "
                                 f"k={self.k} probabilities in (0, 1]")

    def _learn(self, policy: BatchPolicy, log: SimulatedLog) -> None:
        update = getattr(policy, "update", None)
        if not callable(update):
            return
        rewards = log.clicks.astype(np.float64)
        if self.examination is not None:
            rewards /= np.asarray(self.examination, dtype=np.float64)[: self.k]
        update(log.users, log.slates, rewards)

    def run(self, rounds: int, impressions_per_round: int, seed: int = 0) -> ABResult:
        names = list(self.variants)
        oracle = oracle_policy(self.world)
        parts = []
        for round_ in range(rounds):
            rng = np.random.default_rng([seed, round_])
            users = rng.integers(0, self.world.n_users, impressions_per_round)
            bucket = hash_bucket(users, len(names), self.salt)
            for index, name in enumerate(names):
                mine = users[bucket == index]
                if not len(mine):
                    continue
                log = simulate(self.world, self.variants[name], self.click_model, n=len(mine),
                               k=self.k, candidates=self.candidates, users=mine,
                               seed=seed * 1000 + round_, first_request=round_ * 10**7,
                               keep_candidates=True)
                self._learn(self.variants[name], log)
                pool = log.candidates
                ideal, _ = oracle.rank_batch(mine, pool, self.k, rng)
                ideal_grades = self.world.relevance(mine[:, None], ideal)
                activity = self.world.activity_of(mine)
                expected = self.click_model.click_probability
                regret = (expected(ideal_grades, activity).sum(axis=1)
                          - expected(log.grades, activity).sum(axis=1))
                parts.append(pl.DataFrame({
                    "variant": name, "round": round_,
                    "ctr": log.clicks.mean(axis=1),
                    "clicks": log.clicks.sum(axis=1).astype(np.float64),
                    "ndcg": ndcg_at_k(log.grades, ideal_grades, self.k),
                    "reacted": np.isin(log.reactions, _POSITIVE).any(axis=1).astype(float),
                    "abandoned": (~log.clicks.any(axis=1)).astype(np.float64),
                    "regret": regret,
                }))
        return ABResult(pl.concat(parts), control=names[0])


def interleave(world: World, a: BatchPolicy, b: BatchPolicy, click_model: ClickModel,
               n: int, k: int = 10, candidates: int = 20, seed: int = 0
               ) -> InterleavingResult:
    """``n`` impressions, each showing the team-draft interleaving of ``a`` and ``b``'s
    rankings of the same candidates; clicks vote (see :mod:`ranking.interleaving`)."""
    rng = np.random.default_rng([seed, 7])
    users = rng.integers(0, world.n_users, n)
    pool = sample_candidates(world, n, candidates, rng)
    ranked_a, _ = a.rank_batch(users, pool, candidates, rng)
    ranked_b, _ = b.rank_batch(users, pool, candidates, rng)
    shown, team = team_draft(ranked_a, ranked_b, k, rng)
    clicks = click_model.sample(world.relevance(users[:, None], shown), rng,
                                world.activity_of(users))
    return credit(clicks, team)
