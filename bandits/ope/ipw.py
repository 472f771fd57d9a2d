"""Inverse propensity weighting, plain and self-normalized."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandits.ope.data import Estimate, OPEData


@dataclass(frozen=True)
class IPW:
    """Inverse propensity weighting (Horvitz and Thompson, JASA 1952; Precup, Sutton and Singh,
    "Eligibility traces for off-policy policy evaluation", ICML 2000)::

        V = 1/n sum_i w_i r_i,    w_i = pi(a_i | x_i, p_i) / pscore_i

    Unbiased wherever the logging policy gives every action the evaluation policy may take a
    positive probability."""

    name: str = "ipw"

    def estimate(self, data: OPEData) -> Estimate:
        return Estimate.mean_of(data.weight * data.reward)


@dataclass(frozen=True)
class SNIPW:
    """Self-normalized IPW (Swaminathan and Joachims, "The self-normalized estimator for
    counterfactual learning", NeurIPS 2015)::

        V = sum_i w_i r_i / sum_i w_i

    Biased by O(1/n) but of smaller variance than IPW, and invariant to a constant added to
    every reward."""

    name: str = "snipw"

    def estimate(self, data: OPEData) -> Estimate:
        w = data.weight
        return Estimate(np.zeros_like(w), w * data.reward, w)
