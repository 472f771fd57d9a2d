"""NBPO: noisy-label robust Bayesian point-wise optimization (Yu and Qin, "Sampler Design for
Implicit Feedback Data by Noisy-label Robust Learning", SIGIR 2020).

The model's score gives the probability that the user truly likes the item,
R_ui = P(y_ui = 1) = sigmoid(s_ui), but training sees an observed label y~ that may have been
flipped. With the flip probabilities

    eps+_u = P(y~ = 1 | y = 0)   (a click on an item the user does not like),
    eps-_u = P(y~ = 0 | y = 1)   (an item the user likes, left unclicked),

the likelihood of what was observed is

    P(y~_ui = 1) = (1 - eps-_u) R_ui + eps+_u (1 - R_ui),
    P(y~_ui = 0) = eps-_u R_ui + (1 - eps+_u) (1 - R_ui),

and NBPO maximizes it in the scores and the flip probabilities together:

    L = -mean over pairs of [y~ log P(y~ = 1) + (1 - y~) log P(y~ = 0)].

A positive the model scores low is explained by eps+ instead of being pushed up: its
gradient on s falls to zero as R goes to 0, where plain cross-entropy pushes hardest.
The scores alone rank items (:meth:`score`, :meth:`recommend`); the flip probabilities only
serve training.

What differs from the paper, and why:

- The paper flips only 1 -> 0 (eps+ = 0: unvoted items hide positives, the noise a uniform
  negative sampler suffers from). Here both directions are modelled, since a misclick is a
  0 -> 1 flip; :func:`nbpo_loss` with ``false_positive = 0`` is the paper's likelihood.
- The paper's flip probability is personal to each pair, sigmoid(<p_u, q_i>) from its own
  low-rank factors; here each user has one eps+ and one eps- (two learned scalars per user,
  no second pair of factor tables), enough for noise that depends on the user, not on
  which item was flipped.
- Each flip probability is 0.5 * sigmoid(a) for a learned logit a: eps+ + eps- < 1 keeps
  the labels' meaning (otherwise s -> -s with eps -> 1 - eps explains the data as well, the
  usual assumption of class-conditional label noise, Natarajan et al., NeurIPS 2013).
- The exact log-likelihood, computed in log space, in place of the paper's surrogate
  likelihood and surrogate gradients, which it introduces against vanishing gradients in
  its sigmoid-product form; in log space nothing underflows.
- NBPO is point-wise (the paper's "BPO"), so it trains on pointwise batches with sampled
  negatives, like MF.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.data import Batch
from models.recommenders.base import FactorizationModel

#: Ceiling of each flip probability (see the module doc).
MAX_FLIP = 0.5


def nbpo_loss(logits: torch.Tensor, labels: torch.Tensor, false_positive: torch.Tensor,
              false_negative: torch.Tensor, weights: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Mean over pairs of ``-weight * [y log P(y~=1) + (1 - y) log P(y~=0)]`` with
    ``P(y~=1) = (1 - eps-) R + eps+ (1 - R)``, ``P(y~=0) = eps- R + (1 - eps+)(1 - R)``,
    ``R = sigmoid(s)``; ``false_positive`` is eps+ and ``false_negative`` eps-, per pair,
    each in [0, 1); weights default to 1. With both flips 0 it is the plain BCE."""
    log_r, log_not_r = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_clicked = torch.logaddexp(log_r + torch.log1p(-false_negative),
                                  log_not_r + torch.log(false_positive))
    log_unclicked = torch.logaddexp(log_r + torch.log(false_negative),
                                    log_not_r + torch.log1p(-false_positive))
    per_pair = -(labels * log_clicked + (1.0 - labels) * log_unclicked)
    return (per_pair if weights is None else weights * per_pair).mean()


class NBPO(FactorizationModel):
    """See the module doc; pointwise batches (:mod:`models.data`). ``init_flip`` is both
    flip probabilities of every user before training."""

    kind = "nbpo"
    mode = "pointwise"

    def __init__(self, n_users: int, n_items: int, dim: int = 32, lr: float = 1e-2,
                 weight_decay: float = 1e-4, init_flip: float = 0.1, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        if not 0 < init_flip < MAX_FLIP:
            raise ValueError(f"init_flip={init_flip} must be in (0, {MAX_FLIP})")
        self.save_hyperparameters()
        #: Per user, the logits of eps+ and eps-.
        self.flip_logits = nn.Embedding.from_pretrained(
            torch.full((n_users, 2), math.log(init_flip / (MAX_FLIP - init_flip))),
            freeze=False)

    def flips(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps+, eps-) of these users."""
        both = MAX_FLIP * torch.sigmoid(self.flip_logits(users))
        return both[..., 0], both[..., 1]

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = batch["users"], batch["items"]
        false_positive, false_negative = self.flips(users)
        loss = nbpo_loss(self(users, items), batch["labels"], false_positive, false_negative,
                         batch.get("weights"))
        return loss, self.penalty(users, items)
