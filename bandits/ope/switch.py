"""Switch doubly robust."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bandits.ope.data import Estimate, OPEData, OPEInputError
from bandits.ope.slope import check_grid, slope_tune, weight_grid


@dataclass(frozen=True)
class SwitchDR:
    """Switch-DR (Wang, Agarwal and Dudik, "Optimal and adaptive off-policy evaluation in
    contextual bandits", ICML 2017): DR where the importance weight is at most ``threshold``
    tau, the direct method alone elsewhere::

        V = 1/n sum_i [ sum_a pi(a | x_i, p_i) q(x_i, a, p_i)
                        + 1{w_i <= tau} w_i (r_i - q(x_i, a_i, p_i)) ]

    tau = inf is DR, tau = 0 the direct method. With ``threshold=None`` tau is chosen per data
    set by SLOPE (:func:`bandits.ope.slope.slope_tune`) from ``grid`` (default: a geometric grid
    over the data's weights)."""

    threshold: float | None = None
    grid: tuple[float, ...] | None = None
    name: str = "switch-dr"

    def __post_init__(self) -> None:
        if self.threshold is not None and not (self.threshold >= 0):
            raise OPEInputError(f"threshold={self.threshold} must be at least 0 (inf is DR)")
        check_grid("grid", self.grid)

    def estimate(self, data: OPEData) -> Estimate:
        if self.threshold is not None:
            return self._at(data, self.threshold)
        grid = self.grid or weight_grid(data.weight)
        # SLOPE wants the candidates from least biased (largest tau) to lowest variance.
        return slope_tune(lambda tau: self._at(data, tau), sorted(grid, reverse=True))

    def _at(self, data: OPEData, tau: float) -> Estimate:
        w = data.weight
        kept = np.where(w <= tau, w, 0.0)
        residual = data.reward - data.logged_q(self.name)
        return Estimate.mean_of(data.policy_q(self.name) + kept * residual,
                                hyperparameter=math.inf if tau == math.inf else float(tau))
