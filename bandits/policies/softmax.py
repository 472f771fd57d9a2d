"""Softmax (Boltzmann) exploration over a ridge reward model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bandits.policies._base import DTYPE, LinearPolicy, check, check_k, top_k


class Softmax(LinearPolicy):
    """Boltzmann exploration (Sutton and Barto, "Reinforcement Learning: An Introduction",
    2nd ed. 2018, section 2.8; Vermorel and Mohri, "Multi-armed bandit algorithms and
    empirical evaluation", ECML 2005) over a ridge regression of the reward on ``x``:
    ``P(i) = exp(s_i / T) / sum_j exp(s_j / T)`` with ``s`` the ridge estimate and ``T`` the
    ``temperature``.

    Slates: slot 1 is drawn from that distribution; slots 2..k are the greedy order (by
    ``s``) of the remaining candidates. This keeps every slot's probability exact and
    cheap (a Plackett-Luce draw has marginals that cost a sum over all prefixes). With
    ``g_1, g_2, ...`` the greedy order and ``m`` the greedy rank of the item drawn for slot
    1, slot p >= 2 shows ``g_(p-1)`` when ``m >= p`` and ``g_p`` when ``m < p``, so::

        P(slot 1 = i) = P(i)
        P(slot p = g_(p-1)) = sum_(m >= p) P(g_m),   P(slot p = g_p) = sum_(m < p) P(g_m)

    which :meth:`select` reports. :meth:`score` is the ridge estimate.
    """

    name = "softmax"

    def __init__(self, n_features: int, n_arms: int = 1, temperature: float = 0.1,
                 ridge: float = 1.0, refactor_every: int = 100, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        check("temperature", temperature, temperature > 0, "be > 0")
        super().__init__(n_features, n_arms, ridge, refactor_every, seed, device)
        self.temperature = temperature

    def score(self, x: Any, arm: Any = None) -> Tensor:
        x, arm_t = self._scoring_input(x, arm)
        return self._mean(x, arm_t)

    def probabilities(self, x: Any, arm: Any = None) -> Tensor:
        """The Boltzmann distribution over each request's candidates, (B, N)."""
        return torch.softmax(self.score(x, arm) / self.temperature, dim=1)

    def select(self, x: Any, k: int, generator: torch.Generator | None = None,
               arm: Any = None) -> tuple[Tensor, Tensor]:
        scores = self.score(x, arm)
        B, N = scores.shape
        check_k(k, N)
        probability = torch.softmax(scores / self.temperature, dim=1)
        first = torch.multinomial(probability, 1, generator=self._generator_for(generator))
        greedy = top_k(scores, N)  # g_1..g_N
        rank = (greedy == first).to(torch.int64).argmax(1, keepdim=True)  # m - 1
        in_order = probability.gather(1, greedy)
        below = torch.cumsum(in_order, 1)  # P(m <= q), q = 1..N
        # P(m >= q) summed from the tail, not as 1 - P(m < q), which cancels to 0 or less.
        above = torch.flip(torch.cumsum(torch.flip(in_order, [1]), 1), [1])
        rows = torch.arange(B, device=self.device).unsqueeze(1)
        slots = torch.arange(1, k, device=self.device).unsqueeze(0)  # slot p = 2..k, 0-based
        # Slot p (1-based p = slots + 1): g_(p-1) if m >= p, else g_p.
        later = rank >= slots
        index = torch.where(later, slots - 1, slots)
        rest = greedy[rows, index]
        rest_propensity = torch.where(later, above[:, 1:k], below[:, : k - 1])
        chosen = torch.cat([first, rest], 1)
        propensity = torch.cat([probability.gather(1, first), rest_propensity], 1)
        return chosen, propensity.to(DTYPE)
