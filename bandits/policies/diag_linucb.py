"""Diag-LinUCB: LinUCB with diagonal statistics, which add up across shards."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bandits.policies._base import DTYPE, LinearPolicy, check, check_ridge_shape, loaded


class DiagLinUCB(LinearPolicy):
    """LinUCB with a diagonal covariance (Yi, Wang, Hong, Chen, Chi et al., "Online
    Matching: A Real-time Bandit System for Large-scale Recommendations", RecSys 2023):
    per arm and feature only the sums ``sum w x_j^2`` and ``sum w r x_j`` are kept, so::

        theta_aj = sum w r x_j / (lambda + sum w x_j^2)
        score(x, a) = x . theta_a + alpha * sqrt(sum_j x_j^2 / (lambda + sum w x_j^2))

    Every statistic is a plain sum over events, so learners that saw disjoint parts of a
    stream (Kafka partitions) combine by adding them: :meth:`merge` gives exactly the
    learner that saw both parts. An update costs O(n d) and scoring O(B N d), with no
    matrix inverse to maintain.

    Learned: ``xx_`` (K, d), ``xr_`` (K, d), ``weight_`` (K,) (the summed weights, for
    monitoring), ``n_updates_`` (rows seen).
    """

    name = "diag-linucb"

    def __init__(self, n_features: int, n_arms: int = 1, alpha: float = 1.0,
                 ridge: float = 1.0, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        check("alpha", alpha, alpha >= 0, "be >= 0")
        check_ridge_shape(n_features, n_arms, ridge)
        # No matrix statistics: LinearPolicy's constructor would allocate K d x d of them.
        self.n_features = n_features
        self.n_arms = n_arms
        self.alpha = alpha
        self.ridge = ridge
        self.seed = seed
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        self.xx_ = torch.zeros(n_arms, n_features, dtype=DTYPE, device=self.device)
        self.xr_ = torch.zeros(n_arms, n_features, dtype=DTYPE, device=self.device)
        self.weight_ = torch.zeros(n_arms, dtype=DTYPE, device=self.device)
        self.n_updates_ = 0

    @property
    def theta_(self) -> Tensor:
        return self.xr_ / (self.ridge + self.xx_)

    def _mean(self, x: Tensor, arm: Tensor | None) -> Tensor:
        theta = self.theta_
        return x @ theta[0] if arm is None else (x * theta[arm]).sum(-1)

    def _width(self, x: Tensor, arm: Tensor | None) -> Tensor:
        variance = 1 / (self.ridge + self.xx_)
        spread = x.square() @ variance[0] if arm is None else (x.square() * variance[arm]).sum(-1)
        return spread.sqrt()

    def score(self, x: Any, arm: Any = None) -> Tensor:
        """The upper confidence bound of every candidate, (B, N)."""
        x, arm_t = self._scoring_input(x, arm)
        return self._mean(x, arm_t) + self.alpha * self._width(x, arm_t)

    def partial_fit(self, x: Any, reward: Any, weight: Any = None, arm: Any = None
                    ) -> DiagLinUCB:
        x, reward, weight, arm_t = self._update_input(x, reward, weight, arm)
        self.xx_.index_add_(0, arm_t, x.square() * weight.unsqueeze(-1))
        self.xr_.index_add_(0, arm_t, x * (weight * reward).unsqueeze(-1))
        self.weight_.index_add_(0, arm_t, weight)
        self.n_updates_ += len(x)
        return self

    def refactor(self) -> None:
        """Nothing to refactor: the statistics are the sums themselves."""

    def merge(self, other: DiagLinUCB) -> DiagLinUCB:
        """Add ``other``'s statistics to this learner's (in place; returns self)."""
        check("other", type(other).__name__, isinstance(other, DiagLinUCB), "be a DiagLinUCB")
        for field in ("n_features", "n_arms", "ridge"):
            mine, theirs = getattr(self, field), getattr(other, field)
            check(f"other.{field}", theirs, theirs == mine, f"equal this learner's {mine}")
        self.xx_ += other.xx_.to(self.device)
        self.xr_ += other.xr_.to(self.device)
        self.weight_ += other.weight_.to(self.device)
        self.n_updates_ += other.n_updates_
        return self

    @classmethod
    def merged(cls, learners: list[DiagLinUCB]) -> DiagLinUCB:
        """A new learner holding the sum of these learners' statistics (hyper-parameters
        from the first)."""
        check("learners", len(learners), len(learners) >= 1, "hold at least one learner")
        first = learners[0]
        total = cls(first.n_features, first.n_arms, first.alpha, first.ridge, first.seed,
                    first.device)
        for learner in learners:
            total.merge(learner)
        return total

    def state_dict(self) -> dict[str, Tensor]:
        return {"xx": self.xx_.clone(), "xr": self.xr_.clone(), "weight": self.weight_.clone(),
                "n_updates": torch.tensor(self.n_updates_, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Tensor]) -> DiagLinUCB:
        values = loaded(state, {"xx": self.xx_, "xr": self.xr_, "weight": self.weight_})
        self.xx_, self.xr_, self.weight_ = values["xx"], values["xr"], values["weight"]
        self.n_updates_ = int(state["n_updates"])
        return self

