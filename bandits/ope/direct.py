"""The direct method."""

from __future__ import annotations

from dataclasses import dataclass

from bandits.ope.data import Estimate, OPEData


@dataclass(frozen=True)
class DM:
    """The direct method (as named and analysed by Dudik, Langford and Li, "Doubly robust policy
    evaluation and learning", ICML 2011): the reward model's value of the evaluation policy::

        V = 1/n sum_i sum_a pi(a | x_i, p_i) q(x_i, a, p_i)

    Of low variance, and as biased as the reward model ``q`` (``estimated_rewards``)."""

    name: str = "dm"

    def estimate(self, data: OPEData) -> Estimate:
        return Estimate.mean_of(data.policy_q(self.name))
