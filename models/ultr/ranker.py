"""What every list ranker shares: the scoring model over per-slot feature vectors, scoring
and ranking padded lists, the training and validation steps, and the optimizer.

The scorer is a small MLP applied to each slot's feature vector independently, ``s = f(x)``
(a linear layer when ``hidden=()``): the score of an item for a context does not depend on
the other items of the list, so a ranker trained on shown slates can score any candidate
set. Subclasses give the loss (a pure function in their own file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as lightning
import torch
from torch import nn

from models.training import EpochLosses
from models.ultr.data import Batch


def masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax over each list's real slots (last axis); 0 on padding, so that a padded
    slot times any label or weight adds nothing (``-inf * 0`` would be NaN)."""
    if mask is None:
        return torch.log_softmax(scores, dim=-1)
    log_p = torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return log_p.masked_fill(~mask, 0.0)


class Scorer(nn.Module):
    """An MLP over the last axis, (..., F) -> (...): ReLU hidden layers of the given sizes,
    then one output unit."""

    def __init__(self, n_features: int, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        sizes = [n_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


class ListRanker(EpochLosses, lightning.LightningModule):
    """Base class; see the module doc. ``hidden``: the scorer's hidden layer sizes (``()``
    for a linear scorer); ``weight_decay``: Adam's L2 on the scorer's weights; ``seed``
    fixes the initial weights whatever else has drawn from the global generator."""

    kind: ClassVar[str]
    #: What early stopping watches; None: the losses of different epochs are not comparable,
    #: and training runs for all its epochs.
    monitor: ClassVar[str | None] = "val_loss"

    def __init__(self, n_features: int, hidden: Sequence[int] = (32,), lr: float = 1e-2,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if n_features < 1 or any(h < 1 for h in hidden) or lr <= 0 or weight_decay < 0:
            raise ValueError(f"n_features={n_features}, hidden={tuple(hidden)}, lr={lr}, "
                             f"weight_decay={weight_decay}: need sizes >= 1, lr > 0, "
                             "weight_decay >= 0")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.scorer = Scorer(n_features, hidden)

    @property
    def n_features(self) -> int:
        first = self.scorer.layers[0]
        assert isinstance(first, nn.Linear)
        return first.in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scores (logits; higher ranks first) of every slot: (..., F) -> (...)."""
        return self.scorer(features)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's losses by name; ``"loss"`` is what is minimized and monitored."""
        raise NotImplementedError

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        self.add_train_losses(losses, len(batch["labels"]))
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        for name, value in self.losses(batch).items():
            # Synced: each process validates its share, and early stopping and the best
            # epoch must be decided on the whole split, the same way by every process.
            self.log(f"val_{name}", value, on_step=False, on_epoch=True,
                     prog_bar=name == "loss", batch_size=len(batch["labels"]), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"],
                                weight_decay=self.hparams["weight_decay"])

    @torch.no_grad()
    def score(self, features: torch.Tensor | np.ndarray,
              mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Scores of (B, L, F) candidate lists, (B, L), on the model's device; ``-inf`` on
        padding (``mask`` False)."""
        x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor)
                            else features, dtype=torch.float32, device=self.device)
        scores = self(x)
        if mask is not None:
            real = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor)
                                   else mask, dtype=torch.bool, device=self.device)
            scores = scores.masked_fill(~real, float("-inf"))
        return scores

    @torch.no_grad()
    def rank(self, features: torch.Tensor | np.ndarray,
             mask: torch.Tensor | np.ndarray | None = None, k: int | None = None
             ) -> torch.Tensor:
        """Slot indices of each list's ``k`` best candidates (all when None), best first,
        (B, k); padding comes last. Ties keep the slot order."""
        scores = self.score(features, mask)
        order = torch.argsort(scores, dim=-1, descending=True, stable=True)
        return order if k is None else order[..., :k]
