"""Calibrating a rewriter's confidence to the probability that its rewrite succeeds.

A rewriter's raw confidence (the Markov beta-posterior mean, an LLM's sequence probability)
ranks rewrites but need not equal how often they work. :class:`IsotonicCalibrator` maps it
to P(the rewrite succeeds) by isotonic regression on validation (confidence, outcome) pairs
(Zadrozny and Elkan, "Transforming classifier scores into accurate multiclass probability
estimates", KDD 2002): the non-decreasing step function closest in squared error to the
outcomes, so the order of the raw scores is kept and only their scale changes.

How well a confidence is calibrated is read from :func:`reliability_curve` (outcome rate
against mean confidence in equal-width bins), summarized by
:func:`expected_calibration_error` (Naeini et al., "Obtaining Well Calibrated Probabilities
Using Bayesian Binning", AAAI 2015) and drawn by :func:`plot_reliability`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import ArrayLike
from sklearn.exceptions import NotFittedError


def _pairs(confidence: ArrayLike, outcome: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(confidence, dtype=np.float64).ravel()
    y = np.asarray(outcome, dtype=np.float64).ravel()
    if c.shape != y.shape:
        raise ValueError(f"confidence has {c.size} values but outcome has {y.size}")
    if c.size and not (np.isfinite(c).all() and (c >= 0).all() and (c <= 1).all()):
        raise ValueError("confidence must hold probabilities in [0, 1]")
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("outcome must hold 0/1 (or booleans)")
    return c, y


class IsotonicCalibrator:
    """Raw confidence -> P(success) by isotonic regression (see the module doc).

    Hyper-parameter: ``min_samples``, the validation pairs below which :meth:`fit` refuses
    (a step function on a handful of outcomes is mostly noise). Learned state:
    ``thresholds_`` and ``values_``, the knots of the fitted function; between knots it is
    interpolated linearly and beyond them held at the end values, as scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")`` predicts, so the state is two JSON lists.
    """

    def __init__(self, min_samples: int = 20) -> None:
        if min_samples < 2:
            raise ValueError(f"min_samples={min_samples} must be >= 2")
        self.min_samples = min_samples

    def fit(self, confidence: ArrayLike, outcome: ArrayLike) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        c, y = _pairs(confidence, outcome)
        if c.size < self.min_samples:
            raise ValueError(f"{c.size} validation pairs; min_samples={self.min_samples} "
                             "must be reached to calibrate")
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True,
                                 out_of_bounds="clip").fit(c, y)
        self.thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.values_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def predict(self, confidence: ArrayLike) -> np.ndarray:
        """Calibrated probabilities, same shape as ``confidence``."""
        if "thresholds_" not in self.__dict__:
            raise NotFittedError("this IsotonicCalibrator is not fitted yet: call fit first")
        c = np.asarray(confidence, dtype=np.float64)
        return np.interp(c, self.thresholds_, self.values_)

    def state_dict(self) -> dict[str, Any]:
        self.predict(0.0)  # raises when not fitted
        return {"min_samples": self.min_samples, "thresholds": self.thresholds_.tolist(),
                "values": self.values_.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> IsotonicCalibrator:
        self.__init__(int(state["min_samples"]))  # type: ignore[misc]
        self.thresholds_ = np.asarray(state["thresholds"], dtype=np.float64)
        self.values_ = np.asarray(state["values"], dtype=np.float64)
        return self


def reliability_curve(confidence: ArrayLike, outcome: ArrayLike,
                      bins: int = 10) -> pl.DataFrame:
    """``bin, mean_confidence, success_rate, n`` over ``bins`` equal-width bins of [0, 1]
    (bin ``b`` holds ``b / bins <= confidence < (b + 1) / bins``, the last one also 1.0);
    empty bins are left out."""
    if bins < 1:
        raise ValueError(f"bins={bins} must be >= 1")
    c, y = _pairs(confidence, outcome)
    which = np.minimum((c * bins).astype(np.int64), bins - 1)
    return (pl.DataFrame({"bin": which, "confidence": c, "outcome": y})
            .group_by("bin").agg(mean_confidence=pl.col("confidence").mean(),
                                 success_rate=pl.col("outcome").mean(),
                                 n=pl.len().cast(pl.Int64))
            .with_columns(pl.col("bin").cast(pl.Int64)).sort("bin"))


def expected_calibration_error(confidence: ArrayLike, outcome: ArrayLike,
                               bins: int = 10) -> float:
    """The bins' ``|mean_confidence - success_rate|`` weighted by their share of pairs."""
    curve = reliability_curve(confidence, outcome, bins)
    total = curve["n"].sum()
    if not total:
        raise ValueError("no (confidence, outcome) pairs to measure calibration on")
    gap = (curve["mean_confidence"] - curve["success_rate"]).abs()
    return float((gap * curve["n"]).sum() / total)


def plot_reliability(curves: Mapping[str, pl.DataFrame], path: str | Path) -> Path:
    """Reliability diagram of several curves (:func:`reliability_curve` frames, by name)
    beside the diagonal of perfect calibration, written to ``path`` (any matplotlib
    format by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
        for name, curve in curves.items():
            ece = float(((curve["mean_confidence"] - curve["success_rate"]).abs()
                         * curve["n"]).sum() / max(int(curve["n"].sum()), 1))
            ax.plot(curve["mean_confidence"], curve["success_rate"], marker="o",
                    label=f"{name} (ECE {ece:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence",
               ylabel="rewrite success rate", title="reliability of rewrite confidence")
        ax.legend(loc="upper left")
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
