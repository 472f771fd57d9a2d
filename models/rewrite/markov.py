"""The absorbing-Markov query rewriter, with beta-posterior confidence.

Ponnusamy et al., "Feedback-Based Self-Learning in Large-Scale Conversational AI Agents",
AAAI 2020: every normalized query is a transient state of a Markov chain, and two absorbing
states, success and failure, end each chain of reformulations. From the counts of
:func:`models.rewrite.mining.transitions`, a query step goes to ``success`` when its results
succeeded, to the next query of its session when the user reformulated, to ``failure`` when
the session ended there. Writing ``Q`` (n x n) for the transient-to-transient probabilities
and ``R`` (n x 2) for transient-to-absorbing, the probabilities of ending in each absorbing
state from each query are ``B = (I - Q)^-1 R`` (the fundamental matrix ``N = (I - Q)^-1``
sums the expected visits to every query); we solve the sparse system ``(I - Q) B = R``
rather than invert. ``I - Q`` is invertible because every session ends in an absorbing
state, so every query can reach one.

The best rewrite of a query ``q`` is, among the queries a session reached from ``q`` after
``q`` failed (the pairs of :func:`models.rewrite.mining.mine_reformulations`), the one with
the highest probability of absorption into success.

Confidence follows "Self-Aware Feedback-Based Self-Learning in Large-Scale Conversational
AI" (2022): each (query, rewrite) pair's own outcomes, the successes and failures of the
rewrite's results after the query failed, update a ``Beta(a0 + successes, b0 + failures)``
posterior on its success rate. ``Rewrite.confidence`` is the posterior **mean**: it is the
posterior predictive probability that the rewrite's next results succeed, so it is a
probability that a gate can calibrate against observed outcomes and threshold; the lower
credible bound (``why["lower"]``) is kept beside it for a gate that wants to be
conservative with little evidence. A candidate whose confidence falls below
``min_confidence`` is not eligible, so a rewrite whose own results turn bad loses its place
to the next candidate as :meth:`MarkovRewriter.partial_fit` adds that feedback (its
absorption probability drops as well).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve
from scipy.special import betaincinv
from sklearn.exceptions import NotFittedError

from models.rewrite.mining import (
    FAILURE,
    REFORMULATED,
    SUCCESS,
    mine_reformulations,
    normalize_query,
    transitions,
)

_COUNTS = {"query": pl.String, "outcome": pl.String, "next": pl.String, "count": pl.UInt32}
_PAIRS = {"query": pl.String, "rewrite": pl.String, "count": pl.UInt32,
          "successes": pl.UInt32, "failures": pl.UInt32, "sessions": pl.UInt32}


@dataclass(frozen=True)
class Rewrite:
    """A rewrite of ``original`` into ``rewrite`` by ``source``, with the rewriter's
    ``confidence`` (a probability in [0, 1]) and ``why``: the numbers it decided on, for the
    impression log."""

    original: str
    rewrite: str
    confidence: float
    source: str = "markov"
    why: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("original", "rewrite", "source"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}={value!r} must be a non-empty string")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence={self.confidence} must be in [0, 1]")


class MarkovRewriter:
    """Rewrites failing queries by absorption into success (see the module doc).

    Hyper-parameters: ``prior`` (a0, b0) of the beta posteriors; ``credible``, the level of
    the lower credible bound reported in ``why["lower"]``; ``min_count``, the pair
    observations a candidate needs; ``min_confidence``, the posterior mean it needs;
    ``max_success``: a query whose own success rate (posterior mean of its steps' outcomes)
    is at least this is never rewritten. A rewrite must also promise more than the query
    gets: its absorption probability must exceed the query's own success rate.

    Learned state: ``counts_`` (summed :func:`~models.rewrite.mining.transitions`),
    ``pairs_`` (summed :func:`~models.rewrite.mining.mine_reformulations`), ``queries_``
    (one row per query state: ``query, state, successes, failures, success_rate,
    absorption``), ``absorption_`` ((n, 2): P(success), P(failure) from each state) and
    ``rewrites_`` (the best eligible rewrite of each query, what :meth:`rewrite` looks up).
    """

    def __init__(self, prior: tuple[float, float] = (1.0, 1.0), credible: float = 0.9,
                 min_count: int = 1, min_confidence: float = 0.5,
                 max_success: float = 0.5) -> None:
        if len(prior) != 2 or not all(np.isfinite(prior)) or min(prior) <= 0:
            raise ValueError(f"prior={prior} must be two finite numbers > 0 (a0, b0)")
        if not 0 < credible < 1:
            raise ValueError(f"credible={credible} must be in (0, 1)")
        if min_count < 1:
            raise ValueError(f"min_count={min_count} must be >= 1")
        for name, value in (("min_confidence", min_confidence), ("max_success", max_success)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        self.prior = (float(prior[0]), float(prior[1]))
        self.credible = credible
        self.min_count = min_count
        self.min_confidence = min_confidence
        self.max_success = max_success

    # -- learning ---------------------------------------------------------------------------

    def fit(self, steps: pl.LazyFrame | pl.DataFrame) -> MarkovRewriter:
        """Learn from :func:`~models.rewrite.mining.query_outcomes` rows (whole sessions),
        forgetting anything learned before."""
        for name in ("counts_", "pairs_"):
            self.__dict__.pop(name, None)
        return self.partial_fit(steps)

    def partial_fit(self, steps: pl.LazyFrame | pl.DataFrame) -> MarkovRewriter:
        """Add the counts of more sessions (a batch must hold whole sessions: a session cut
        in two would end in ``failure`` in the first batch) and solve the chain again."""
        counts, pairs = pl.collect_all([transitions(steps), mine_reformulations(steps)])
        return self.partial_fit_counts(counts, pairs)

    def partial_fit_counts(self, counts: pl.DataFrame,
                           pairs: pl.DataFrame | None = None) -> MarkovRewriter:
        """Add already mined counts (:func:`~models.rewrite.mining.transitions` and
        :func:`~models.rewrite.mining.mine_reformulations` tables, e.g. summed over a long
        history) and solve the chain again; no ``pairs``, no candidates."""
        pairs = pl.DataFrame(schema=_PAIRS) if pairs is None else pairs
        counts = counts.select(list(_COUNTS)).cast(_COUNTS)
        pairs = pairs.select(list(_PAIRS)).cast(_PAIRS)
        if "counts_" in self.__dict__:
            counts = pl.concat([self.counts_, counts])
            pairs = pl.concat([self.pairs_, pairs])
        self.counts_ = (counts.group_by("query", "outcome", "next").agg(pl.col("count").sum())
                        .sort("query", "outcome", "next", nulls_last=True))
        # ``sessions`` adds up because a batch holds whole sessions.
        self.pairs_ = (pairs.group_by("query", "rewrite").agg(pl.exclude("query", "rewrite")
                                                              .sum())
                       .sort("query", "rewrite"))
        self._solve()
        return self

    def _solve(self) -> None:
        counts = self.counts_
        names = pl.concat([counts["query"], counts["next"].drop_nulls()]).unique().sort()
        states = pl.DataFrame({"query": names,
                               "state": pl.int_range(len(names), eager=True, dtype=pl.Int64)})
        n = len(names)
        rows = counts.join(states, on="query").join(
            states.rename({"query": "next", "state": "to"}), on="next", how="left")
        frm = rows["state"].to_numpy()
        total = np.bincount(frm, weights=rows["count"].to_numpy(), minlength=n)
        # A state with no step of its own (only possible in hand-made counts) is absorbed in
        # failure: nothing says it ever succeeds.
        prob = rows["count"].to_numpy() / np.where(total > 0, total, 1.0)[frm]
        outcome = rows["outcome"].to_numpy()
        moves = outcome == REFORMULATED
        q = sp.csr_matrix((prob[moves], (frm[moves], rows["to"].to_numpy()[moves].astype(
            np.int64))), shape=(n, n))
        r = np.zeros((n, 2))
        for column, kind in enumerate((SUCCESS, FAILURE)):
            np.add.at(r[:, column], frm[outcome == kind], prob[outcome == kind])
        r[total == 0, 1] = 1.0
        b = spsolve(sp.identity(n, format="csc") - q.tocsc(), r) if n else r
        self.absorption_ = np.asarray(b, dtype=np.float64).reshape(n, 2)
        a0, b0 = self.prior
        own = np.zeros((n, 2))
        np.add.at(own[:, 0], frm[outcome == SUCCESS], rows["count"].to_numpy()[
            outcome == SUCCESS])
        own[:, 1] = total - own[:, 0]
        self.queries_ = states.with_columns(
            successes=pl.Series(own[:, 0]).cast(pl.UInt32),
            failures=pl.Series(own[:, 1]).cast(pl.UInt32),
            success_rate=pl.Series((a0 + own[:, 0]) / (a0 + b0 + total)),
            absorption=pl.Series(self.absorption_[:, 0]))
        self.rewrites_ = self._best()

    def _best(self) -> pl.DataFrame:
        a0, b0 = self.prior
        s = pl.col("successes").cast(pl.Float64)
        f = pl.col("failures").cast(pl.Float64)
        original = self.queries_.select(
            "query", original_success="success_rate", original_absorption="absorption")
        target = self.queries_.select(rewrite="query", absorption="absorption")
        pairs = self.pairs_.with_columns(confidence=(a0 + s) / (a0 + b0 + s + f))
        pairs = pairs.with_columns(lower=pl.Series(
            betaincinv(a0 + pairs["successes"].to_numpy().astype(np.float64),
                       b0 + pairs["failures"].to_numpy().astype(np.float64),
                       1.0 - self.credible), dtype=pl.Float64))
        return (
            pairs.join(original, on="query").join(target, on="rewrite")
            .filter((pl.col("count") >= self.min_count)
                    & (pl.col("confidence") >= self.min_confidence)
                    & (pl.col("original_success") < self.max_success)
                    & (pl.col("absorption") > pl.col("original_success")))
            .sort("query", "absorption", "confidence", "rewrite",
                  descending=[False, True, True, False])
            .unique("query", keep="first", maintain_order=True)
        )

    # -- using it ----------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if "rewrites_" not in self.__dict__:
            raise NotFittedError("this MarkovRewriter is not fitted yet: call fit(steps) first")

    def rewrite(self, queries: Sequence[str]) -> list[Rewrite | None]:
        """The best rewrite of each query, or None where there is none: an unseen query, one
        that already succeeds often enough, or no eligible candidate. One join for the batch;
        ``Rewrite.original`` is the query as given."""
        self._check_fitted()
        found = self.lookup(queries)
        out: list[Rewrite | None] = []
        for given, row in zip(queries, found.iter_rows(named=True), strict=True):
            if row["rewrite"] is None:
                out.append(None)
                continue
            why = {name: float(row[name]) for name in (
                "absorption", "original_absorption", "original_success", "count",
                "successes", "failures", "lower")}
            out.append(Rewrite(given, row["rewrite"], float(row["confidence"]), "markov", why))
        return out

    def lookup(self, queries: Sequence[str]) -> pl.DataFrame:
        """The rows of ``rewrites_`` for these queries, in order (nulls where none)."""
        self._check_fitted()
        asked = pl.DataFrame({"query": pl.Series(list(queries), dtype=pl.String)})
        asked = asked.select(normalize_query(pl.col("query")).alias("query"))
        return asked.join(self.rewrites_, on="query", how="left", maintain_order="left")

    def stats(self, queries: Sequence[str]) -> pl.DataFrame:
        """What a gate needs about the queries themselves, in order: ``query, successes,
        failures, success_rate, absorption`` (nulls for queries never seen)."""
        self._check_fitted()
        asked = pl.DataFrame({"query": pl.Series(list(queries), dtype=pl.String)})
        asked = asked.select(normalize_query(pl.col("query")).alias("query"))
        return asked.join(self.queries_.drop("state"), on="query", how="left",
                          maintain_order="left")

    def candidates(self, query: str) -> pl.DataFrame:
        """Every candidate rewrite of ``query`` with its absorption probability and
        confidence, eligible or not, best first (for inspection)."""
        self._check_fitted()
        a0, b0 = self.prior
        s, f = pl.col("successes").cast(pl.Float64), pl.col("failures").cast(pl.Float64)
        return (self.pairs_.filter(pl.col("query") == normalize_query(query))
                .join(self.queries_.select(rewrite="query", absorption="absorption"),
                      on="rewrite")
                .with_columns(confidence=(a0 + s) / (a0 + b0 + s + f))
                .sort("absorption", "confidence", descending=True))

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and counts as JSON-ready lists; the chain is solved again on
        load."""
        self._check_fitted()
        return {"prior": list(self.prior), "credible": self.credible,
                "min_count": self.min_count, "min_confidence": self.min_confidence,
                "max_success": self.max_success, "counts": self.counts_.to_dict(as_series=False),
                "pairs": self.pairs_.to_dict(as_series=False)}

    def load_state_dict(self, state: Mapping[str, Any]) -> MarkovRewriter:
        self.__init__(tuple(state["prior"]), state["credible"], state["min_count"],
                      state["min_confidence"], state["max_success"])  # type: ignore[misc]
        for name in ("counts_", "pairs_"):
            self.__dict__.pop(name, None)
        return self.partial_fit_counts(pl.DataFrame(state["counts"], schema=_COUNTS),
                         pl.DataFrame(state["pairs"], schema=_PAIRS))
