"""The inverse-propensity-weighted listwise softmax loss, and the ranker trained with it.

Joachims, Swaminathan and Schnabel ("Unbiased Learning-to-Rank with Biased Feedback", WSDM
2017): under a position-based model a click needs examination and relevance,
``P(c = 1) = theta_k * r``, so weighting each click by ``1 / theta_k`` of the position it was
shown at gives ``E[c / theta_k] = r``: any loss that is linear in the labels, trained on the
weighted clicks, is in expectation that loss trained on relevance, whatever the logging
ranker did. Here the loss is the listwise softmax cross-entropy (Cao et al., "Learning to
rank: from pairwise approach to listwise approach", ICML 2007), the ranker loss of Ai et al.
("Unbiased Learning to Rank with Unbiased Propensity Estimation", SIGIR 2018)::

    loss(list) = - sum_i  label_i / theta_i * log softmax(s)_i

over the list's real slots; its expectation is ``- sum_i r_i log softmax(s)_i``, minimized
by ``softmax(s) = r / sum r``. Only examined slots can be clicked, so the estimate is
unbiased only where every relevant item had a positive examination probability: items
never shown are outside what a click log can say anything about.

Trained with ``ips=False`` (every weight 1) on clicks it is the naive click ranker, which
learns ``theta_k * r`` and so takes whatever put items high (e.g. popularity, for a
popularity-ordered log) for relevance; trained on true relevance labels it is the
full-information (oracle) ranker.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.ultr.data import Batch
from models.ultr.ranker import ListRanker, masked_log_softmax


def inverse_propensity_weights(propensities: torch.Tensor, max_weight: float | None = None
                               ) -> torch.Tensor:
    """``1 / theta``, capped at ``max_weight`` when given: the cap trades a little bias for
    less variance where examination is small."""
    weights = 1.0 / propensities
    return weights if max_weight is None else weights.clamp(max=max_weight)


def ips_softmax_loss(scores: torch.Tensor, labels: torch.Tensor,
                     propensities: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None,
                     max_weight: float | None = None) -> torch.Tensor:
    """Mean over lists of ``- sum_i label_i / theta_i * log softmax(s)_i`` (module doc).

    ``scores``, ``labels``, ``propensities`` and ``mask`` are (B, L); the softmax runs over
    each list's real slots (``mask``; all when None). Propensities default to 1 (the naive
    loss); ``max_weight`` caps ``1 / theta``. A list without a positive label adds 0, and
    still counts in the mean: the estimate is per list shown."""
    weights = labels if propensities is None \
        else labels * inverse_propensity_weights(propensities, max_weight)
    return -(weights * masked_log_softmax(scores, mask)).sum(-1).mean()


class IPSListwise(ListRanker):
    """See the module doc; batches from :class:`models.ultr.data.ListDataModule`.
    ``ips=False`` ignores the batch's propensities (the naive ranker, or an oracle trained
    on relevance labels); ``max_weight`` caps the inverse propensity weights."""

    kind = "ips-listwise"

    def __init__(self, n_features: int, hidden: Sequence[int] = (32,), lr: float = 1e-2,
                 weight_decay: float = 0.0, ips: bool = True, max_weight: float | None = None,
                 seed: int = 0) -> None:
        super().__init__(n_features, hidden, lr, weight_decay, seed)
        if max_weight is not None and not max_weight >= 1:
            raise ValueError(f"max_weight={max_weight} must be None or >= 1")
        self.save_hyperparameters()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        propensities = batch["propensities"] if self.hparams["ips"] else None
        return {"loss": ips_softmax_loss(self(batch["features"]), batch["labels"],
                                         propensities, batch["mask"],
                                         self.hparams["max_weight"])}
