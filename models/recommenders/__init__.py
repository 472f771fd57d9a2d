"""Recommenders from implicit feedback, one algorithm per module, each a LightningModule
with its loss as a pure function: :class:`MF` (pointwise cross-entropy), :class:`MFMSE`
(pointwise squared loss), :class:`BPR` (pairwise), :class:`RelMF` (unbiased pointwise loss
with clipped propensities), :class:`UBPR` (its pairwise counterpart), and the noisy-label
learners :class:`TCE` (truncated cross-entropy), :class:`RCE` (reweighted cross-entropy),
:class:`NBPO` (likelihood with learned label-flip probabilities) and :class:`PLD` (BPR
resampling positives by each user's loss distribution). Train with :func:`fit` on a
:class:`models.data.InteractionDataModule`."""

from __future__ import annotations

from models.recommenders.base import FactorizationModel
from models.recommenders.bpr import BPR, bpr_loss
from models.recommenders.mf import MF, bce_loss
from models.recommenders.mf_mse import MFMSE
from models.recommenders.nbpo import NBPO, nbpo_loss
from models.recommenders.pld import PLD, personal_loss_probabilities, pld_loss
from models.recommenders.rce import RCE, reweighted_bce_loss
from models.recommenders.rel_mf import RelMF, rel_mf_loss
from models.recommenders.tce import TCE, drop_rate_schedule, truncated_bce_loss
from models.recommenders.training import RestoreBest, fit
from models.recommenders.ubpr import UBPR, ubpr_loss

#: Every recommender by its ``kind``, the name artifacts record.
MODELS: dict[str, type[FactorizationModel]] = {
    model.kind: model for model in (MF, MFMSE, BPR, RelMF, UBPR, TCE, RCE, NBPO, PLD)}

__all__ = ["BPR", "MF", "MFMSE", "MODELS", "NBPO", "PLD", "RCE", "TCE", "UBPR",
           "FactorizationModel", "RelMF", "RestoreBest", "bce_loss", "bpr_loss",
           "drop_rate_schedule", "fit", "nbpo_loss", "personal_loss_probabilities", "pld_loss",
           "rel_mf_loss", "reweighted_bce_loss", "truncated_bce_loss", "ubpr_loss"]
