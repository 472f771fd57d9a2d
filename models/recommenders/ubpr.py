"""UBPR: BPR made unbiased for missing-not-at-random clicks (Saito, "Unbiased Pairwise
Learning from Biased Implicit Feedback", ICTIR 2020), the pairwise counterpart of Rel-MF.

A click is exposure times relevance, Y = O * R with P(O = 1) = theta. The ideal pairwise
loss compares relevant items i with irrelevant items j of a user; with clicks alone, the
weighted pair loss

    (Y_ui / theta_ui) * (1 - Y_uj / theta_uj) * l(s_ui - s_uj),   l(x) = -log sigmoid(x),

summed over all items i and j, has that ideal loss as its expectation over exposures. A
clicked j gets weight 1 - 1/theta_uj <= 0: it was clicked, so it is not evidence of
irrelevance, and for a rarely exposed j the weight says that it probably is relevant.

Computed on pairwise batches (:mod:`models.data`): the batch's rows are the clicked i, its
sampled negatives are drawn uniformly from the user's unclicked items (Y_uj = 0, weight 1),
and one clicked j' is drawn from the user's other training positives (weight
1 - 1/theta_uj'). With rho_u the share of the catalog user u clicked, the sum over all j is
estimated by (1 - rho_u) times the mean over the unclicked draws plus rho_u times the term
of the clicked one. Propensities are clipped at ``clip`` (Saito's clipping: it bounds the
weights' variance, and keeps the negative weights from dominating).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.data import Batch
from models.recommenders.positives import PositivePools


def ubpr_loss(positive: torch.Tensor, positive_propensity: torch.Tensor,
              negatives: torch.Tensor, clicked: torch.Tensor, clicked_propensity: torch.Tensor,
              clicked_share: torch.Tensor, clip: float = 0.1) -> torch.Tensor:
    """Mean over rows of ``(1 / theta_i) * [(1 - rho) * mean_j l(s_i - s_j) + rho * (1 -
    1 / theta_j') * l(s_i - s_j')]`` with ``l(x) = softplus(-x)`` and every theta clipped at
    ``clip``. Shapes: ``positive``, ``positive_propensity``, ``clicked``,
    ``clicked_propensity``, ``clicked_share`` (n,); ``negatives`` (n, m)."""
    weight_i = 1.0 / positive_propensity.clamp(min=clip, max=1.0)
    unclicked = F.softplus(negatives - positive.unsqueeze(-1)).mean(-1)
    weight_j = 1.0 - 1.0 / clicked_propensity.clamp(min=clip, max=1.0)
    other = weight_j * F.softplus(clicked - positive)
    return (weight_i * ((1.0 - clicked_share) * unclicked + clicked_share * other)).mean()


class UBPR(PositivePools):
    """See the module doc; pairwise batches with propensities. ``clip`` is the propensity
    floor."""

    kind = "ubpr"
    mode = "pairwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, clip: float = 0.1, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        if not 0 < clip <= 1:
            raise ValueError(f"clip={clip} must be in (0, 1]")
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, negatives = batch["users"], batch["items"], batch["negatives"]
        drawn = self.draw_positions(users, 1).squeeze(1)
        clicked = self.positives[drawn]
        loss = ubpr_loss(self(users, items), batch["propensities"], self(users, negatives),
                         self(users, clicked), self.positive_propensities[drawn],
                         self.count[users] / self.n_items, self.hparams["clip"])
        return loss, self.penalty(users, items, negatives, clicked)
