"""Recommenders that draw from each user's own training positives while they train (PLD's
candidate pools, UBPR's clicked comparison items): the positives and their propensities,
indexed by user for uniform draws on the model's device."""

from __future__ import annotations

from typing import Any

import torch

from models.recommenders.base import FactorizationModel


class PositivePools(FactorizationModel):
    """Base class; see the module doc. The positives are those of the data module the model
    is fitted on (``trainer.datamodule``), read when fitting starts, or given by
    :meth:`set_positives`."""

    def __init__(self, n_users: int, n_items: int, dim: int, lr: float, weight_decay: float,
                 seed: int) -> None:
        super().__init__(n_users, n_items, dim, lr, weight_decay, seed)
        # Each user's training positives, sorted by user: those of u are
        # positives[start[u] : start[u] + count[u]]. Not persistent: they belong to the
        # training data, not to the model an artifact keeps.
        empty = torch.empty(0, dtype=torch.long)
        self.register_buffer("positives", empty, persistent=False)
        self.register_buffer("positive_propensities", torch.empty(0), persistent=False)
        self.register_buffer("start", empty.clone(), persistent=False)
        self.register_buffer("count", empty.clone(), persistent=False)

    def on_fit_start(self) -> None:
        datamodule: Any = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_pairs"):
            raise ValueError(f"{type(self).__name__} draws from the training positives: fit "
                             "it with an InteractionDataModule (models.recommenders.fit)")
        datamodule.setup("fit")
        train = datamodule.train
        keep = train.labels > 0
        self.set_positives(train.users[keep], train.items[keep], train.propensities[keep])

    def set_positives(self, users: torch.Tensor, items: torch.Tensor,
                      propensities: torch.Tensor | None = None) -> None:
        """Index the (user, item) training positives, with their propensities (1 if
        None), that draws come from."""
        order = torch.argsort(users * self.n_items + items)
        count = torch.bincount(users, minlength=self.n_users)
        weights = torch.ones(len(items)) if propensities is None else propensities
        self.positives = items[order].to(self.device)
        self.positive_propensities = weights[order].float().to(self.device)
        self.count = count.to(self.device)
        self.start = (torch.cumsum(count, 0) - count).to(self.device)

    def draw_positions(self, users: torch.Tensor, k: int) -> torch.Tensor:
        """Indices into ``positives`` of k of each user's positives, uniform with
        replacement, (len(users), k). Every training row's user has at least one: the row
        itself."""
        if len(self.count) != self.n_users:
            raise ValueError("no training positives to draw from: call set_positives, or fit "
                             "with an InteractionDataModule")
        count = self.count[users]
        offset = (torch.rand((len(users), k), device=self.device) * count[:, None]).long()
        return self.start[users][:, None] + offset

    def draw_pools(self, users: torch.Tensor, k: int) -> torch.Tensor:
        """(len(users), k) positives of each user, uniform with replacement."""
        return self.positives[self.draw_positions(users, k)]
