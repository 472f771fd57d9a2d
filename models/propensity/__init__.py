"""Propensity estimation: how likely a slot was examined, or an item exposed.

Position bias, from click logs (one row per shown slot, as
:func:`ingest.joins.impression_click_join` gives them):

- :class:`RegressionEM`: EM on a position-based click model (Wang et al., WSDM 2018);
- :class:`InterventionHarvesting`: keys shown at several positions by different rankers
  (Agarwal et al., WSDM 2019), AllPairs or ratio estimator.

Item exposure, for recommendation:

- :class:`PopularityPropensity` and :func:`popularity_propensity`:
  ``(n_i+ / max n+) ** eta`` (Saito et al., WSDM 2020);
- :class:`ExposureModel`: a scikit-learn classifier of exposure on user and item features.

Weights: :func:`clip_propensities`, :func:`inverse_propensity_weights`,
:func:`effective_sample_size`, :func:`weight_quantiles`, :func:`weight_summary`.

Every estimator is a frozen dataclass of hyper-parameters (a bad one raises
``ValueError("field=value must ...")``) whose ``fit`` returns it with the learned state in
attributes ending in ``_``; position curves are ``examination_[position - 1]``, relative to
position 1.
"""

from models.propensity.diagnostics import (
    WeightSummary,
    clip_propensities,
    effective_sample_size,
    inverse_propensity_weights,
    weight_quantiles,
    weight_summary,
)
from models.propensity.exposure_model import ExposureModel
from models.propensity.harvesting import InterventionHarvesting
from models.propensity.popularity import PopularityPropensity, popularity_propensity
from models.propensity.regression_em import RegressionEM

__all__ = [
    "ExposureModel",
    "InterventionHarvesting",
    "PopularityPropensity",
    "RegressionEM",
    "WeightSummary",
    "clip_propensities",
    "effective_sample_size",
    "inverse_propensity_weights",
    "popularity_propensity",
    "weight_quantiles",
    "weight_summary",
]
