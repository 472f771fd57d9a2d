"""Exploring policies over linear reward models, batch-vectorized in torch.

Every policy scores B requests x N candidates at once and keeps float64 statistics on its
``device``:

- ``score(x (B, N, d), arm=None) -> (B, N)``: the exploration-adjusted score;
- ``select(x, k, generator=None, arm=None) -> (chosen (B, k), propensity (B, k))``: indices
  into N, best first, and the probability of each shown item at its slot (1 for a
  deterministic policy);
- ``partial_fit(x (n, d), reward (n,), weight=None, arm=None)``: learn from shown items,
  with optional importance weights;
- ``state_dict()`` / ``load_state_dict()``: plain tensors, for safetensors.

Policies: :class:`LinUCB` (disjoint, or one shared model), :class:`HybridLinUCB`,
:class:`DiagLinUCB` (statistics that merge by addition), :class:`LinearThompsonSampling`,
:class:`EpsilonGreedy`, :class:`Softmax`. :class:`CrossFeatures` builds user x item
features and :class:`FeaturePolicy` adapts a policy to :class:`ranking.policy.BatchPolicy`.
"""

from bandits.policies._base import LinearPolicy, RidgeStatistics
from bandits.policies.diag_linucb import DiagLinUCB
from bandits.policies.epsilon_greedy import EpsilonGreedy
from bandits.policies.hybrid_linucb import HybridLinUCB
from bandits.policies.linucb import LinUCB
from bandits.policies.softmax import Softmax
from bandits.policies.thompson import LinearThompsonSampling
from bandits.policies.world_features import CrossFeatures, FeaturePolicy

__all__ = [
    "CrossFeatures",
    "DiagLinUCB",
    "EpsilonGreedy",
    "FeaturePolicy",
    "HybridLinUCB",
    "LinUCB",
    "LinearPolicy",
    "LinearThompsonSampling",
    "RidgeStatistics",
    "Softmax",
]
