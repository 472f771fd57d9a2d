"""Off-policy evaluation: the value of an evaluation policy estimated from another policy's log,
single slot or position-based slates (the Open Bandit Dataset's setting). Every estimator is a
small frozen dataclass with ``estimate(data: OPEData) -> Estimate``."""

from bandits.ope.bootstrap import bootstrap_rows, counts_of, percentile_interval, resampled_values
from bandits.ope.data import Estimate, OPEData, OPEInputError
from bandits.ope.direct import DM
from bandits.ope.dr import DR, SNDR
from bandits.ope.evaluate import Estimator, default_estimators, evaluate, jsonable
from bandits.ope.generic import (
    SlateLog,
    policy_matrix,
    read_generic_log,
    read_item_features,
    read_log_store,
    read_policy_table,
)
from bandits.ope.ipw import IPW, SNIPW
from bandits.ope.policies import (
    POLICY_NAMES,
    learner_scores,
    logged_policy,
    parse_policy,
    top_k_policy,
    uniform_policy,
)
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

__all__ = ["DM", "DR", "DROS", "IPW", "POLICY_NAMES", "SNDR", "SNIPW", "Estimate", "Estimator",
           "OPEData", "OPEInputError", "Replay", "SlateLog", "SwitchDR", "TabularFeatures",
           "bootstrap_rows", "counts_of", "cross_fit", "crossed_logistic", "default_estimators",
           "evaluate", "jsonable", "learner_scores", "logged_policy", "logistic_baseline",
           "parse_policy", "percentile_interval", "policy_matrix", "read_generic_log",
           "read_item_features", "read_log_store", "read_policy_table", "resampled_values",
           "slope_select", "slope_tune", "top_k_policy", "uniform_policy", "weight_grid"]
