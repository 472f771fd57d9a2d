"""Bootstrap resamples of a log, drawn once and shared by every estimator."""

from __future__ import annotations

import numpy as np

from bandits.ope.data import Estimate, OPEInputError


def bootstrap_rows(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n) row indices, each row a resample with replacement."""
    if n_bootstrap < 1:
        raise OPEInputError(f"n_bootstrap={n_bootstrap} must be at least 1")
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def counts_of(rows: np.ndarray, n: int) -> np.ndarray:
    """(B, n) how often each row is drawn in each resample of ``rows`` (B, m)."""
    b = rows.shape[0]
    flat = (np.arange(b)[:, None] * n + rows).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def resampled_values(estimate: Estimate, counts: np.ndarray) -> np.ndarray:
    """The estimate's value on each resample given by ``counts`` (B, n), with its terms held
    fixed (a reward model or a tuned hyper-parameter is not refitted)."""
    n = estimate.direct.shape[0]
    if counts.shape[1] != n:
        raise OPEInputError(f"counts has {counts.shape[1]} columns; the estimate has {n} rows")
    total = counts.sum(axis=1)
    normalizer = counts @ estimate.normalizer
    with np.errstate(invalid="ignore", divide="ignore"):
        # A resample with no weight at all has no value: NaN, left out of the intervals.
        return counts @ estimate.direct / total + np.where(
            normalizer > 0, (counts @ estimate.weighted) / normalizer, np.nan)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``values`` (NaNs left out)."""
    if not 0 < level < 1:
        raise OPEInputError(f"level={level} must be in (0, 1)")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))
