"""The inverse-propensity-weighted pairwise loss, and the ranker trained with it.

Joachims, Swaminathan and Schnabel ("Unbiased Learning-to-Rank with Biased Feedback", WSDM
2017), Propensity SVM-Rank: the rank of a relevant item, ``1 + sum_{j != i} [s_j > s_i]``,
is bounded by a sum of pairwise surrogates, and summing that bound over the clicked items,
each weighted by ``1 / theta`` of the position it was shown at, estimates without bias the
sum over relevant items of their rank (``E[c_i / theta_i] = r_i`` under a position-based
model)::

    loss(list) = sum_{i clicked} label_i / theta_i * sum_{j != i, real} phi(s_i - s_j)

Every other slot of the list is a j, clicked or not, as in the paper: the bound is on the
rank among all candidates. ``phi`` is the hinge ``max(0, 1 - d)`` of the paper's SVM or the
logistic ``log(1 + exp(-d))``, a smooth bound (up to a factor ``log 2``) that trains better
with gradient steps. With ``ips=False`` it is the naive pairwise click ranker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from models.ultr.data import Batch
from models.ultr.listwise import inverse_propensity_weights
from models.ultr.ranker import ListRanker

Surrogate = Literal["logistic", "hinge"]


def ips_pairwise_loss(scores: torch.Tensor, labels: torch.Tensor,
                      propensities: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, form: Surrogate = "logistic",
                      max_weight: float | None = None) -> torch.Tensor:
    """Mean over lists of ``sum_i label_i / theta_i sum_{j != i} phi(s_i - s_j)`` (module
    doc); tensors (B, L), ``mask`` the real slots (all when None), propensities 1 when
    None, ``max_weight`` caps ``1 / theta``."""
    if form == "logistic":
        surrogate = F.softplus
    elif form == "hinge":
        surrogate = F.relu
    else:
        raise ValueError(f"form={form!r} must be 'logistic' or 'hinge'")
    # phi(d) = softplus(-d) or relu(1 - d), d = s_i - s_j: broadcast (B, L, 1) - (B, 1, L).
    shift = 0.0 if form == "logistic" else 1.0
    pairs = surrogate(shift - (scores.unsqueeze(-1) - scores.unsqueeze(-2)))
    length = scores.shape[-1]
    valid = ~torch.eye(length, dtype=torch.bool, device=scores.device)
    if mask is not None:
        valid = valid & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    per_slot = (pairs * valid).sum(-1)
    weights = labels if propensities is None \
        else labels * inverse_propensity_weights(propensities, max_weight)
    return (weights * per_slot).sum(-1).mean()


class IPSPairwise(ListRanker):
    """See the module doc; batches from :class:`models.ultr.data.ListDataModule`.
    ``form``: the pairwise surrogate; ``ips=False`` ignores the propensities."""

    kind = "ips-pairwise"

    def __init__(self, n_features: int, hidden: Sequence[int] = (32,), lr: float = 1e-2,
                 weight_decay: float = 0.0, ips: bool = True, form: Surrogate = "logistic",
                 max_weight: float | None = None, seed: int = 0) -> None:
        super().__init__(n_features, hidden, lr, weight_decay, seed)
        if form not in ("logistic", "hinge"):
            raise ValueError(f"form={form!r} must be 'logistic' or 'hinge'")
        if max_weight is not None and not max_weight >= 1:
            raise ValueError(f"max_weight={max_weight} must be None or >= 1")
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        propensities = batch["propensities"] if self.hparams["ips"] else None
        return {"loss": ips_pairwise_loss(self(batch["features"]), batch["labels"],
                                          propensities, batch["mask"], self.hparams["form"],
                                          self.hparams["max_weight"])}
