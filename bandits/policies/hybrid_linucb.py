"""LinUCB with hybrid linear models: a part shared by all arms plus a part per arm."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bandits.policies._base import (
    _BLOCK,
    DTYPE,
    LinearPolicy,
    RidgeStatistics,
    check,
    loaded,
    spd_inverse,
)


class HybridLinUCB(LinearPolicy):
    """LinUCB with hybrid linear models (Li, Chu, Langford and Schapire, "A contextual-bandit
    approach to personalized news article recommendation", WWW 2010, Algorithm 2): the
    reward of arm a is ``z . beta + x . theta_a``, with ``beta`` shared by all arms and
    ``theta_a`` the arm's own. Each row of features is ``[z, x]``: the first ``n_shared``
    columns are ``z``, the next ``n_arm_features`` are ``x``.

    With ``A_0 = lambda I + sum z z^T - sum_a B_a^T A_a^-1 B_a`` (``B_a = sum x z^T``) and
    ``v = B_a^T A_a^-1 x``, the variance of the estimate is the paper's ``s``, written here
    as ``(z - v)^T A_0^-1 (z - v) + x^T A_a^-1 x``, and the score is the estimate plus
    ``alpha sqrt(s)``.

    Updates are batched: the touched arms' old terms of ``sum_a B_a^T A_a^-1 B_a`` come
    out, their statistics take the rows (``A_a^-1`` by Woodbury or a refactorization, as
    in :class:`bandits.policies._base.RidgeStatistics`), and their new terms go back in;
    every ``refactor_every`` updates that sum is recomputed over all arms.

    Learned: ``A_``, ``A_inv_``, ``b_``, ``since_refactor_`` per arm (as in LinUCB, over
    ``x``), ``B_`` (K, d, k), ``A0_`` (k, k) (``lambda I + sum z z^T``), ``b0_`` (k,),
    ``coupling_`` (k, k) and ``coupling_b_`` (k,) (the sums over arms of
    ``B_a^T A_a^-1 B_a`` and ``B_a^T A_a^-1 b_a``), ``beta_`` (k,), ``theta_`` (K, d).
    """

    name = "hybrid-linucb"

    def __init__(self, n_shared: int, n_arm_features: int, n_arms: int, alpha: float = 1.0,
                 ridge: float = 1.0, refactor_every: int = 100, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        check("alpha", alpha, alpha >= 0, "be >= 0")
        check("n_shared", n_shared, n_shared >= 1, "be >= 1")
        check("n_arm_features", n_arm_features, n_arm_features >= 1, "be >= 1")
        super().__init__(n_shared + n_arm_features, n_arms, ridge, refactor_every, seed,
                         device)
        # The per-arm statistics cover x only.
        self._stats = RidgeStatistics(n_arms, n_arm_features, ridge, refactor_every,
                                      self.device)
        self.n_shared = n_shared
        self.n_arm_features = n_arm_features
        self.alpha = alpha
        k, d = n_shared, n_arm_features
        self.B_ = torch.zeros(n_arms, d, k, dtype=DTYPE, device=self.device)
        self.A0_ = ridge * torch.eye(k, dtype=DTYPE, device=self.device)
        self.b0_ = torch.zeros(k, dtype=DTYPE, device=self.device)
        self.coupling_ = torch.zeros(k, k, dtype=DTYPE, device=self.device)
        self.coupling_b_ = torch.zeros(k, dtype=DTYPE, device=self.device)
        self.updates_since_sum_ = 0
        self._cache: tuple[Tensor, Tensor, Tensor] | None = None

    def _solved(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_0^-1, beta, theta) from the current statistics."""
        if self._cache is None:
            A0_inv = spd_inverse(self.A0_ - self.coupling_)
            beta = A0_inv @ (self.b0_ - self.coupling_b_)
            theta = (self.A_inv_ @ (self.b_ - self.B_ @ beta).unsqueeze(-1)).squeeze(-1)
            self._cache = (A0_inv, beta, theta)
        return self._cache

    @property
    def beta_(self) -> Tensor:
        return self._solved()[1]

    @property
    def theta_(self) -> Tensor:
        return self._solved()[2]

    def _coupling(self, arms: Tensor) -> tuple[Tensor, Tensor]:
        """``sum B_a^T A_a^-1 B_a`` and ``sum B_a^T A_a^-1 b_a`` over these arms."""
        B = self.B_[arms]
        left = B.transpose(1, 2) @ self.A_inv_[arms]
        return (left @ B).sum(0), (left @ self.b_[arms].unsqueeze(-1)).squeeze(-1).sum(0)

    def score(self, x: Any, arm: Any = None) -> Tensor:
        """The upper confidence bound of every candidate, (B, N); ``arm`` is required."""
        x, arm_t = self._scoring_input(x, arm)
        A0_inv, beta, theta = self._solved()
        k = self.n_shared
        B, N, _ = x.shape
        d = self.n_arm_features
        if arm_t is None:  # one arm: the statistics of arm 0 for every candidate
            arm_t = torch.zeros((B, N), dtype=torch.int64, device=self.device)
        out = x.new_empty((B, N))
        step = max(1, _BLOCK // max(1, N * d * max(d, k)))
        for start in range(0, B, step):  # slices of requests, so the gathers fit
            block = slice(start, start + step)
            z, xa, a = x[block, :, :k], x[block, :, k:], arm_t[block]
            u = (self.A_inv_[a] @ xa.unsqueeze(-1)).squeeze(-1)
            v = (self.B_[a].transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
            gap = z - v
            variance = torch.einsum("bnk,kl,bnl->bn", gap, A0_inv, gap) + (xa * u).sum(-1)
            mean = z @ beta + (xa * theta[a]).sum(-1)
            out[block] = mean + self.alpha * variance.clamp_min(0).sqrt()
        return out

    def mean(self, x: Any, arm: Any = None) -> Tensor:
        x, arm_t = self._scoring_input(x, arm)
        _, beta, theta = self._solved()
        k = self.n_shared
        if arm_t is None:
            return x[..., :k] @ beta + x[..., k:] @ theta[0]
        return x[..., :k] @ beta + (x[..., k:] * theta[arm_t]).sum(-1)

    def partial_fit(self, x: Any, reward: Any, weight: Any = None, arm: Any = None
                    ) -> HybridLinUCB:
        x, reward, weight, arm_t = self._update_input(x, reward, weight, arm)
        if not len(x):
            return self
        k = self.n_shared
        z, xa = x[:, :k], x[:, k:]
        touched = torch.unique(arm_t)
        old, old_b = self._coupling(touched)
        self._stats.update(xa, reward, weight, arm_t)
        step = max(1, _BLOCK // (self.n_arm_features * k))
        for start in range(0, len(x), step):  # slices of a large batch, not one per event
            rows = slice(start, start + step)
            self.B_.index_add_(0, arm_t[rows], (weight[rows, None, None] * xa[rows, :, None])
                               * z[rows, None, :])
        scaled = z * weight.sqrt().unsqueeze(-1)
        self.A0_ += scaled.T @ scaled
        self.b0_ += z.T @ (weight * reward)
        self.updates_since_sum_ += 1
        if self.updates_since_sum_ >= self.refactor_every:
            # Adding and removing terms accumulates rounding: start the sums afresh.
            everything = torch.arange(self.n_arms, device=self.device)
            self.coupling_, self.coupling_b_ = self._coupling(everything)
            self.updates_since_sum_ = 0
        else:
            new, new_b = self._coupling(touched)
            self.coupling_ += new - old
            self.coupling_b_ += new_b - old_b
        self.n_updates_ += len(x)
        self._cache = None
        return self

    def refactor(self) -> None:
        self._stats.refactor()
        everything = torch.arange(self.n_arms, device=self.device)
        self.coupling_, self.coupling_b_ = self._coupling(everything)
        self.updates_since_sum_ = 0
        self._cache = None

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        state.update(B=self.B_.clone(), A0=self.A0_.clone(), b0=self.b0_.clone(),
                     coupling=self.coupling_.clone(), coupling_b=self.coupling_b_.clone(),
                     updates_since_sum=torch.tensor(self.updates_since_sum_))
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> HybridLinUCB:
        super().load_state_dict(state)
        values = loaded(state, {"B": self.B_, "A0": self.A0_, "b0": self.b0_,
                                "coupling": self.coupling_, "coupling_b": self.coupling_b_})
        self.B_, self.A0_, self.b0_ = values["B"], values["A0"], values["b0"]
        self.coupling_, self.coupling_b_ = values["coupling"], values["coupling_b"]
        self.updates_since_sum_ = int(state["updates_since_sum"])
        self._cache = None
        return self
