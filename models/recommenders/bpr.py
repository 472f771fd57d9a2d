"""BPR: Bayesian personalized ranking (Rendle, Freudenthaler, Gantner and Schmidt-Thieme,
"BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009).

A clicked item should score above an item the user did not click: maximize
``log sigmoid(s(u, i) - s(u, j))`` over triples (u, clicked i, sampled j). Like MF it takes
clicks at face value, so exposure bias passes straight into the ranking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.data import Batch
from models.recommenders.base import FactorizationModel


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(positive - negative)``; ``positive`` (n,), ``negative`` (n,)
    or (n, m) for m negatives per positive."""
    if negative.dim() == positive.dim() + 1:
        positive = positive.unsqueeze(-1)
    # softplus(-x) is -log sigmoid(x) without overflow for large |x|.
    return F.softplus(negative - positive).mean()


class BPR(FactorizationModel):
    """See the module doc; pairwise batches (:mod:`models.data`)."""

    kind = "bpr"
    mode = "pairwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, negatives = batch["users"], batch["items"], batch["negatives"]
        loss = bpr_loss(self(users, items), self(users, negatives))
        return loss, self.penalty(users, items, negatives)
