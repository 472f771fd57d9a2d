"""MF with the pointwise binary cross-entropy: the naive baseline for implicit feedback.

Matrix factorization (Koren, Bell and Volinsky, "Matrix factorization techniques for
recommender systems", IEEE Computer 2009) fitted to clicks as binary labels, every unclicked
pair a negative: the "naive" estimator of Saito et al. (WSDM 2020), which learns
P(click) = P(exposed) x P(relevant) and so ranks what was shown often above what is
relevant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.data import Batch
from models.recommenders.base import FactorizationModel


def bce_loss(logits: torch.Tensor, labels: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pairs of ``weight * -[y log p + (1 - y) log(1 - p)]``, ``p = sigmoid(s)``
    (weights default to 1)."""
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weights)


class MF(FactorizationModel):
    """See the module doc; pointwise batches (:mod:`models.data`)."""

    kind = "mf"
    mode = "pointwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = batch["users"], batch["items"]
        loss = bce_loss(self(users, items), batch["labels"], batch.get("weights"))
        return loss, self.penalty(users, items)
