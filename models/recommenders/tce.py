"""T-CE: MF trained with the truncated cross-entropy (Wang, Feng, He, Nie and Chua, "Denoising
Implicit Feedback for Recommendation", WSDM 2021).

A click on an item the user does not like is hard to fit: early in training, such noisy
positives carry the largest losses. T-CE leaves them out. In each batch the share eps(T) of
the positive pairs with the largest binary cross-entropy is dropped,

    L_T-CE = sum over kept pairs of BCE(s_ui, y_ui) / number of kept pairs,

and the drop rate grows linearly with the number of optimizer steps T until it reaches its
ceiling eps_max after N steps:

    eps(T) = eps_max * min(T / N, 1).

The ramp lets the model first learn the easy, mostly clean patterns, so that by the time
pairs are dropped their losses say which are noisy. Negative pairs are never dropped.

The drop rate here is a share of the batch's positives, so eps_max reads as the share of
positives believed noisy. The authors' code (github.com/WenjieWWJ/DenoisingRec) drops
eps(T) times the whole batch, negatives included, from the positives, which with one
negative per positive removes twice as many. Validation uses eps_max throughout: with the
ramp's current rate the monitored loss would fall for as long as the rate grows, and early
stopping would compare epochs that drop different shares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.data import Batch
from models.recommenders.base import FactorizationModel


def drop_rate_schedule(step: int, max_drop_rate: float, warmup_steps: int) -> float:
    """``eps(T) = max_drop_rate * min(step / warmup_steps, 1)``; the ceiling from the
    start when ``warmup_steps`` is 0."""
    if warmup_steps <= 0:
        return max_drop_rate
    return max_drop_rate * min(step / warmup_steps, 1.0)


def truncated_bce_loss(logits: torch.Tensor, labels: torch.Tensor, drop_rate: float,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(weight * BCE * kept) / sum(kept)``: the binary cross-entropy of the pairs kept
    after dropping the ``floor(drop_rate * positives)`` positive pairs (label > 0) of
    largest BCE; weights default to 1. With ``drop_rate`` 0 it is the plain mean BCE."""
    per_pair = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    kept = torch.ones_like(per_pair)
    positive = labels > 0
    n_drop = int(drop_rate * int(positive.sum()))
    if n_drop > 0:
        # Negatives rank below every positive, so only positives can be among the largest.
        ranked = torch.where(positive, per_pair.detach(), float("-inf"))
        kept[torch.topk(ranked, n_drop).indices] = 0.0
    weighted = per_pair if weights is None else weights * per_pair
    return (weighted * kept).sum() / kept.sum()


class TCE(FactorizationModel):
    """See the module doc; pointwise batches (:mod:`models.data`). ``max_drop_rate`` is
    eps_max, ``warmup_steps`` the N optimizer steps over which the drop rate grows."""

    kind = "t-ce"
    mode = "pointwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, max_drop_rate: float = 0.2,
                 warmup_steps: int = 1000, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        if not 0 <= max_drop_rate < 1 or warmup_steps < 0:
            raise ValueError(f"max_drop_rate={max_drop_rate}, warmup_steps={warmup_steps}: "
                             "need 0 <= max_drop_rate < 1 and warmup_steps >= 0")
        self.save_hyperparameters()

    def drop_rate(self) -> float:
        """The rate this step drops: the ramp's while training, the ceiling otherwise."""
        ceiling = self.hparams["max_drop_rate"]
        if not self.training:
            return ceiling
        return drop_rate_schedule(self.global_step, ceiling, self.hparams["warmup_steps"])

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = batch["users"], batch["items"]
        loss = truncated_bce_loss(self(users, items), batch["labels"], self.drop_rate(),
                                  batch.get("weights"))
        return loss, self.penalty(users, items)
