"""Click models: how examination, relevance, trust and noise turn a shown slate into clicks.

All models take the true grades of a batch of slates, shape ``(n, k)`` with 0..4, and are
vectorized over the batch (the cascade loops over the k positions, never over slates).

- :class:`PositionBasedModel`: P(click) = theta_k * P(click | examined, grade)
  (Craswell et al., "An experimental comparison of click position-bias models", WSDM 2008).
- :class:`CascadeModel`: the user scans top-down and may stop after a click
  (Craswell et al. 2008; with ``continue_after_click`` > 0 it is the dependent click model of
  Guo et al., "Efficient multiple-click models in web search", WSDM 2009).
- :class:`TrustBiasModel`: clicks on examined items depend on position as well as on
  relevance (Agarwal et al., "Addressing trust bias for unbiased learning-to-rank", WWW 2019).

P(click | examined, grade) follows the graded mapping used across unbiased learning to rank,
``eps + (1 - eps) * (2^g - 1) / (2^4 - 1)`` (Chapelle et al., "Expected reciprocal rank",
CIKM 2009; Ai et al., "Unbiased learning to rank with unbiased propensity estimation", SIGIR
2018), where ``eps`` is the click noise floor (clicks on irrelevant items). Click noise is
completed by a false-negative rate: a click that would happen is lost with that probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from simulation.world import MAX_GRADE

#: Examination by rank estimated on a commercial search engine, the ULTR standard (Joachims
#: et al., "Unbiased learning-to-rank with biased feedback", WSDM 2017, and follow-ups).
ULTR_EXAMINATION = np.array([0.68, 0.61, 0.48, 0.34, 0.28, 0.20, 0.11, 0.10, 0.08, 0.06])


def examination(k: int, eta: float = 1.0, kind: Literal["ultr", "inverse"] = "ultr"
                ) -> np.ndarray:
    """theta_1..theta_k: the ULTR standard to the power ``eta`` (beyond rank 10 the last
    value continues), or ``(1/k)^eta``. ``eta`` sets the severity of position bias."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    if kind == "inverse":
        return (1.0 / np.arange(1, k + 1)) ** eta
    if kind == "ultr":
        base = np.concatenate([ULTR_EXAMINATION,
                               np.full(max(0, k - len(ULTR_EXAMINATION)), ULTR_EXAMINATION[-1])])
        return base[:k] ** eta
    raise ValueError(f"kind={kind!r} must be 'ultr' or 'inverse'")


def attractiveness(grades: np.ndarray, noise_floor: float) -> np.ndarray:
    """P(click | examined, grade) = eps + (1 - eps) (2^g - 1) / (2^max - 1)."""
    table = noise_floor + (1 - noise_floor) * (2.0 ** np.arange(MAX_GRADE + 1) - 1) \
        / (2.0 ** MAX_GRADE - 1)
    return table.astype(np.float32)[np.asarray(grades)]


class ClickModel(Protocol):
    """``activity`` (shape (n,), default 1) scales each row's P(click | examined): users
    differ in how readily they click."""

    def click_probability(self, grades: np.ndarray, activity: np.ndarray | None = None
                          ) -> np.ndarray:
        """P(click) of every slot, shape (n, k)."""
        ...

    def sample(self, grades: np.ndarray, rng: np.random.Generator,
               activity: np.ndarray | None = None) -> np.ndarray:
        """Boolean clicks, shape (n, k)."""
        ...


def _scaled(given_examined: np.ndarray, activity: np.ndarray | None) -> np.ndarray:
    if activity is None:
        return given_examined
    return np.minimum(1.0, given_examined * np.asarray(activity, dtype=np.float32)[:, None])


def _check_rate(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name}={value} must be in [0, 1]")


