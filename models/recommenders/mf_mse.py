"""MF-MSE: MF fitted to clicks with the squared loss, every pair weighted alike: the naive
baseline of the squared form that Rel-MF debiases (Saito, Yaginuma, Nishino, Sakata and
Nakata, "Unbiased Recommender Learning from Missing-Not-At-Random Implicit Feedback",
WSDM 2020, where it is the "MF" of the experiments).

It is :func:`models.recommenders.rel_mf.rel_mf_loss` with every propensity 1, kept as a model
of its own so that a comparison of the two isolates the propensity weighting: same score,
same loss, same data, the weights the only difference.
"""

from __future__ import annotations

import torch

from models.data import Batch
from models.recommenders.base import FactorizationModel
from models.recommenders.rel_mf import rel_mf_loss


class MFMSE(FactorizationModel):
    """See the module doc; pointwise batches (:mod:`models.data`), propensities ignored."""

    kind = "mf-mse"
    mode = "pointwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, labels = batch["users"], batch["items"], batch["labels"]
        loss = rel_mf_loss(self(users, items), labels, torch.ones_like(labels), clip=1.0,
                           form="squared", weights=batch.get("weights"))
        return loss, self.penalty(users, items)
