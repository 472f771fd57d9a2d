"""PLD: BPR whose positives are resampled by each user's personal loss distribution (Zhang,
Cao, Wu, Sun, Shen and Cheng, "Personalized Denoising Implicit Feedback for Robust
Recommender System", WWW 2025).

Across all users the losses of clean and noisy positives overlap, so one loss threshold
(T-CE) or one weighting curve (R-CE) misjudges many of them; within one user's positives the
noisy ones stand out. PLD therefore never compares losses across users. For each training
row of user u (one pairwise step for u, with the row's sampled negatives j_1..j_m):

1. draw a candidate pool of k positives c_1..c_k uniformly, with replacement, from u's
   training positives;
2. score each by its BPR loss against the row's negatives,
   l_c = mean_t softplus(s_uj_t - s_uc);
3. pick one candidate with probability softmax(-l / tau) over the pool,
   P(c) = exp(-l_c / tau) / sum_c' exp(-l_c' / tau),
   from the losses held constant (no gradient flows through the choice);
4. take the BPR step on (u, chosen c, j_1..j_m).

A positive that fits the user's taste poorly (large loss relative to the user's other
positives) is then optimized less often, not dropped: a shift of all of a user's losses
changes nothing, only their spread against tau counts. The first ``warmup_epochs`` epochs
are plain BPR, so that the losses mean something before they steer the sampling; validation
is plain BPR on the held-out rows.

As in the authors' code (github.com/Kaike-Zhang/PLD: pool of k = 5, tau = 0.1, resampling
from the fifth epoch), except that the pool is drawn with replacement (they draw without
when the user has k positives or more) and each epoch makes one step per training row, as
BPR does here, where they draw users uniformly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.data import Batch
from models.recommenders.bpr import bpr_loss
from models.recommenders.positives import PositivePools


def personal_loss_probabilities(candidate_losses: torch.Tensor,
                                temperature: float) -> torch.Tensor:
    """``softmax(-loss / temperature)`` over the last axis: each row is one user's pool."""
    return torch.softmax(-candidate_losses / temperature, dim=-1)


def pld_loss(candidates: torch.Tensor, negatives: torch.Tensor, temperature: float,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The BPR loss of one candidate per row, drawn by :func:`personal_loss_probabilities`
    of the candidates' BPR losses, and which candidate each row drew.

    ``candidates`` (n, k): scores of each row's pool of positives; ``negatives`` (n,) or
    (n, m): scores of its negatives. A candidate's loss is its mean ``softplus(neg - pos)``
    over the row's negatives; the returned loss is the mean of the drawn ones', and
    ``chosen`` (n,) their column in ``candidates``."""
    if negatives.dim() == 1:
        negatives = negatives.unsqueeze(-1)
    per_candidate = F.softplus(negatives.unsqueeze(1) - candidates.unsqueeze(2)).mean(-1)
    probabilities = personal_loss_probabilities(per_candidate.detach(), temperature)
    chosen = torch.multinomial(probabilities, 1, generator=generator)
    return per_candidate.gather(1, chosen).mean(), chosen.squeeze(1)


class PLD(PositivePools):
    """See the module doc; pairwise batches (:mod:`models.data`). ``candidates`` is the
    pool size k, ``temperature`` tau.

    The pools are drawn from the training positives (:class:`PositivePools`)."""

    kind = "pld"
    mode = "pairwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, candidates: int = 5, temperature: float = 0.1,
                 warmup_epochs: int = 5, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        if candidates < 1 or temperature <= 0 or warmup_epochs < 0:
            raise ValueError(f"candidates={candidates}, temperature={temperature}, "
                             f"warmup_epochs={warmup_epochs}: need candidates >= 1, "
                             "temperature > 0, warmup_epochs >= 0")
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, negatives = batch["users"], batch["negatives"]
        if not self.training or self.current_epoch < self.hparams["warmup_epochs"]:
            items = batch["items"]
            loss = bpr_loss(self(users, items), self(users, negatives))
            return loss, self.penalty(users, items, negatives)
        pools = self.draw_pools(users, self.hparams["candidates"])
        loss, chosen = pld_loss(self(users, pools), self(users, negatives),
                                self.hparams["temperature"])
        positives = pools.gather(1, chosen.unsqueeze(1)).squeeze(1)
        return loss, self.penalty(users, positives, negatives)
