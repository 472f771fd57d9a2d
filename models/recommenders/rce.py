"""R-CE: MF trained with the reweighted cross-entropy (Wang, Feng, He, Nie and Chua,
"Denoising Implicit Feedback for Recommendation", WSDM 2021).

Where T-CE drops the hardest positives, R-CE only turns them down: each positive pair's
binary cross-entropy is weighted by the model's own predicted probability raised to beta,

    L_R-CE = mean over pairs of  w_ui * BCE(s_ui, y_ui),
    w_ui = p_ui^beta for a positive, 1 for a negative,   p_ui = sigmoid(s_ui),

with the weight held constant in the gradient (detached). A noisy positive keeps a low
score, so its weight, and the push it gives, stay small; beta in [0, 1] sets how hard
(beta = 0 is plain BCE).

``reweight_negatives`` also weights each negative by (1 - p_ui)^beta, as the authors' code
(github.com/WenjieWWJ/DenoisingRec) does, for the unlabeled positives among the sampled
negatives; off by default, the paper's loss as stated above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.data import Batch
from models.recommenders.base import FactorizationModel


def reweighted_bce_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float,
                        weights: torch.Tensor | None = None,
                        reweight_negatives: bool = False) -> torch.Tensor:
    """Mean over pairs of ``weight * w * BCE`` with ``w = y p^beta + (1 - y) v``,
    ``p = sigmoid(s)`` detached, ``v = (1 - p)^beta`` if ``reweight_negatives`` else 1;
    weights default to 1."""
    per_pair = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p = torch.sigmoid(logits.detach())
    negative = (1.0 - p).pow(beta) if reweight_negatives else torch.ones_like(p)
    confidence = labels * p.pow(beta) + (1.0 - labels) * negative
    weighted = confidence * per_pair
    return (weighted if weights is None else weights * weighted).mean()


class RCE(FactorizationModel):
    """See the module doc; pointwise batches (:mod:`models.data`)."""

    kind = "r-ce"
    mode = "pointwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, beta: float = 0.25,
                 reweight_negatives: bool = False, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        if beta < 0:
            raise ValueError(f"beta={beta} must be >= 0")
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = batch["users"], batch["items"]
        loss = reweighted_bce_loss(self(users, items), batch["labels"], self.hparams["beta"],
                                   batch.get("weights"), self.hparams["reweight_negatives"])
        return loss, self.penalty(users, items)
