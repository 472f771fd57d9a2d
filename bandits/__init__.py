"""bandits: exploring policies, slates with real propensities, context features, and
off-policy evaluation.

- ``policies``: LinUCB disjoint and hybrid, Diag-LinUCB (statistics that merge by addition),
  linear Thompson sampling, epsilon-greedy and softmax over a ridge model; batched
  Sherman-Morrison/Woodbury updates with periodic refactorization; state as plain tensors;
  ``FeaturePolicy`` drives any of them as a :class:`ranking.policy.BatchPolicy`;
- ``slates``: Plackett-Luce and epsilon-mixture exploration over retrieved candidates, each
  logging the exact probability of every shown item at its slot, usable as the retrieval
  pipeline's last step;
- ``context``: user context crossed with item vectors, hashed categorical features, a
  cold-start prior;
- ``ope``: replay, IPW, SNIPW, DM, DR, SNDR, Switch-DR and DR-OS (SLOPE-tuned) with bootstrap
  intervals and cross-fitted reward models.
"""

from bandits.context import (
    ColdStartPrior,
    ContextFeatures,
    ItemVectors,
    hashed_bucket,
    stable_hash,
)
from bandits.policies import (
    CrossFeatures,
    DiagLinUCB,
    EpsilonGreedy,
    FeaturePolicy,
    HybridLinUCB,
    LinearThompsonSampling,
    LinUCB,
    Softmax,
)
from bandits.slates import EpsilonMixture, PlackettLuce, click_weights, plackett_luce_marginals

__all__ = ["ColdStartPrior", "ContextFeatures", "CrossFeatures", "DiagLinUCB", "EpsilonGreedy",
           "EpsilonMixture", "FeaturePolicy", "HybridLinUCB", "ItemVectors",
           "LinUCB", "LinearThompsonSampling", "PlackettLuce", "Softmax", "click_weights",
           "hashed_bucket", "plackett_luce_marginals", "stable_hash"]
