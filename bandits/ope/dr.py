"""Doubly robust estimators, plain and self-normalized."""

from __future__ import annotations

from dataclasses import dataclass

from bandits.ope.data import Estimate, OPEData


@dataclass(frozen=True)
class DR:
    """Doubly robust (Dudik, Langford and Li, "Doubly robust policy evaluation and learning",
    ICML 2011): the direct method corrected by the importance-weighted residual::

        V = 1/n sum_i [ sum_a pi(a | x_i, p_i) q(x_i, a, p_i) + w_i (r_i - q(x_i, a_i, p_i)) ]

    Unbiased when the propensities are right, whatever the reward model (if it was not fitted
    on the same rows: see :func:`bandits.ope.cross_fit`); of lower variance the better q is."""

    name: str = "dr"

    def estimate(self, data: OPEData) -> Estimate:
        residual = data.reward - data.logged_q(self.name)
        return Estimate.mean_of(data.policy_q(self.name) + data.weight * residual)


@dataclass(frozen=True)
class SNDR:
    """Self-normalized doubly robust (the self-normalization of Swaminathan and Joachims,
    NeurIPS 2015, applied to DR's correction term, as in Kallus and Uehara, NeurIPS 2019)::

        V = 1/n sum_i sum_a pi(a | x_i, p_i) q(x_i, a, p_i)
            + sum_i w_i (r_i - q(x_i, a_i, p_i)) / sum_i w_i"""

    name: str = "sndr"

    def estimate(self, data: OPEData) -> Estimate:
        w = data.weight
        return Estimate(data.policy_q(self.name), w * (data.reward - data.logged_q(self.name)), w)
