"""Retrievers trained from clicks, whose vectors fill the index of :mod:`ranking`:
:class:`TwoTower` (in-batch sampled softmax with the log-Q correction and inverse examination
propensities, Yi et al., RecSys 2019), trained with :func:`fit_two_tower` on a
:class:`ClickDataModule`; :class:`CounterfactualRocchio` (Zhuang, Li and Zuccon, SIGIR 2022),
which moves a repeated query's vector toward the items clicked for it; and both as the
pipeline's encoders (:class:`UserTowerEncoder`, :class:`RocchioEncoder`)."""

from __future__ import annotations

from models.retrievers.data import ClickBatches, ClickDataModule
from models.retrievers.encoders import RocchioEncoder, UserTowerEncoder
from models.retrievers.rocchio import (
    CounterfactualRocchio,
    click_sums,
    normalize_query,
    rocchio_move,
)
from models.retrievers.two_tower import TwoTower, fit_two_tower, in_batch_softmax_loss, one_hot

__all__ = ["ClickBatches", "ClickDataModule", "CounterfactualRocchio", "RocchioEncoder",
           "TwoTower", "UserTowerEncoder", "click_sums", "fit_two_tower",
           "in_batch_softmax_loss", "normalize_query", "one_hot", "rocchio_move"]
