"""LinUCB: the ridge estimate plus ``alpha`` standard errors."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bandits.policies._base import LinearPolicy, check


class LinUCB(LinearPolicy):
    """LinUCB with disjoint linear models (Li, Chu, Langford and Schapire, "A
    contextual-bandit approach to personalized news article recommendation", WWW 2010,
    Algorithm 1)::

        score(x, a) = x . theta_a + alpha * sqrt(x^T A_a^-1 x),
        A_a = lambda I + sum w x x^T,  b_a = sum w r x,  theta_a = A_a^-1 b_a

    With ``n_arms=1`` (the default) one model covers every item, whose features are then
    part of ``x``; with ``n_arms=K`` each arm has its own model (the paper's disjoint
    form) and ``arm`` picks it. :meth:`select` is deterministic (the top k by score) and
    reports propensity 1. See :class:`bandits.policies._base.LinearPolicy` for the
    shared hyper-parameters and the learned state.
    """

    name = "linucb"

    def __init__(self, n_features: int, n_arms: int = 1, alpha: float = 1.0,
                 ridge: float = 1.0, refactor_every: int = 100, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        check("alpha", alpha, alpha >= 0, "be >= 0")
        super().__init__(n_features, n_arms, ridge, refactor_every, seed, device)
        self.alpha = alpha

    def score(self, x: Any, arm: Any = None) -> Tensor:
        """The upper confidence bound of every candidate, (B, N)."""
        x, arm_t = self._scoring_input(x, arm)
        return self._mean(x, arm_t) + self.alpha * self._width(x, arm_t)
