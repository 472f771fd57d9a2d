"""Training a recommender: the data module must make the batches the model reads, then
:func:`models.training.train`."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as lightning

from models.data import InteractionDataModule
from models.recommenders.base import FactorizationModel
from models.training import RestoreBest, train

__all__ = ["RestoreBest", "fit"]


def fit(model: FactorizationModel, data: InteractionDataModule, *, max_epochs: int = 50,
        patience: int = 3, seed: int = 0, enable_progress_bar: bool = False,
        **trainer_options: Any) -> lightning.Trainer:
    """Train ``model`` on ``data`` and return the trainer (its ``callback_metrics`` hold the
    last losses), early stopping on ``val_loss`` as :func:`models.training.train` does."""
    if data.mode != model.mode:
        raise ValueError(f"{type(model).__name__} trains on {model.mode} batches; the data "
                         f"module makes {data.mode} ones (InteractionDataModule(mode=...))")
    if (data.n_users, data.n_items) != (model.n_users, model.n_items):
        raise ValueError(f"the data has {data.n_users} users and {data.n_items} items, the "
                         f"model {model.n_users} and {model.n_items}")
    return train(model, data, "val_loss", max_epochs=max_epochs, patience=patience, seed=seed,
                 enable_progress_bar=enable_progress_bar, **trainer_options)
