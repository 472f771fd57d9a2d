"""Recommenders from implicit feedback, one algorithm per module, each a LightningModule
with its loss as a pure function: :class:`MF` (pointwise cross-entropy), :class:`BPR`
(pairwise), :class:`RelMF` (unbiased pointwise loss with clipped propensities). Train with
:func:`fit` on a :class:`models.data.InteractionDataModule`."""

from __future__ import annotations

from models.recommenders.base import FactorizationModel
from models.recommenders.bpr import BPR, bpr_loss
from models.recommenders.mf import MF, bce_loss
from models.recommenders.rel_mf import RelMF, rel_mf_loss
from models.recommenders.training import RestoreBest, fit

#: Every recommender by its ``kind``, the name artifacts record.
MODELS: dict[str, type[FactorizationModel]] = {model.kind: model for model in (MF, BPR, RelMF)}

__all__ = ["BPR", "MF", "MODELS", "FactorizationModel", "RelMF", "RestoreBest", "bce_loss",
           "bpr_loss", "fit", "rel_mf_loss"]
