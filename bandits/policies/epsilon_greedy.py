"""Epsilon-greedy over a ridge reward model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bandits.policies._base import DTYPE, LinearPolicy, check, check_k, top_k


class EpsilonGreedy(LinearPolicy):
    """Epsilon-greedy (Sutton and Barto, "Reinforcement Learning: An Introduction", 2nd ed.
    2018, section 2.2; the baseline of Li et al., WWW 2010) over a ridge regression of
    the reward on ``x``.

    Slates: with probability ``epsilon`` a request gets a uniformly random ordered k-subset
    of its N candidates, otherwise the greedy top k of the ridge estimate. Under a uniform
    order every candidate is at every slot with probability 1/N, so the probability of the
    item shown at slot p is exactly::

        (1 - epsilon) * [greedy puts it at p] + epsilon / N

    which :meth:`select` reports. :meth:`score` is the ridge estimate (the greedy part).
    """

    name = "epsilon-greedy"

    def __init__(self, n_features: int, n_arms: int = 1, epsilon: float = 0.1,
                 ridge: float = 1.0, refactor_every: int = 100, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        check("epsilon", epsilon, 0 <= epsilon <= 1, "be in [0, 1]")
        super().__init__(n_features, n_arms, ridge, refactor_every, seed, device)
        self.epsilon = epsilon

    def score(self, x: Any, arm: Any = None) -> Tensor:
        x, arm_t = self._scoring_input(x, arm)
        return self._mean(x, arm_t)

    def select(self, x: Any, k: int, generator: torch.Generator | None = None,
               arm: Any = None) -> tuple[Tensor, Tensor]:
        scores = self.score(x, arm)
        B, N = scores.shape
        check_k(k, N)
        generator = self._generator_for(generator)
        greedy = top_k(scores, k)
        uniform = torch.rand((B, N), generator=generator, device=self.device).argsort(1)[:, :k]
        explore = torch.rand((B, 1), generator=generator, device=self.device) < self.epsilon
        chosen = torch.where(explore, uniform, greedy)
        propensity = (1 - self.epsilon) * (chosen == greedy).to(DTYPE) + self.epsilon / N
        return chosen, propensity
