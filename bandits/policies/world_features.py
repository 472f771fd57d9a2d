"""User x item features for the linear policies, and a :class:`ranking.policy.BatchPolicy`
over them, so that a simulator (or any caller with catalog indices) can drive a policy."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from bandits.policies._base import DTYPE, as_tensor, check
from ranking.policy import Context


class CrossFeatures:
    """Features of (user, item) pairs from a user table (n_users, du) and an item table
    (n_items, di).

    - ``"outer"`` (default): the flattened outer product ``[u, 1] (x) [v, 1]``, of
      dimension (du + 1)(di + 1). It holds every ``u_i v_j`` (so a bilinear affinity
      ``u^T W v`` is linear in it), the user and item features themselves and a bias:
      the user-article cross features of Li et al. (WWW 2010) and of Chu et al.,
      "A case study of behavior-driven conjoint analysis on Yahoo! Front Page Today
      Module", KDD 2009.
    - ``"hadamard"``: ``[u * v, v, 1]`` (du must equal di), dimension 2 di + 1: a plain dot
      product ``u . v`` per latent factor plus the item's own features, cheaper when du
      and di are large.
    """

    def __init__(self, user_features: Any, item_features: Any,
                 kind: Literal["outer", "hadamard"] = "outer",
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.users = as_tensor(np.asarray(user_features), self.device)
        self.items = as_tensor(np.asarray(item_features), self.device)
        check("user_features.ndim", self.users.ndim, self.users.ndim == 2, "be 2")
        check("item_features.ndim", self.items.ndim, self.items.ndim == 2, "be 2")
        check("kind", kind, kind in ("outer", "hadamard"), "be 'outer' or 'hadamard'")
        if kind == "hadamard":
            du, di = self.users.shape[1], self.items.shape[1]
            check("user_features.shape[1]", du, du == di,
                  f"equal item_features.shape[1]={di} for kind='hadamard'")
        self.kind = kind

    @property
    def n_features(self) -> int:
        du, di = self.users.shape[1], self.items.shape[1]
        return (du + 1) * (di + 1) if self.kind == "outer" else 2 * di + 1

    def __call__(self, users: Any, items: Any) -> Tensor:
        """Features of user ``users[b]`` with each item ``items[b, n]``: (B, N, D). Pass
        ``users`` (n,) and ``items`` (n,) for one item per user: (n, D)."""
        users = torch.as_tensor(np.asarray(users), dtype=torch.int64, device=self.device)
        items = torch.as_tensor(np.asarray(items), dtype=torch.int64, device=self.device)
        single = items.ndim == 1
        if single:
            items = items.unsqueeze(1)
        u = self.users[users].unsqueeze(1).expand(-1, items.shape[1], -1)
        v = self.items[items]
        one = u.new_ones(u.shape[:-1] + (1,))
        if self.kind == "outer":
            ue, ve = torch.cat([u, one], -1), torch.cat([v, one], -1)
            x = (ue.unsqueeze(-1) * ve.unsqueeze(-2)).flatten(-2)
        else:
            x = torch.cat([u * v, v, one], -1)
        return x[:, 0] if single else x


class FeaturePolicy:
    """A :class:`ranking.policy.BatchPolicy` over catalog indices: builds the features of
    every (user, candidate) pair with ``features`` and lets ``policy`` select.

    ``per_item_arms``: pass the item index as the arm (for a policy with one model per
    item, ``n_arms`` = the catalog size). :meth:`update` learns from shown slates. The
    torch generator of each call is seeded from the caller's numpy ``rng``, so a seeded
    simulation stays reproducible.
    """

    #: The wrapped policy's statistics change under update().
    thread_safe = False

    def __init__(self, policy: Any, features: CrossFeatures, name: str | None = None,
                 per_item_arms: bool = False) -> None:
        self.policy = policy
        self.features = features
        self.name = name or policy.name
        self.per_item_arms = per_item_arms
        self.n_users = features.users.shape[0]
        self.n_items = features.items.shape[0]

    def rank_batch(self, users: np.ndarray, candidates: np.ndarray, k: int,
                   rng: np.random.Generator, context: Context | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        users, candidates = np.asarray(users), np.asarray(candidates)
        _check_range("users", users, self.n_users)
        _check_range("candidates", candidates, self.n_items)
        x = self.features(users, candidates)
        generator = torch.Generator(device=self.features.device).manual_seed(
            int(rng.integers(0, 2**63 - 1)))
        arm = candidates if self.per_item_arms else None
        chosen, propensity = self.policy.select(x, k, generator, arm=arm)
        chosen = chosen.cpu().numpy()
        return np.take_along_axis(candidates, chosen, axis=1), propensity.cpu().numpy()

    def update(self, users: np.ndarray, slates: np.ndarray, rewards: np.ndarray,
               weight: np.ndarray | None = None) -> FeaturePolicy:
        """Learn from shown slates: users (n,), slates (n, k) item indices, rewards (n, k)
        (clicks), optional importance weights (n, k) (e.g. 1 / examination of the slot)."""
        users, slates = np.asarray(users), np.asarray(slates)
        rewards = np.asarray(rewards, dtype=np.float64)
        check("rewards.shape", rewards.shape, rewards.shape == slates.shape,
              f"be {slates.shape} (the slates' shape)")
        x = self.features(users, slates).reshape(-1, self.policy.n_features)
        flat_weight = None if weight is None else torch.as_tensor(
            np.asarray(weight, dtype=np.float64).reshape(-1), dtype=DTYPE)
        arm = slates.reshape(-1) if self.per_item_arms else None
        self.policy.partial_fit(x, torch.as_tensor(rewards.reshape(-1), dtype=DTYPE),
                                flat_weight, arm=arm)
        return self


def _check_range(field: str, indices: np.ndarray, n: int) -> None:
    bad = (indices < 0) | (indices >= n)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{field}[{', '.join(map(str, where))}]={indices[where]} must be in "
                         f"[0, {n})")
