"""All the estimators on one log, with bootstrap intervals and, against a known value, their
relative errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from bandits.ope.bootstrap import (
    bootstrap_rows,
    counts_of,
    percentile_interval,
    resampled_values,
)
from bandits.ope.data import Estimate, OPEData, OPEInputError
from bandits.ope.direct import DM
from bandits.ope.dr import DR, SNDR
from bandits.ope.ipw import IPW, SNIPW
from bandits.ope.replay import Replay
from bandits.ope.shrinkage import DROS
from bandits.ope.switch import SwitchDR


class Estimator(Protocol):
    name: str

    def estimate(self, data: OPEData) -> Estimate: ...


#: Refits q-hat on a resample: takes the resample's rows (indices into the log) and its seed.
RewardRefit = Callable[[np.ndarray, int], np.ndarray]


def default_estimators() -> tuple[Estimator, ...]:
    """dm, ipw, snipw, dr, sndr, switch-dr and dr-os (both tuned by SLOPE), and replay."""
    return (DM(), IPW(), SNIPW(), DR(), SNDR(), SwitchDR(), DROS(), Replay())


def _needs_rewards(estimator: Estimator) -> bool:
    return not isinstance(estimator, IPW | SNIPW | Replay)


def evaluate(data: OPEData, estimators: Sequence[Estimator] | None = None,
             n_bootstrap: int = 30, seed: int = 0, truth: float | None = None,
             refit: RewardRefit | None = None, level: float = 0.95) -> dict[str, Any]:
    """``{"truth": V, "estimators": {name: {"estimate", "ci": [lo, hi], "relative_error":
    {"mean", "std"}, ...}}}``.

    ``estimate`` is on the whole log. The interval and the relative errors come from
    ``n_bootstrap`` resamples of the log's rows, the same resamples for every estimator. With
    ``refit`` the reward model is fitted again on each resample (Open Bandit Pipeline's
    protocol), and SLOPE chooses again; without it every estimator's terms stay fixed and the
    resamples are computed at once from counts. Estimators that need a reward model are left
    out where ``data`` has none and no ``refit`` is given."""
    estimators = tuple(estimators or default_estimators())
    if truth is not None and not (math.isfinite(truth) and truth != 0):
        raise OPEInputError(f"truth={truth} must be a finite, non-zero value")
    if data.estimated_rewards is None and refit is not None:
        data = data.with_rewards(refit(np.arange(data.n), seed))
    usable = [e for e in estimators if data.estimated_rewards is not None or not
              _needs_rewards(e)]
    full = {e.name: e.estimate(data) for e in usable}
    rows = bootstrap_rows(data.n, n_bootstrap, seed)
    if refit is None:
        counts = counts_of(rows, data.n)
        resampled = {name: resampled_values(est, counts) for name, est in full.items()}
    else:
        resampled = {name: np.empty(n_bootstrap) for name in full}
        for b, sample in enumerate(rows):
            sub = data.take(sample)
            sub = sub.with_rewards(refit(sample, seed + 1 + b))
            for e in usable:
                resampled[e.name][b] = e.estimate(sub).value
    report: dict[str, Any] = {"truth": truth, "n_rows": data.n, "n_bootstrap": n_bootstrap,
                              "estimators": {}}
    for name, est in full.items():
        values = resampled[name]
        entry: dict[str, Any] = {"estimate": est.value,
                                 "ci": list(percentile_interval(values, level)),
                                 "std_error": est.std_error}
        if est.hyperparameter is not None:
            entry["hyperparameter"] = est.hyperparameter
        if truth is not None:
            errors = np.abs(values[np.isfinite(values)] - truth) / abs(truth)
            entry["relative_error"] = {"mean": float(errors.mean()),
                                       "std": float(errors.std(ddof=1)) if errors.size > 1
                                       else 0.0}
        report["estimators"][name] = entry
    return report


def jsonable(value: Any) -> Any:
    """``value`` (an :func:`evaluate` report, or anything holding one) with every non-finite
    float written as a string (``"inf"``): SLOPE may pick an infinite threshold (plain DR),
    which strict JSON cannot hold as a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
