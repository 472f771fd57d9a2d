"""Position bias from an ordinary click log by regression-EM on a position-based model."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from models.propensity._base import (
    EPS,
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
class RegressionEM(PositionCurve):
    """Examination per position, learned from clicks alone by EM on a position-based model.

    Wang, Golbandi, Bendersky, Metzler and Najork, "Position Bias Estimation for Unbiased
    Learning to Rank in Personal Search", WSDM 2018. A slot of key ``(q, d)`` (a query or
    user, and an item) at position ``k`` is clicked when it is examined (E) and relevant
    (R), independently::

        P(C = 1 | q, d, k) = theta_k * gamma_qd

    E-step, for each unclicked slot (a clicked one is examined and relevant)::

        P(E = 1, R = 0 | C = 0) = theta_k (1 - gamma_qd) / (1 - theta_k gamma_qd)
        P(E = 0, R = 1 | C = 0) = (1 - theta_k) gamma_qd / (1 - theta_k gamma_qd)

    M-step: ``theta_k`` = the mean of P(E = 1 | c) over the slots at ``k``; ``gamma`` from
    P(R = 1 | c), either

    - ``relevance="table"``: one ``gamma_qd`` per key, the mean of P(R = 1 | c) over its
      slots (the closed-form M-step: the paper's plain EM, before its regression). Plain
      EM crawls here, so steps are accelerated by SQUAREM (Varadhan and Roland, "Simple
      and globally convergent methods for accelerating the convergence of any EM
      algorithm", Scand. J. Statist. 2008), falling back to two plain steps whenever the
      extrapolated one would lower the likelihood; or
    - a scikit-learn classifier (``fit`` with ``sample_weight``, ``predict_proba``), the
      paper's regression: ``gamma = f(x)`` from the per-slot ``features``, refitted every
      M-step. With ``labels="sampled"`` it learns from binary labels drawn from
      P(R = 1 | c), as in the paper, and runs all ``max_iter`` iterations (the likelihood
      moves with the draws); with ``labels="expected"`` (the default) every slot counts
      once as relevant with weight P(R = 1 | c) and once as not with the rest, the
      expectation of the sampled labels' log loss without their noise, and the steps are
      accelerated as the table's are. The classifier sees each distinct feature row once,
      weighted by its slots (mean weight 1), so a hyper-parameter that counts rows, such
      as a tree's ``min_samples_leaf``, counts distinct feature rows.

    The likelihood depends on ``theta_k * gamma`` only, so the curve is identified up to a
    common factor: ``examination_`` is relative to position 1, which is what inverse
    propensity weights need. The examination estimate is only as good as the relevance
    model: it must capture what made the ranker put an item high, or that relevance is
    read as position bias. A key must be shown at more than one position to tell the two
    apart; with ``key=None`` it is ``(query, item_id)`` for a log with queries and
    ``(user_id, item_id)`` otherwise.

    Learned: ``examination_`` (shape ``(n_positions,)``, index position - 1, first entry
    1), ``relevance_`` (table: per row of ``keys_``, scaled so that ``examination_[k - 1] *
    relevance_`` is the fitted click probability) or ``relevance_model_`` (a fitted clone
    of the classifier, probabilities on the EM's own scale), ``key_``,
    ``log_likelihood_``, ``n_iter_``, ``converged_``.
    """

    relevance: Any = "table"
    key: tuple[str, ...] | None = None
    #: Positions estimated; slots below are left out. None: up to the deepest in the log.
    n_positions: int | None = None
    max_iter: int = 500
    #: Stop when an iteration no longer raises the log-likelihood by this much per slot.
    tol: float = 1e-7
    labels: Literal["expected", "sampled"] = "expected"
    accelerate: bool = True
    random_state: int = 0

    def __post_init__(self) -> None:
        table = isinstance(self.relevance, str)
        check("relevance", self.relevance,
              self.relevance == "table" if table else
              hasattr(self.relevance, "fit") and hasattr(self.relevance, "predict_proba"),
              "be 'table' or a scikit-learn classifier (fit, predict_proba)")
        check_key(self.key)
        check("n_positions", self.n_positions,
              self.n_positions is None or (isinstance(self.n_positions, int)
                                           and self.n_positions >= 1), "be None or >= 1")
        check("max_iter", self.max_iter, isinstance(self.max_iter, int) and self.max_iter >= 1,
              "be an integer >= 1")
        check("tol", self.tol, self.tol >= 0, "be >= 0")
        check("labels", self.labels, self.labels in ("expected", "sampled"),
              "be 'expected' or 'sampled'")
        check("labels", self.labels, not (table and self.labels == "sampled"),
              "be 'expected' with relevance='table' (the table's M-step is exact)")

    def fit(self, log: Log, features: ArrayLike | None = None) -> RegressionEM:
        """Fit on the join's ``position``, ``clicked`` and key columns; ``features`` (shape
        ``(n_rows, n_features)``, one row per slot of ``log``) feed a relevance model."""
        table = isinstance(self.relevance, str)
        key = tuple(self.key) if self.key is not None else default_key(log)
        frame = columns(log, list(dict.fromkeys([*key, "position", "clicked"])))
        position, k = positions(frame, self.n_positions)
        clicked = clicks(frame)
        if table:
            check("features", "<array>" if features is not None else None, features is None,
                  "be None with relevance='table' (the table is indexed by key)")
            group, keys = encode(frame, key)
            x = None
        else:
            check("features", features, features is not None,
                  "be an array of shape (n_rows, n_features) for a relevance model")
            x_rows = np.asarray(features, dtype=np.float64)
            check("features.shape", x_rows.shape,
                  x_rows.ndim == 2 and len(x_rows) == len(frame), f"be ({len(frame)}, d)")
            # Slots with equal features share gamma, so the model is fitted once per
            # distinct row, weighted by its slots: the same loss, often far fewer rows.
            group, x = _distinct_rows(x_rows)
            keys = None
        g, p, shown, clicked_ = cells(group, position, clicked, k)
        # A group shown only below the positions estimated has no cell: leave it out
        # rather than give it a relevance from no slots.
        used, g = np.unique(g, return_inverse=True)
        n_groups = len(used)
        if keys is not None:
            keys = keys[used]
        if x is not None:
            x = x[used]
        shown_at = np.bincount(p, weights=shown, minlength=k)
        if missing := missing_positions(shown_at):
            raise ValueError(f"positions {missing} have no slots in the log: "
                             f"set n_positions below {missing[0]}")
        if clicked_.sum() == 0:
            raise ValueError("clicked=False on every row: no clicks to learn from")

        state = _State(g, p, shown, clicked_, n_groups, k, shown_at)
        model = None if table else clone(self.relevance)
        if model is None:
            fit_gamma = state.gamma
        else:
            both = np.concatenate([x, x])
            labels = np.concatenate([np.ones(len(x)), np.zeros(len(x))])

            def fit_gamma(relevant: np.ndarray) -> np.ndarray:
                positive = np.bincount(state.g, weights=relevant, minlength=n_groups)
                weight = np.concatenate([positive, state.shown_by_group - positive])
                keep = weight > 0
                # Mean weight 1: a regularized classifier then weighs its penalty against
                # as many rows as it sees, and solvers stay well scaled.
                model.fit(both[keep], labels[keep],
                          sample_weight=weight[keep] / weight[keep].mean())
                return model.predict_proba(x)[:, list(model.classes_).index(1)]

        theta, gamma, loglik, n_iter, converged = self._iterate(state, *state.start(),
                                                                fit_gamma)
        if not converged:
            warnings.warn(f"RegressionEM did not converge in max_iter={self.max_iter} "
                          f"iterations (tol={self.tol})", ConvergenceWarning, stacklevel=2)
        self._learn(examination_=theta / theta[0], key_=key, keys_=keys,
                    relevance_=gamma * theta[0] if table else None, relevance_model_=model,
                    log_likelihood_=loglik, n_iter_=n_iter, converged_=converged)
        return self

    def relevance_table(self) -> pl.DataFrame:
        """The fitted table (``relevance="table"``): the key columns and ``relevance``."""
        self._check_fitted("examination_")
        if self.keys_ is None:
            raise ValueError("relevance is a model, not a table: see relevance_model_")
        return self.keys_.with_columns(relevance=pl.Series(self.relevance_))

    def _iterate(self, state: _State, theta: np.ndarray, gamma: np.ndarray,
                 fit_gamma: Callable[[np.ndarray], np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, float, int, bool]:
        """EM steps until the log-likelihood stops rising; ``fit_gamma`` is the relevance
        M-step (expected relevant slots per cell -> gamma per group)."""
        k = state.k
        rng = np.random.default_rng(self.random_state) if self.labels == "sampled" else None

        def step(x: np.ndarray) -> np.ndarray:
            examined, relevant = state.posteriors(x[:k], x[k:], rng)
            return np.clip(np.concatenate([state.theta(examined), fit_gamma(relevant)]),
                           EPS, 1 - EPS)

        def log_likelihood(x: np.ndarray) -> float:
            return state.log_likelihood(x[:k], x[k:])

        # Extrapolating a step of drawn labels would extrapolate their noise, and the
        # likelihood moves with the draws, so with drawn labels every iteration runs.
        sampled = rng is not None
        accelerate = self.accelerate and not sampled
        # The starting gamma is one free value per group; the first M-step puts it on the
        # relevance model's terms, and the likelihood is compared from there on.
        x = step(np.concatenate([theta, gamma]))
        loglik = log_likelihood(x)
        for n_iter in range(1, self.max_iter + 1):
            x1 = step(x)
            if accelerate:
                x2 = step(x1)
                r, v = x1 - x, x2 - 2 * x1 + x
                # SQUAREM's step length (their S3); alpha <= -1 keeps the extrapolation at
                # least as long as the two plain EM steps (alpha = -1 gives x2 itself).
                alpha = min(-np.sqrt((r @ r) / (v @ v)), -1.0) if v @ v > 0 else -1.0
                candidate = step(np.clip(x - 2 * alpha * r + alpha**2 * v, EPS, 1 - EPS))
                new, new_loglik = max((candidate, log_likelihood(candidate)),
                                      (x2, log_likelihood(x2)), key=lambda pair: pair[1])
            else:
                new, new_loglik = x1, log_likelihood(x1)
            # Exact EM steps never lower the likelihood; a classifier's M-step is not
            # exact, and once its noise outweighs the gain there is nothing left to gain.
            if not sampled and new_loglik - loglik <= self.tol * state.n_slots:
                if new_loglik > loglik:
                    x, loglik = new, new_loglik
                return x[:k], x[k:], loglik, n_iter, True
            x, loglik = new, new_loglik
        return x[:k], x[k:], loglik, self.max_iter, sampled


def _distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the distinct rows of ``x`` and those rows in code order (polars ranks rows
    by hashing; NumPy's ``unique(axis=0)`` sorts them as raw bytes, far slower)."""
    frame = pl.DataFrame(x, schema=[f"x{j}" for j in range(x.shape[1])])
    code, distinct = encode(frame, frame.columns)
    return code, distinct.to_numpy()


class _State:
    """The log as cells (group, position, slots, clicks) and the EM's steps over them."""

    def __init__(self, g: np.ndarray, p: np.ndarray, shown: np.ndarray, clicked: np.ndarray,
                 n_groups: int, k: int, shown_at: np.ndarray) -> None:
        self.g, self.p, self.shown, self.clicked = g, p, shown, clicked
        self.missed = shown - clicked
        self.n_groups, self.k, self.shown_at = n_groups, k, shown_at
        self.shown_by_group = np.bincount(g, weights=shown, minlength=n_groups)
        self.n_slots = float(shown.sum())

    def start(self) -> tuple[np.ndarray, np.ndarray]:
        """theta from the naive click-through rate by position, gamma from the clicks each
        group got against the examination its slots had under that theta."""
        ctr = np.bincount(self.p, weights=self.clicked, minlength=self.k) / self.shown_at
        theta = np.clip(ctr / ctr.max(), EPS, 1 - EPS)
        expected = np.bincount(self.g, weights=self.shown * theta[self.p],
                               minlength=self.n_groups)
        clicked = np.bincount(self.g, weights=self.clicked, minlength=self.n_groups)
        return theta, np.clip(clicked / expected, EPS, 1 - EPS)

    def posteriors(self, theta: np.ndarray, gamma: np.ndarray,
                   rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per cell, the expected number of examined and of relevant slots given the clicks
        (with ``rng``, the relevant ones drawn instead of expected)."""
        t, r = theta[self.p], gamma[self.g]
        unclicked = 1 - t * r
        examined = self.clicked + self.missed * t * (1 - r) / unclicked
        relevant_if_missed = (1 - t) * r / unclicked
        if rng is None:
            relevant = self.clicked + self.missed * relevant_if_missed
        else:
            relevant = self.clicked + rng.binomial(self.missed.astype(np.int64),
                                                   relevant_if_missed)
        return examined, relevant

    def theta(self, examined: np.ndarray) -> np.ndarray:
        return np.bincount(self.p, weights=examined, minlength=self.k) / self.shown_at

    def gamma(self, relevant: np.ndarray) -> np.ndarray:
        return np.bincount(self.g, weights=relevant, minlength=self.n_groups) \
            / self.shown_by_group

    def log_likelihood(self, theta: np.ndarray, gamma: np.ndarray) -> float:
        click = theta[self.p] * gamma[self.g]
        return float(self.clicked @ np.log(click) + self.missed @ np.log1p(-click))

