"""Clipping and the diagnostics of inverse-propensity weights, as pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from models.propensity._base import check


def clip_propensities(propensities: ArrayLike, floor: float) -> np.ndarray:
    """``max(propensity, floor)``: the floor bounds every inverse-propensity weight by
    ``1 / floor``, trading a little bias for a variance that cannot explode (the clipped
    estimators of Strehl et al., NeurIPS 2010, and Saito et al., WSDM 2020)."""
    check("floor", floor, 0 < floor <= 1, "be in (0, 1]")
    p = np.asarray(propensities, dtype=np.float64)
    bad = ~((p >= 0) & (p <= 1))
    check("propensities", p[bad][:1].tolist(), not bad.any(), "be in [0, 1]")
    return np.maximum(p, floor)


def inverse_propensity_weights(propensities: ArrayLike, floor: float) -> np.ndarray:
    """``1 / max(propensity, floor)``."""
    return 1.0 / clip_propensities(propensities, floor)


def _weights(weights: ArrayLike) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).ravel()
    check("weights", "[]", len(w) > 0, "hold at least one weight")
    bad = ~(np.isfinite(w) & (w >= 0))
    check("weights", w[bad][:1].tolist(), not bad.any(), "be finite and >= 0")
    return w


def effective_sample_size(weights: ArrayLike) -> float:
    """Kish's effective sample size, ``(sum w)^2 / sum w^2`` (Kish, "Survey Sampling",
    1965): as many equally weighted samples as would give the weighted mean's variance.
    ``n`` for equal weights, 1 when one weight carries everything."""
    w = _weights(weights)
    check("weights", "all zero", w.any(), "have a positive weight")
    return float(w.sum() ** 2 / (w @ w))


def weight_quantiles(weights: ArrayLike, q: Sequence[float] = (0.5, 0.9, 0.99)
                     ) -> dict[float, float]:
    """The weights' quantiles (linear interpolation), keyed by ``q``."""
    for value in q:
        check("q", value, 0 <= value <= 1, "hold quantiles in [0, 1]")
    return dict(zip(q, np.quantile(_weights(weights), q).tolist(), strict=True))


@dataclass(frozen=True)
class WeightSummary:
    """How far a set of inverse-propensity weights is from a plain average."""

    n: int
    effective_sample_size: float
    mean: float
    max: float
    quantiles: dict[float, float]

    @property
    def effective_share(self) -> float:
        """Effective sample size over n: 1 for equal weights, near 0 for a few dominant."""
        return self.effective_sample_size / self.n


def weight_summary(weights: ArrayLike, q: Sequence[float] = (0.5, 0.9, 0.99)
                   ) -> WeightSummary:
    """Count, Kish effective sample size, mean, max and quantiles of ``weights``."""
    w = _weights(weights)
    return WeightSummary(n=len(w), effective_sample_size=effective_sample_size(w),
                         mean=float(w.mean()), max=float(w.max()),
                         quantiles=weight_quantiles(w, q))