@dataclass(frozen=True)
class PositionBasedModel:
    """Examination depends on position only; clicks on examined items on grade only."""

    theta: np.ndarray
    noise_floor: float = 0.1
    false_negative: float = 0.0

    def __post_init__(self) -> None:
        _check_rate("noise_floor", self.noise_floor)
        _check_rate("false_negative", self.false_negative)

    def click_probability(self, grades: np.ndarray, activity: np.ndarray | None = None
                          ) -> np.ndarray:
        grades = np.asarray(grades)
        theta = np.asarray(self.theta)[: grades.shape[-1]]
        given_examined = _scaled(attractiveness(grades, self.noise_floor), activity)
        return theta * given_examined * (1 - self.false_negative)

    def sample(self, grades: np.ndarray, rng: np.random.Generator,
               activity: np.ndarray | None = None) -> np.ndarray:
        return rng.random(np.shape(grades), dtype=np.float32) < self.click_probability(
            grades, activity)


@dataclass(frozen=True)
class CascadeModel:
    """Top-down scan; at each examined slot a click with P(click | grade); after a click the
    user goes on with ``continue_after_click`` (0: the pure cascade, at most one click)."""

    noise_floor: float = 0.1
    continue_after_click: float = 0.0
    false_negative: float = 0.0

    def __post_init__(self) -> None:
        for name in ("noise_floor", "continue_after_click", "false_negative"):
            _check_rate(name, getattr(self, name))

    def click_probability(self, grades: np.ndarray, activity: np.ndarray | None = None
                          ) -> np.ndarray:
        attract = _scaled(attractiveness(grades, self.noise_floor), activity) \
            * (1 - self.false_negative)
        # P(examined at p) = prod over q < p of (1 - a_q + a_q * continue).
        stay = 1 - attract + attract * self.continue_after_click
        examined = np.concatenate([np.ones_like(stay[..., :1]),
                                   np.cumprod(stay[..., :-1], axis=-1)], axis=-1)
        return examined * attract

    def sample(self, grades: np.ndarray, rng: np.random.Generator,
               activity: np.ndarray | None = None) -> np.ndarray:
        attract = _scaled(attractiveness(grades, self.noise_floor), activity) \
            * (1 - self.false_negative)
        n, k = attract.shape
        clicks = np.zeros((n, k), dtype=bool)
        scanning = np.ones(n, dtype=bool)
        for position in range(k):  # k steps, each vectorized over the whole batch
            clicked = scanning & (rng.random(n) < attract[:, position])
            clicks[:, position] = clicked
            scanning &= ~clicked | (rng.random(n) < self.continue_after_click)
        return clicks


@dataclass(frozen=True)
class TrustBiasModel:
    """P(click | examined) = eps_plus[k] if the item is relevant (grade >= ``relevant_from``),
    else eps_minus[k]: users trust higher positions, so false positives grow there."""

    theta: np.ndarray
    eps_plus: np.ndarray
    eps_minus: np.ndarray
    relevant_from: int = 2

    def click_probability(self, grades: np.ndarray, activity: np.ndarray | None = None
                          ) -> np.ndarray:
        grades = np.asarray(grades)
        k = grades.shape[-1]
        relevant = grades >= self.relevant_from
        given_examined = np.where(relevant, np.asarray(self.eps_plus)[:k],
                                  np.asarray(self.eps_minus)[:k])
        return np.asarray(self.theta)[:k] * _scaled(given_examined, activity)

    def sample(self, grades: np.ndarray, rng: np.random.Generator,
               activity: np.ndarray | None = None) -> np.ndarray:
        return rng.random(np.shape(grades)) < self.click_probability(grades, activity)

    @classmethod
    def decaying(cls, k: int, eta: float = 1.0) -> TrustBiasModel:
        """A setting in the spirit of Agarwal et al. 2019 (not their exact numbers):
        eps+_k = 1 - 0.01 (k - 1), eps-_k = 0.65 / k, theta_k = (1/k)^eta."""
        ranks = np.arange(1, k + 1)
        return cls(theta=examination(k, eta, "inverse"), eps_plus=1 - 0.01 * (ranks - 1),
                   eps_minus=0.65 / ranks)
