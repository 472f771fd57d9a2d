"""The replay method."""

from __future__ import annotations

from dataclasses import dataclass

from bandits.ope.data import Estimate, OPEData


@dataclass(frozen=True)
class Replay:
    """Replay (Li, Chu, Langford and Wang, "Unbiased offline evaluation of contextual-bandit-based
    news article recommendation algorithms", WSDM 2011).

    A logged row counts where the evaluation policy would have made the same choice; with a
    stochastic policy it counts in expectation, with weight pi(a_i | x_i, p_i)::

        V = sum_i pi(a_i | x_i, p_i) r_i / sum_i pi(a_i | x_i, p_i)

    It assumes the logging policy was uniform at random (the paper's setting, and OBD's random
    log): under any other logging policy it is biased, and IPW is the estimator to use."""

    name: str = "replay"

    def estimate(self, data: OPEData) -> Estimate:
        match = data.policy_probability()
        return Estimate(0.0 * match, match * data.reward, match)
