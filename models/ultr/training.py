"""Training any list ranker of this package with Lightning's ``Trainer``: seeded, early
stopping on the validation loss, the best epoch's weights kept."""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as lightning
from pytorch_lightning.callbacks import Callback, EarlyStopping

from models.recommenders.training import RestoreBest
from models.ultr.data import ListDataModule
from models.ultr.dla import DLA
from models.ultr.ranker import ListRanker


def fit(model: ListRanker, data: ListDataModule, *, max_epochs: int = 50, patience: int = 3,
        seed: int = 0, enable_progress_bar: bool = False,
        **trainer_options: Any) -> lightning.Trainer:
    """Train ``model`` on ``data`` and return the trainer (its ``callback_metrics`` hold the
    last losses). With a validation split, training stops once the model's ``monitor``
    (``val_loss``) has not improved for ``patience`` epochs and the best epoch's weights
    are restored; a model without one (:class:`DLA`) trains for ``max_epochs``. ``trainer_options``
    go to ``lightning.Trainer`` (e.g. ``accelerator``, ``devices``, ``strategy``); by default
    one device, the GPU when there is one, no logger and no checkpoint files."""
    if data.n_features != model.n_features:
        raise ValueError(f"the data has {data.n_features} features per slot, the model "
                         f"{model.n_features}")
    if isinstance(model, DLA) and data.n_positions > model.n_positions:
        raise ValueError(f"the data shows slots down to position {data.n_positions}; the DLA "
                         f"learns positions 1..{model.n_positions} (DLA(n_positions=...))")
    lightning.seed_everything(seed, workers=True, verbose=False)
    data.setup("fit")
    callbacks: list[Callback] = list(trainer_options.pop("callbacks", []))
    if data.val is not None and model.monitor is not None:
        callbacks += [EarlyStopping(monitor=model.monitor, patience=patience, mode="min"),
                      RestoreBest(model.monitor)]
    options: dict[str, Any] = dict(accelerator="auto", devices=1, logger=False,
                                   enable_checkpointing=False, enable_model_summary=False)
    options.update(trainer_options)
    trainer = lightning.Trainer(max_epochs=max_epochs, enable_progress_bar=enable_progress_bar,
                                callbacks=callbacks, **options)
    with warnings.catch_warnings():
        # Batches are gathered from tensors already in memory: worker processes would only
        # add copying, so Lightning's advice to add some does not apply.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Lightning's own use of a torch API that newer torch deprecates: nothing to act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        trainer.fit(model, datamodule=data)
    return trainer
