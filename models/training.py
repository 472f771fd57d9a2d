"""Training any model of this package with Lightning's ``Trainer``: seeded, early stopping on
a validation loss, the best epoch's weights kept, no logger and no checkpoint files."""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as lightning
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping

from models.data import PreBatchedDataModule


class EpochLosses:
    """Training losses logged once per epoch, as the mean over the epoch's examples, for a
    LightningModule to inherit (before ``LightningModule``): :meth:`add_train_losses` in
    ``training_step``. Lightning's ``self.log`` does bookkeeping on every call, which for a
    small model costs a sizeable share of its whole step; a running sum on the model's
    device costs one addition per loss."""

    def add_train_losses(self, losses: dict[str, torch.Tensor], examples: int) -> None:
        sums: dict[str, torch.Tensor] = self.__dict__.setdefault("_train_sums", {})
        for name, value in losses.items():
            total = value.detach() * examples
            sums[name] = sums[name] + total if name in sums else total
        self.__dict__["_train_examples"] = self.__dict__.get("_train_examples", 0) + examples

    def on_train_epoch_end(self) -> None:
        sums: dict[str, torch.Tensor] = self.__dict__.pop("_train_sums", {})
        examples = self.__dict__.pop("_train_examples", 0)
        for name, total in sums.items():
            # Synced: under data parallelism the mean of the processes' means.
            self.log(f"train_{name}", total / examples, sync_dist=True)  # type: ignore[attr-defined]


class RestoreBest(Callback):
    """Keeps the weights of the epoch with the lowest ``monitor`` in memory and puts them
    back when fitting ends: early stopping halts ``patience`` epochs after the best one,
    and an in-memory copy avoids Lightning's pickled checkpoint files. Under data
    parallelism the processes keep the same epoch only if they improve together: log the
    monitor with ``sync_dist=True``."""

    def __init__(self, monitor: str = "val_loss") -> None:
        self.monitor = monitor
        self.best = float("inf")
        self.best_epoch: int | None = None
        self._state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: lightning.Trainer,
                          pl_module: lightning.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        improved = value is not None and float(value) < self.best
        # Every process must keep the same epoch. A monitor logged with sync_dist=True has
        # one value everywhere already; the vote keeps them together if it was not.
        if not trainer.strategy.reduce_boolean_decision(improved, all=True):
            return
        assert value is not None
        self.best, self.best_epoch = float(value), trainer.current_epoch
        self._state = {name: tensor.detach().clone()
                       for name, tensor in pl_module.state_dict().items()}

    def on_fit_end(self, trainer: lightning.Trainer,
                   pl_module: lightning.LightningModule) -> None:
        if self._state is not None:
            pl_module.load_state_dict(self._state)


def train(model: lightning.LightningModule, data: lightning.LightningDataModule,
          monitor: str | None, *, max_epochs: int, patience: int, seed: int,
          enable_progress_bar: bool, **trainer_options: Any) -> lightning.Trainer:
    """Fit ``model`` on ``data`` (whose ``setup`` leaves ``val`` None without a validation
    split) and return the trainer. With a validation split and a ``monitor``, training stops
    once it has not improved for ``patience`` epochs and the best epoch's weights are
    restored. ``trainer_options`` go to ``lightning.Trainer`` (e.g. ``accelerator``,
    ``devices``, ``strategy``); by default one device, the GPU when there is one."""
    lightning.seed_everything(seed, workers=True, verbose=False)
    data.setup("fit")
    callbacks: list[Callback] = list(trainer_options.pop("callbacks", []))
    if getattr(data, "val", None) is not None and monitor is not None:
        callbacks += [EarlyStopping(monitor=monitor, patience=patience, mode="min"),
                      RestoreBest(monitor)]
    options: dict[str, Any] = dict(accelerator="auto", devices=1, logger=False,
                                   enable_checkpointing=False, enable_model_summary=False)
    if isinstance(data, PreBatchedDataModule):
        # Its loaders give each process its own share of the batches (EpochBatches); left
        # on, Lightning would deal out the batches again through a DistributedSampler.
        options["use_distributed_sampler"] = False
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
