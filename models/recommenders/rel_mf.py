"""Rel-MF: MF trained with the unbiased pointwise loss for missing-not-at-random implicit
feedback (Saito, Yaginuma, Nishino, Sakata and Nakata, "Unbiased Recommender Learning from
Missing-Not-At-Random Implicit Feedback", WSDM 2020).

A click needs exposure and relevance: Y = O * R with P(O = 1) = theta (the propensity).
Weighting the positive term by Y / theta and the negative term by 1 - Y / theta gives a loss
whose expectation over exposures is the loss against relevance itself, so a rarely shown
item that does get clicked counts for its relevance, not its exposure. Small propensities are
clipped at a floor: the estimator's variance grows with 1 / theta, and the clip trades a
little bias for much less of it.

Two forms of the per-pair loss: ``"squared"``, ``(1 - p)^2`` and ``p^2`` with
``p = sigmoid(s)``, the form of the authors' experiments and the default; ``"cross-entropy"``,
``-log p`` and ``-log(1 - p)``. With a weight 1 / theta > 1 on a positive, its negative term
has weight 1 - 1 / theta < 0: the squared form then bottoms out at p = 1, while the
cross-entropy form falls without bound as the score grows, so it leans on the weight decay
and early stopping to stay finite.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from models.data import Batch
from models.recommenders.base import FactorizationModel

LossForm = Literal["squared", "cross-entropy"]


def rel_mf_loss(logits: torch.Tensor, labels: torch.Tensor, propensities: torch.Tensor,
                clip: float = 0.1, form: LossForm = "squared",
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pairs of ``weight * [(Y/theta) d1(s) + (1 - Y/theta) d0(s)]`` with
    ``theta = max(propensity, clip)``; ``d1, d0`` are ``(1 - p)^2, p^2`` (squared) or
    ``-log p, -log(1 - p)`` (cross-entropy), ``p = sigmoid(s)``; weights default to 1."""
    weight = labels / propensities.clamp(min=clip, max=1.0)
    if form == "squared":
        p = torch.sigmoid(logits)
        positive, negative = (1.0 - p).square(), p.square()
    elif form == "cross-entropy":
        # -log p = softplus(-s) and -log(1 - p) = softplus(s), stable for any s.
        positive, negative = F.softplus(-logits), F.softplus(logits)
    else:
        raise ValueError(f"form={form!r} must be 'squared' or 'cross-entropy'")
    per_pair = weight * positive + (1.0 - weight) * negative
    return (per_pair if weights is None else weights * per_pair).mean()


class RelMF(FactorizationModel):
    """See the module doc; pointwise batches with propensities (:mod:`models.data`).
    ``clip`` is the propensity floor, ``form`` the per-pair loss. Its naive counterpart,
    the same loss with every propensity 1, is :class:`models.recommenders.mf_mse.MFMSE`."""

    kind = "rel-mf"
    mode = "pointwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, clip: float = 0.1, form: LossForm = "squared",
                 seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        if not 0 < clip <= 1:
            raise ValueError(f"clip={clip} must be in (0, 1]")
        if form not in ("squared", "cross-entropy"):
            raise ValueError(f"form={form!r} must be 'squared' or 'cross-entropy'")
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = batch["users"], batch["items"]
        loss = rel_mf_loss(self(users, items), batch["labels"], batch["propensities"],
                           self.hparams["clip"], self.hparams["form"], batch.get("weights"))
        return loss, self.penalty(users, items)
