"""Position bias from interventions harvested out of logs of several rankers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, sparse
from scipy.sparse import csgraph
from scipy.special import expit, logit

from models.propensity._base import (
    Log,
    PositionCurve,
    cells,
    check,
    check_key,
    clicks,
    columns,
    default_key,
    encode,
    missing_positions,
    positions,
)


@dataclass(frozen=True)
class InterventionHarvesting(PositionCurve):
    """Relative examination per position from keys shown at more than one position.

    Agarwal, Zaitsev, Wang, Li, Najork and Joachims, "Estimating Position Bias without
    Intrusive Interventions", WSDM 2019. When different rankers (or randomization, or just
    different candidate sets) show the same key ``(q, d)`` at positions ``k`` and ``k'``,
    the pair is an intervention that nobody had to run. Over the interventional set
    ``S_kk'`` of keys shown at both::

        c_k^{k,k'}  = sum over (q, d) in S_kk' of clicks(q, d, k) / w(q, d, k)
        ~c_k^{k,k'} = sum over (q, d) in S_kk' of (shown - clicks)(q, d, k) / w(q, d, k)

    with ``w(q, d, k)`` the times ``(q, d)`` was shown at ``k``, so each key counts once per
    position whichever ranker showed it how often. Under a position-based model
    ``E[c_k^{k,k'}] = p_k * r_kk'``, with ``r_kk'`` the (unknown) total relevance of
    ``S_kk'``, the same for ``k`` and ``k'``.

    - ``estimator="all_pairs"`` (the paper's AllPairs extremum estimator): maximize, over
      ``p`` and the nuisance ``r`` (one per unordered pair, in (0, 1)),
      ``sum over k != k' of c_k^{k,k'} log(p_k r_kk') + ~c_k^{k,k'} log(1 - p_k r_kk')``;
      it uses every pair of positions, so a position never shown with position 1 is still
      estimated through the others.
    - ``estimator="ratio"``: ``p_k / p_1 = c_k^{1,k} / c_1^{1,k}``, the swap-style ratio
      against position 1 alone: simpler, and noisier where few keys reach both.

    The ratio depends on ``p`` only up to a common factor, so ``examination_`` is relative
    to position 1. It is unbiased when the key's relevance does not depend on which ranker
    showed it; with ``key=None`` the key is ``(query, item_id)`` for a log with queries and
    ``(user_id, item_id)`` otherwise.

    Learned: ``examination_`` (index position - 1, first entry 1), ``interventions_``
    (``|S_kk'|``, a positions x positions matrix: how much each pair of positions rests
    on), ``key_``, ``converged_`` (AllPairs: the optimizer's verdict; the ratio is
    closed-form).
    """

    estimator: Literal["all_pairs", "ratio"] = "all_pairs"
    key: tuple[str, ...] | None = None
    #: Positions estimated; slots below are left out. None: up to the deepest in the log.
    n_positions: int | None = None
    #: Iterations of the AllPairs optimizer (L-BFGS-B).
    max_iter: int = 10_000

    def __post_init__(self) -> None:
        check("estimator", self.estimator, self.estimator in ("all_pairs", "ratio"),
              "be 'all_pairs' or 'ratio'")
        check_key(self.key)
        check("n_positions", self.n_positions,
              self.n_positions is None or (isinstance(self.n_positions, int)
                                           and self.n_positions >= 2),
              "be None or >= 2 (a curve needs two positions)")
        check("max_iter", self.max_iter, isinstance(self.max_iter, int) and self.max_iter >= 1,
              "be an integer >= 1")

    def fit(self, log: Log) -> InterventionHarvesting:
        """Fit on the join's ``position``, ``clicked`` and key columns."""
        key = tuple(self.key) if self.key is not None else default_key(log)
        frame = columns(log, list(dict.fromkeys([*key, "position", "clicked"])))
        position, k = positions(frame, self.n_positions)
        check("n_positions", k, k >= 2, "be >= 2: the log shows one position only")
        group, _ = encode(frame, key)
        g, p, shown, clicked = cells(group, position, clicks(frame), k)
        if missing := missing_positions(np.bincount(p, minlength=k)):
            raise ValueError(f"positions {missing} have no slots in the log: "
                             f"set n_positions below {missing[0]}")
        shape = (int(g.max()) + 1, k)
        rate = sparse.csr_array((clicked / shown, (g, p)), shape=shape)
        present = sparse.csr_array((np.ones(len(g)), (g, p)), shape=shape)
        # One product each gives every pair of positions at once, (k, k') summed over the
        # keys shown at both: the interventional sets without a loop over pairs.
        both = (present.T @ present).toarray()
        clicks_at = (rate.T @ present).toarray()
        np.fill_diagonal(both, 0)
        np.fill_diagonal(clicks_at, 0)
        if self.estimator == "ratio":
            examination, converged = _ratio(clicks_at), True
        else:
            examination, converged = _all_pairs(clicks_at, both - clicks_at, both,
                                                 self.max_iter)
        self._learn(examination_=examination, interventions_=both.astype(np.int64),
                    key_=key, converged_=converged)
        return self


def _ratio(clicks_at: np.ndarray) -> np.ndarray:
    at_first, at_k = clicks_at[0, 1:], clicks_at[1:, 0]
    lacking = [int(j) + 2 for j in np.flatnonzero(at_first == 0)]
    if lacking:
        raise ValueError(f"positions {lacking}: no key shown there was also shown and "
                         "clicked at position 1, so the ratio is undefined; "
                         "use estimator='all_pairs'")
    return np.concatenate([[1.0], at_k / at_first])


def _all_pairs(clicked: np.ndarray, missed: np.ndarray, both: np.ndarray, max_iter: int
               ) -> tuple[np.ndarray, bool]:
    k = len(both)
    _, component = csgraph.connected_components(sparse.csr_array(both > 0), directed=False)
    apart = [int(j) + 1 for j in np.flatnonzero(component != component[0])]
    if apart:
        raise ValueError(f"positions {apart} share no key with position 1, directly or "
                         "through other positions: nothing to compare them with")
    upper_i, upper_j = np.nonzero(np.triu(both > 0, 1))
    n_pairs = len(upper_i)
    # Both orders of each unordered pair, sharing its r.
    rows = np.concatenate([upper_i, upper_j])
    cols = np.concatenate([upper_j, upper_i])
    pair = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)])
    c, m = clicked[rows, cols], missed[rows, cols]

    def negative_log_likelihood(z: np.ndarray) -> tuple[float, np.ndarray]:
        p, r = expit(z[:k]), expit(z[k:])
        q = np.clip(p[rows] * r[pair], 1e-12, 1 - 1e-12)
        value = -(c @ np.log(q) + m @ np.log1p(-q))
        # Analytic gradient: 10 positions make 55 parameters, and finite differences
        # would cost as many evaluations per step.
        dq = -(c / q - m / (1 - q)) * q
        grad_p = np.bincount(rows, weights=dq, minlength=k) * (1 - p)
        grad_r = np.bincount(pair, weights=dq, minlength=n_pairs) * (1 - r)
        return float(value), np.concatenate([grad_p, grad_r])

    # A flat curve assumes no position bias, and r is where a flat p = 1/2 matches each
    # pair's click rate: the neutral start, from which only the data move p.
    rate = (clicked[upper_i, upper_j] + clicked[upper_j, upper_i]) \
        / (2 * both[upper_i, upper_j])
    start = np.concatenate([np.zeros(k), logit(np.clip(2 * rate, 1e-3, 1 - 1e-3))])
    result = optimize.minimize(negative_log_likelihood, start, jac=True, method="L-BFGS-B",
                               options={"maxiter": max_iter})
    p = expit(result.x[:k])
    return p / p[0], bool(result.success)

