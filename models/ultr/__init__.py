"""Unbiased learning to rank on click lists (slates or result pages), one algorithm per
module, each a LightningModule with its loss as a pure function:

- :class:`IPSListwise` (:func:`ips_softmax_loss`): the listwise softmax loss with every
  click weighted by the inverse examination propensity of its position (Joachims et al.,
  WSDM 2017; Ai et al., SIGIR 2018);
- :class:`IPSPairwise` (:func:`ips_pairwise_loss`): the pairwise form, Propensity SVM-Rank's
  bound on the rank of the relevant items (Joachims et al., WSDM 2017);
- :class:`DLA` (:func:`dla_losses`): the Dual Learning Algorithm, which learns the
  examination propensities with the ranker (Ai et al., SIGIR 2018).

With ``ips=False`` the first two are the naive click rankers; trained on true relevance
labels they are the full-information (oracle) rankers. Lists come from
:class:`ListDataModule` (pre-batched, padded, with a mask); propensities from a given
examination curve (:func:`propensities_from_curve`: the simulator's, or an estimate such as
:class:`models.propensity.RegressionEM`'s); per-slot features of queries and items from
:class:`QueryItemFeatures` (BM25, TF-IDF cosine over character n-grams, word overlap, item
features), plugged into the join by :func:`join_features`. Train with :func:`fit`.
"""

from __future__ import annotations

from models.ultr.data import ListBatches, ListDataModule, propensities_from_curve
from models.ultr.dla import DLA, dla_losses
from models.ultr.features import TEXT_FEATURES, QueryItemFeatures, join_features
from models.ultr.listwise import IPSListwise, inverse_propensity_weights, ips_softmax_loss
from models.ultr.pairwise import IPSPairwise, ips_pairwise_loss
from models.ultr.ranker import ListRanker, Scorer, masked_log_softmax
from models.ultr.training import fit

#: Every list ranker by its ``kind``.
RANKERS: dict[str, type[ListRanker]] = {model.kind: model
                                        for model in (IPSListwise, IPSPairwise, DLA)}

__all__ = ["DLA", "RANKERS", "TEXT_FEATURES", "IPSListwise", "IPSPairwise", "ListBatches",
           "ListDataModule", "ListRanker", "QueryItemFeatures", "Scorer", "dla_losses", "fit",
           "inverse_propensity_weights", "ips_pairwise_loss", "ips_softmax_loss",
           "join_features", "masked_log_softmax", "propensities_from_curve"]
