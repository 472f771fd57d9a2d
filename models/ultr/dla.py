"""DLA, the Dual Learning Algorithm: a ranker and the examination propensities learned
jointly from clicks.

Ai, Bi, Luo, Guo and Croft, "Unbiased Learning to Rank with Unbiased Propensity Estimation",
SIGIR 2018. Under a position-based model a click is examination times relevance,
``P(c = 1) = theta_k * r``, and the two factors play symmetric parts: weighting clicks by
``1 / theta`` estimates relevance, weighting them by ``1 / r`` estimates examination. Two
models, each a softmax over the list, are trained at once, each with the other's current
estimate as its weights:

- the ranker ``f`` (the scorer of :mod:`models.ultr.ranker`), by the inverse propensity
  weighted softmax loss ``- sum_{i clicked} g_1 / g_i * log softmax(f)_i``;
- the propensity model, one logit ``phi_k`` per position, ``g = softmax(phi)`` over the
  list's positions, by the inverse relevance weighted softmax loss
  ``- sum_{i clicked} r_1 / r_i * log g_i`` with ``r = softmax(f)``.

Weights are taken relative to the list's first slot, as in the authors' ULTRA toolbox
(Tran, Yang and Ai, "ULTRA: An Unbiased Learning To Rank Algorithm Toolbox", CIKM 2021):
a softmax fixes probabilities only up to a factor per list, and a factor per list does not
move either optimum. In expectation the propensity loss is
``- sum_k theta_k log g_k`` (times a factor per list), minimized by ``g`` proportional to
``theta``, so :attr:`DLA.examination_` = ``exp(phi - phi_1)`` estimates ``theta_k /
theta_1`` once the ranker's softmax is proportional to relevance; and the ranker's loss is
then the one of :mod:`models.ultr.listwise` with the learned curve. ``max_weight`` caps both
kinds of weight.

The curve is identified only where position varies apart from the ranker's features. If
the logged order is a function of those features alone (a log sorted by popularity, with
popularity a feature), the ranker can explain position effects itself, and the two models
can drift together toward a flat or even inverted curve, as they did here on a simulated
log sorted by popularity (Zhang et al., "Towards Disentangling Relevance and Bias in
Unbiased Learning to Rank", KDD 2023; Hager, Zoeter and de Rijke, "Unidentified and
Confounded? Understanding Two-Tower Models for Unbiased Learning to Rank", ICTIR 2025).
Randomization, several rankers, or ranking signals the model does not see supply the
missing variation.

Optimization is Lightning's automatic one, with one Adam and two parameter groups (the
scorer at ``lr``, the position logits at ``exam_lr``): each loss sees the other model only
through weights taken with ``detach()``, so the gradient of their sum with respect to each
model is exactly the gradient of its own loss, the paper's two updates in one step, and
nothing needs the manual loop (which DDP and gradient accumulation would then have to be
taught). Both step sizes are annealed (cosine) over the run, which has no early stopping:
see :attr:`DLA.monitor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from models.ultr.data import Batch
from models.ultr.ranker import ListRanker, masked_log_softmax


def relative_weights(log_p: torch.Tensor, max_weight: float | None = None) -> torch.Tensor:
    """``p_1 / p_i`` per slot from log-probabilities (B, L), the first slot as reference;
    capped at ``max_weight`` when given; detached (a weight, not a path for gradients)."""
    weights = torch.exp(log_p[..., :1] - log_p).detach()
    return weights if max_weight is None else weights.clamp(max=max_weight)


def dla_losses(scores: torch.Tensor, exam_logits: torch.Tensor, labels: torch.Tensor,
               mask: torch.Tensor | None = None, max_weight: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranker loss, propensity loss), each a mean over lists (module doc).

    ``scores``: the ranker's scores (B, L); ``exam_logits``: the propensity logit of the
    position each slot was shown at (B, L); ``labels``: clicks (B, L); ``mask``: real slots,
    padding after them (all when None). The first slot of every list must be real: it is
    the reference of the weights."""
    log_r = masked_log_softmax(scores, mask)
    log_g = masked_log_softmax(exam_logits, mask)
    ranker = -(labels * relative_weights(log_g, max_weight) * log_r).sum(-1).mean()
    propensity = -(labels * relative_weights(log_r, max_weight) * log_g).sum(-1).mean()
    return ranker, propensity


class DLA(ListRanker):
    """See the module doc; batches from :class:`models.ultr.data.ListDataModule` (their
    ``positions``; propensities are ignored, they are what DLA learns). ``n_positions``:
    the deepest position it learns a logit for; ``exam_lr``: the propensity model's step
    size; ``max_weight`` caps the weights of both losses. The propensity logits start
    equal (no position bias)."""

    kind = "dla"
    # Each loss is weighted by the other model's current estimate, so a lower validation
    # loss need not mean better models (as the curve steepens, the ranker's weights grow
    # and so does its loss): DLA runs all its epochs, annealed, and keeps the last.
    monitor = None

    def __init__(self, n_features: int, n_positions: int, hidden: Sequence[int] = (32,),
                 lr: float = 1e-2, exam_lr: float = 5e-2, weight_decay: float = 0.0,
                 max_weight: float | None = None, anneal: bool = True, seed: int = 0) -> None:
        super().__init__(n_features, hidden, lr, weight_decay, seed)
        if n_positions < 1 or exam_lr <= 0:
            raise ValueError(f"n_positions={n_positions}, exam_lr={exam_lr}: need "
                             "n_positions >= 1 and exam_lr > 0")
        if max_weight is not None and not max_weight >= 1:
            raise ValueError(f"max_weight={max_weight} must be None or >= 1")
        self.save_hyperparameters()
        self.exam_logits = nn.Parameter(torch.zeros(n_positions))

    @property
    def n_positions(self) -> int:
        return len(self.exam_logits)

    @property
    def examination_(self) -> np.ndarray:
        """The learned examination per position (index position - 1), relative to
        position 1."""
        logits = self.exam_logits.detach()
        return torch.exp(logits - logits[0]).cpu().numpy()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        positions, mask = batch["positions"], batch["mask"]
        if int(positions.max()) > self.n_positions:
            raise ValueError(f"a slot was shown at position {int(positions.max())}; this DLA "
                             f"learns positions 1..{self.n_positions}")
        # Padding has position 0; any logit will do there, the mask drops it.
        exam = self.exam_logits[(positions - 1).clamp(min=0)]
        ranker, propensity = dla_losses(self(batch["features"]), exam, batch["labels"], mask,
                                        self.hparams["max_weight"])
        return {"loss": ranker + propensity, "rank_loss": ranker, "exam_loss": propensity}

    def configure_optimizers(self) -> Any:
        # No weight decay on the position logits: it would pull the curve toward flat.
        optimizer = torch.optim.Adam(
            [{"params": self.scorer.parameters(), "lr": self.hparams["lr"],
              "weight_decay": self.hparams["weight_decay"]},
             {"params": [self.exam_logits], "lr": self.hparams["exam_lr"], "weight_decay": 0.0}])
        try:
            steps = float(self.trainer.estimated_stepping_batches)
        except RuntimeError:  # called outside a Trainer, e.g. by a plain torch loop
            steps = float("inf")
        if not self.hparams["anneal"] or not 0 < steps < float("inf"):
            return optimizer
        # Each model's weights are the other's noisy estimate, so at a constant step size
        # the curve keeps jittering by about a step; annealing lets both settle.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(steps))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
