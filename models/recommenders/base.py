"""What every factorization recommender shares: user and item tables, scoring, top-k
recommendation, the optimizer, and the L2 penalty on the rows a batch looked up.

Score: ``s(u, i) = <p_u, q_i> + b_i + b``, a logit. Subclasses give the loss (a pure
function in their own file) and say which batches they train on (``mode``, see
:mod:`models.data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as lightning
import torch
from torch import nn

from models.data import Batch, Mode
from models.topk import blockwise_topk
from models.training import EpochLosses

IndexLike = torch.Tensor | np.ndarray | Sequence[int]



def _as_index(values: IndexLike, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor)
                           else values, dtype=torch.long, device=device)


class FactorizationModel(EpochLosses, lightning.LightningModule):
    """Base class; see the module doc. ``weight_decay`` is an L2 penalty on the user, item
    and bias rows a batch uses, averaged over the batch: a penalty on the whole tables would
    shrink every row every step, and on a large catalog the many rarely seen rows would be
    driven to zero before their few batches came round."""

    kind: ClassVar[str]
    mode: ClassVar[Mode]

    def __init__(self, n_users: int, n_items: int, dim: int, lr: float, weight_decay: float,
                 seed: int) -> None:
        super().__init__()
        if min(n_users, n_items, dim) < 1 or lr <= 0 or weight_decay < 0:
            raise ValueError(f"n_users={n_users}, n_items={n_items}, dim={dim}, lr={lr}, "
                             f"weight_decay={weight_decay}: need sizes >= 1, lr > 0, "
                             "weight_decay >= 0")
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        self.bias = nn.Parameter(torch.zeros(()))
        # A generator of its own: the initial weights follow the seed hyper-parameter,
        # whatever else has drawn from the global one.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.user_embedding.weight.normal_(0.0, 0.1, generator=generator)
            self.item_embedding.weight.normal_(0.0, 0.1, generator=generator)
            self.item_bias.weight.zero_()

    @property
    def n_users(self) -> int:
        return self.user_embedding.num_embeddings

    @property
    def n_items(self) -> int:
        return self.item_embedding.num_embeddings

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of (user, item) pairs: ``users`` shape (n,), ``items`` shape (n,) or
        (n, m) for m items per user."""
        user_rows = self.user_embedding(users)
        if items.dim() == users.dim() + 1:
            user_rows = user_rows.unsqueeze(-2)
        return ((user_rows * self.item_embedding(items)).sum(-1)
                + self.item_bias(items).squeeze(-1) + self.bias)

    def penalty(self, users: torch.Tensor, *item_sets: torch.Tensor) -> torch.Tensor:
        """The L2 penalty of the rows these users and items look up (see the class doc)."""
        total = self.user_embedding(users).pow(2).sum()
        for items in item_sets:
            total = total + self.item_embedding(items).pow(2).sum() \
                + self.item_bias(items).pow(2).sum()
        return self.hparams["weight_decay"] * total / len(users)

    def losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, penalty) of a batch; the loss alone is what validation monitors."""
        raise NotImplementedError

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, penalty = self.losses(batch)
        self.add_train_losses({"loss": loss}, len(batch["users"]))
        return loss + penalty

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, _ = self.losses(batch)
        # Synced: each process validates its share, and early stopping and the best epoch
        # must be decided on the whole split, the same way by every process.
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["users"]), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])

    @torch.no_grad()
    def score(self, users: IndexLike, items: IndexLike) -> torch.Tensor:
        """Scores (logits; higher is better) of ``users`` (n,) with ``items`` (n,) or
        (n, m), on the model's device."""
        return self(_as_index(users, self.device), _as_index(items, self.device))

    @torch.no_grad()
    def recommend(self, users: IndexLike, k: int,
                  exclude: tuple[IndexLike, IndexLike] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best items of each of ``users`` and their scores, each (n, k), best
        first. ``exclude`` = (users, items) pairs never to recommend (e.g. the training
        positives, :meth:`models.data.InteractionDataModule.train_pairs`); a user left with
        fewer than k items gets excluded ones last, scored ``-inf``."""
        users_t = _as_index(users, self.device)
        k = min(k, self.n_items)
        rows, cols = self._excluded_cells(users_t, exclude)
        # Sorted by row once, so that each block finds its cells by two binary searches.
        rows, order = torch.sort(rows)
        cols = cols[order]
        items_t = self.item_embedding.weight
        item_bias = self.item_bias.weight.squeeze(-1) + self.bias

        def scores(start: int, stop: int) -> torch.Tensor:
            block = self.user_embedding(users_t[start:stop]) @ items_t.T + item_bias
            lo, hi = torch.searchsorted(rows, torch.tensor([start, stop],
                                                           device=rows.device)).tolist()
            block[rows[lo:hi] - start, cols[lo:hi]] = float("-inf")
            return block

        return blockwise_topk(len(users_t), self.n_items, k, scores, self.device)

    def _excluded_cells(self, users: torch.Tensor,
                        exclude: tuple[IndexLike, IndexLike] | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in ``users``, item) of every excluded pair, duplicates of a user included,
        found by sorting rather than by a users x pairs comparison."""
        if exclude is None:
            none = torch.empty(0, dtype=torch.long, device=self.device)
            return none, none
        ex_users = _as_index(exclude[0], self.device)
        ex_items = _as_index(exclude[1], self.device)
        order = torch.argsort(users)
        ordered = users[order]
        low = torch.searchsorted(ordered, ex_users)
        counts = torch.searchsorted(ordered, ex_users, right=True) - low
        pair = torch.repeat_interleave(torch.arange(len(ex_users), device=self.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        offset = torch.arange(len(pair), device=self.device) - starts[pair]
        return order[low[pair] + offset], ex_items[pair]
