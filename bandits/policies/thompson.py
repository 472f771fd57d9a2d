"""Linear Thompson sampling: score with a parameter drawn from the Gaussian posterior."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bandits.policies._base import DTYPE, LinearPolicy, check, check_k, top_k


class LinearThompsonSampling(LinearPolicy):
    """Thompson sampling for linear payoffs (Agrawal and Goyal, "Thompson sampling for
    contextual bandits with linear payoffs", ICML 2013): each request draws
    ``theta ~ N(theta_hat_a, v^2 A_a^-1)`` and scores ``x . theta``. The paper's
    ``v = R sqrt(24 d ln(1/delta) / epsilon)`` is a worst-case constant; ``v`` here is the
    exploration scale to set, like LinUCB's alpha.

    With one shared model (``n_arms=1``) every request draws one parameter vector for all
    its candidates, as in the paper; with per-arm models each (request, arm) pair draws
    its own.

    The probability that a draw puts an item at a slot has no closed form, so
    :meth:`select` estimates it: it draws ``propensity_samples`` more parameters per
    request and reports ``(1 + c) / (1 + S)``, where ``c`` counts the extra draws that put
    the shown item at its slot. Counting the draw that was used keeps the estimate
    above 0 (an inverse-propensity weight stays finite); its standard error is about
    ``sqrt(p (1 - p) / S)``.
    """

    name = "linear-thompson"

    def __init__(self, n_features: int, n_arms: int = 1, v: float = 1.0,
                 ridge: float = 1.0, propensity_samples: int = 256,
                 refactor_every: int = 100, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        check("v", v, v >= 0, "be >= 0")
        check("propensity_samples", propensity_samples, propensity_samples >= 0, "be >= 0")
        super().__init__(n_features, n_arms, ridge, refactor_every, seed, device)
        self.v = v
        self.propensity_samples = propensity_samples

    def _sample_scores(self, x: Tensor, arm: Tensor | None, draws: int,
                       generator: torch.Generator) -> Tensor:
        """Scores under ``draws`` posterior samples per request: (draws, B, N)."""
        # A^-1 = L L^T, so theta_hat + v L z has covariance v^2 A^-1.
        root = torch.linalg.cholesky(self.A_inv_)
        B, N, d = x.shape
        if arm is None:
            noise = torch.randn((draws, B, d), generator=generator, dtype=DTYPE,
                                device=self.device)
            theta = self.theta_[0] + self.v * noise @ root[0].T
            return torch.einsum("bnd,sbd->sbn", x, theta)
        noise = torch.randn((draws, B, N, d), generator=generator, dtype=DTYPE,
                            device=self.device)
        # x . (L z) = (L^T x) . z: rotate the features instead of the (B, N) draws.
        rotated = (x.unsqueeze(-2) @ root[arm]).squeeze(-2)
        return self._mean(x, arm) + self.v * (noise * rotated).sum(-1)

    def score(self, x: Any, arm: Any = None, generator: torch.Generator | None = None
              ) -> Tensor:
        """One posterior sample's score of every candidate, (B, N)."""
        x, arm_t = self._scoring_input(x, arm)
        return self._sample_scores(x, arm_t, 1, self._generator_for(generator))[0]

    def select(self, x: Any, k: int, generator: torch.Generator | None = None,
               arm: Any = None) -> tuple[Tensor, Tensor]:
        """The top k under one posterior draw per request, and the estimated probability
        of each shown item at its slot (see the class doc)."""
        x, arm_t = self._scoring_input(x, arm)
        check_k(k, x.shape[1])
        generator = self._generator_for(generator)
        chosen = top_k(self._sample_scores(x, arm_t, 1, generator)[0], k)
        hits = torch.zeros(chosen.shape, dtype=DTYPE, device=self.device)
        if self.propensity_samples:
            others = self._sample_scores(x, arm_t, self.propensity_samples, generator)
            ranked = torch.sort(others, dim=2, descending=True, stable=True).indices[..., :k]
            hits = (ranked == chosen).sum(0).to(DTYPE)
        return chosen, (1 + hits) / (1 + self.propensity_samples)
