"""Training a list ranker: the data must fit the model, then :func:`models.training.train`."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as lightning

from models.training import train
from models.ultr.data import ListDataModule
from models.ultr.dla import DLA
from models.ultr.ranker import ListRanker


def fit(model: ListRanker, data: ListDataModule, *, max_epochs: int = 50, patience: int = 3,
        seed: int = 0, enable_progress_bar: bool = False,
        **trainer_options: Any) -> lightning.Trainer:
    """Train ``model`` on ``data`` and return the trainer (its ``callback_metrics`` hold the
    last losses), early stopping on the model's ``monitor`` as :func:`models.training.train`
    does; a model without one (:class:`DLA`) trains for ``max_epochs``."""
    if data.n_features != model.n_features:
        raise ValueError(f"the data has {data.n_features} features per slot, the model "
                         f"{model.n_features}")
    if isinstance(model, DLA) and data.n_positions > model.n_positions:
        raise ValueError(f"the data shows slots down to position {data.n_positions}; the DLA "
                         f"learns positions 1..{model.n_positions} (DLA(n_positions=...))")
    return train(model, data, model.monitor, max_epochs=max_epochs, patience=patience,
                 seed=seed, enable_progress_bar=enable_progress_bar, **trainer_options)
