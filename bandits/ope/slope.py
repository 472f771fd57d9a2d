"""SLOPE: choosing an estimator's hyper-parameter by the intersection of confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from bandits.ope.data import Estimate, OPEInputError


def check_grid(name: str, grid: Sequence[float] | None) -> None:
    if grid is None:
        return
    if len(grid) == 0 or any(not (g >= 0) for g in grid):
        raise OPEInputError(f"{name}={tuple(grid)} must be a non-empty tuple of values >= 0")


def weight_grid(values: np.ndarray, points: int = 12) -> tuple[float, ...]:
    """0, a geometric grid of ``points`` from the smallest positive ``values`` to the largest,
    and inf: from the direct method to no switching or shrinkage at all."""
    positive = values[values > 0]
    if positive.size == 0:
        return (0.0, math.inf)
    low, high = float(positive.min()), float(positive.max())
    inner = np.geomspace(low, high, points) if high > low else np.array([low])
    return (0.0, *(float(g) for g in inner), math.inf)


def slope_select(values: np.ndarray, std_errors: np.ndarray, width: float = 2.0) -> int:
    """The index SLOPE (Su, Srinath and Krishnamurthy, "Adaptive estimator selection for
    off-policy evaluation", ICML 2020) selects among candidates ordered from the least biased
    (and most variable) to the most biased (and least variable).

    Lepski's rule: each candidate j has the interval ``values[j] +- width * std_errors[j]``; the
    choice is the last i whose interval meets those of every candidate before it, i.e.
    ``max{i : intersection of I_0..I_i is not empty}``. Past that point the bias of the next
    candidates shows above their noise, so their smaller variance is not worth it."""
    values, std_errors = np.asarray(values, float), np.asarray(std_errors, float)
    if values.shape != std_errors.shape or values.ndim != 1 or values.size == 0:
        raise OPEInputError(f"values {values.shape} and std_errors {std_errors.shape} must be "
                            "1-d arrays of the same, non-zero length")
    if not (width > 0):
        raise OPEInputError(f"width={width} must be positive")
    low = np.maximum.accumulate(values - width * std_errors)
    high = np.minimum.accumulate(values + width * std_errors)
    # Intersections only shrink as i grows, so the non-empty ones are a prefix.
    return int(np.count_nonzero(low <= high) - 1)


def slope_tune(make: Callable[[float], Estimate], candidates: Sequence[float],
               width: float = 2.0) -> Estimate:
    """The estimate at the hyper-parameter SLOPE selects from ``candidates``, which must run from
    the least biased to the least variable; each candidate's standard error is its own
    per-sample terms' (:attr:`Estimate.std_error`)."""
    estimates = [make(c) for c in candidates]
    chosen = slope_select(np.array([e.value for e in estimates]),
                          np.array([e.std_error for e in estimates]), width)
    return estimates[chosen]
