"""Off-policy evaluation: the value of an evaluation policy estimated from another policy's log,
single slot or position-based slates (the Open Bandit Dataset's setting). Every estimator is a
small frozen dataclass with ``estimate(data: OPEData) -> Estimate``."""

from bandits.ope.bootstrap import bootstrap_rows, counts_of, percentile_interval, resampled_values
from bandits.ope.data import Estimate, OPEData, OPEInputError
from bandits.ope.direct import DM
from bandits.ope.dr import DR, SNDR
from bandits.ope.evaluate import Estimator, default_estimators, evaluate, jsonable
from bandits.ope.ipw import IPW, SNIPW
from bandits.ope.replay import Replay
from bandits.ope.reward_model import (
    TabularFeatures,
    cross_fit,
    crossed_logistic,
    logistic_baseline,
)
from bandits.ope.shrinkage import DROS
from bandits.ope.slope import slope_select, slope_tune, weight_grid
from bandits.ope.switch import SwitchDR

__all__ = ["DM", "DR", "DROS", "IPW", "SNDR", "SNIPW", "Estimate", "Estimator", "OPEData",
           "OPEInputError", "Replay", "SwitchDR", "TabularFeatures", "bootstrap_rows",
           "counts_of", "cross_fit", "crossed_logistic", "default_estimators", "evaluate",
           "jsonable", "logistic_baseline", "percentile_interval", "resampled_values",
           "slope_select", "slope_tune", "weight_grid"]
