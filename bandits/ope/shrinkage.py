"""Doubly robust with optimistic shrinkage."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bandits.ope.data import Estimate, OPEData, OPEInputError
from bandits.ope.slope import check_grid, slope_tune, weight_grid


@dataclass(frozen=True)
class DROS:
    """DR with optimistic shrinkage, DR-OS (Su, Dimakopoulou, Krishnamurthy and Dudik, "Doubly
    robust off-policy evaluation with shrinkage", ICML 2020): DR with each importance weight
    shrunk towards 0 by ``shrinkage`` lambda, the weight that minimizes a bound on the mean
    squared error when the reward model's error is taken as at most its observed residual::

        w_hat_i = lambda w_i / (w_i^2 + lambda)
        V = 1/n sum_i [ sum_a pi(a | x_i, p_i) q(x_i, a, p_i) + w_hat_i (r_i - q(x_i, a_i, p_i)) ]

    lambda = inf is DR, lambda = 0 the direct method. With ``shrinkage=None`` lambda is chosen
    by SLOPE from ``grid`` (default: a geometric grid over the squared weights)."""

    shrinkage: float | None = None
    grid: tuple[float, ...] | None = None
    name: str = "dr-os"

    def __post_init__(self) -> None:
        if self.shrinkage is not None and not (self.shrinkage >= 0):
            raise OPEInputError(f"shrinkage={self.shrinkage} must be at least 0 (inf is DR)")
        check_grid("grid", self.grid)

    def estimate(self, data: OPEData) -> Estimate:
        if self.shrinkage is not None:
            return self._at(data, self.shrinkage)
        grid = self.grid or weight_grid(data.weight ** 2)
        return slope_tune(lambda lam: self._at(data, lam), sorted(grid, reverse=True))

    def _at(self, data: OPEData, lam: float) -> Estimate:
        w = data.weight
        shrunk = w if lam == math.inf else (lam * w / (w ** 2 + lam) if lam > 0 else 0.0 * w)
        residual = data.reward - data.logged_q(self.name)
        return Estimate.mean_of(data.policy_q(self.name) + shrunk * residual,
                                hyperparameter=float(lam))
