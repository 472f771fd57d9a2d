"""The rewrite gate: rewrite a query only when a calibrated rewriter is confident enough, and
never a query that already succeeds.

A rewrite can hurt: a query that found what the user wanted can lose it. The gate follows the
"self-aware" rewriting of "Self-Aware Feedback-Based Self-Learning in Large-Scale
Conversational AI" (2022): act only where the evidence says the rewrite wins. For each query,
in this order:

1. **already succeeds**: the query's own observed success rate (the posterior mean of
   :meth:`models.rewrite.markov.MarkovRewriter.stats`) is at least ``max_original_success``;
   nothing is rewritten, whatever the candidates say.
2. The candidate: the **Markov** rewrite when the query was seen at least ``min_count``
   times and the Markov rewrite's calibrated confidence passes the threshold (logged
   evidence about this very query beats a model's guess); otherwise the **LLM** rewrite
   when there is one that changes the query (it also covers queries never seen); otherwise
   the Markov rewrite.
   **no candidate** when neither rewriter proposes anything.
3. **identical**: the candidate normalizes to the query itself.
4. **below threshold**: its calibrated confidence (:mod:`models.rewrite.calibration`,
   P(the rewrite succeeds)) is under the threshold.
5. **rewritten** otherwise.

The threshold is a hyper-parameter until :meth:`RewriteGate.fit` picks ``threshold_`` on
validation outcomes with :func:`fit_threshold`: the threshold of highest success among those
whose harm rate (a query that succeeded as typed and fails after the rewrite, over all
validation queries) is at most ``max_harm``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from models.rewrite.calibration import IsotonicCalibrator
from models.rewrite.markov import Rewrite
from models.rewrite.mining import normalize_query

#: Why the gate did what it did, as logged with the impression.
REASONS = ("rewritten", "already succeeds", "below threshold", "no candidate", "identical")


@dataclass(frozen=True)
class RewriteDecision:
    """What the gate did with ``query``: ``output`` is the query to search with (the rewrite
    when ``rewritten``, else the query as given); ``source`` names the rewriter of the
    candidate considered, with its raw ``confidence`` and ``calibrated`` confidence (None
    when there was no candidate); ``reason`` is one of :data:`REASONS`; ``original_success``
    is the query's own observed success rate (None when never seen)."""

    query: str
    rewritten: bool
    output: str
    reason: str
    source: str | None = None
    confidence: float | None = None
    calibrated: float | None = None
    original_success: float | None = None
    why: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"reason={self.reason!r} must be one of {', '.join(REASONS)}")
        if self.rewritten != (self.reason == "rewritten"):
            raise ValueError(f"rewritten={self.rewritten} must be True exactly when "
                             f"reason is 'rewritten' (reason={self.reason!r})")
        for name in ("confidence", "calibrated", "original_success"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        if not self.rewritten and self.output != self.query:
            raise ValueError(f"output={self.output!r} must be the query {self.query!r} "
                             "when it is not rewritten")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the impression log."""
        out = asdict(self)
        out["why"] = dict(self.why)
        return out


class Rewriter(Protocol):
    def rewrite(self, queries: Sequence[str]) -> Sequence[Rewrite | None]: ...


def threshold_curve(calibrated: ArrayLike, original_success: ArrayLike,
                    rewrite_success: ArrayLike) -> pl.DataFrame:
    """``threshold, rewritten, success, harm`` for every distinct threshold (rewrite where
    ``calibrated >= threshold``; the last row rewrites nothing): the share of queries
    rewritten, the success rate of what is searched, and the harm rate, all over every
    validation query."""
    c = np.asarray(calibrated, dtype=np.float64).ravel()
    before = np.asarray(original_success, dtype=bool).ravel()
    after = np.asarray(rewrite_success, dtype=bool).ravel()
    if not c.size or not c.size == before.size == after.size:
        raise ValueError(f"calibrated, original_success and rewrite_success must be "
                         f"non-empty and of one length (got {c.size}, {before.size}, "
                         f"{after.size})")
    order = np.argsort(-c, kind="stable")
    c, before, after = c[order], before[order], after[order]
    # Rewriting the top j queries: gains and harms accumulate down the sorted list.
    gain = np.concatenate([[0], np.cumsum(after.astype(np.int64) - before)])
    harm = np.concatenate([[0], np.cumsum(before & ~after)])
    ends = np.r_[np.flatnonzero(np.diff(c) != 0) + 1, c.size]  # the last of each tie
    n = c.size
    # Rewriting nothing: a threshold just above every confidence.
    never = math.nextafter(max(float(c[0]), 1.0), math.inf)
    return pl.DataFrame({
        "threshold": np.r_[c[ends - 1], never],
        "rewritten": np.r_[ends, 0] / n,
        "success": (before.sum() + np.r_[gain[ends], 0]) / n,
        "harm": np.r_[harm[ends], 0] / n,
    })


def fit_threshold(calibrated: ArrayLike, original_success: ArrayLike,
                  rewrite_success: ArrayLike, max_harm: float = 0.01) -> float:
    """The threshold on calibrated confidence of highest validation success among those of
    harm rate <= ``max_harm`` (ties go to the higher threshold: fewer rewrites for the same
    success). Above every confidence, rewriting nothing, when no threshold keeps harm
    within the target."""
    if not 0 <= max_harm <= 1:
        raise ValueError(f"max_harm={max_harm} must be in [0, 1]")
    curve = threshold_curve(calibrated, original_success, rewrite_success)
    allowed = curve.filter(pl.col("harm") <= max_harm + 1e-12)
    best = allowed.sort(["success", "threshold"], descending=True).row(0, named=True)
    return float(best["threshold"])


class RewriteGate:
    """Decides, for a batch of queries, whether to search with a rewrite (see the module doc).

    Hyper-parameters: ``threshold`` on calibrated confidence, used until :meth:`fit` sets
    ``threshold_``; ``max_harm``, the harm rate :meth:`fit` allows on validation;
    ``max_original_success``: a query whose observed success rate reaches it is never
    rewritten; ``min_count``: observations of a query before its Markov rewrite is preferred
    to the LLM's.

    Learned state (:meth:`fit`): ``calibrators_`` (an :class:`IsotonicCalibrator` per
    rewriter source with at least ``min_calibration`` validation rows; a source without one
    keeps its raw confidence) and ``threshold_``.
    """

    def __init__(self, threshold: float = 0.7, max_harm: float = 0.01,
                 max_original_success: float = 0.5, min_count: int = 1,
                 min_calibration: int = 20) -> None:
        for name, value in (("threshold", threshold), ("max_harm", max_harm),
                            ("max_original_success", max_original_success)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        if min_count < 1:
            raise ValueError(f"min_count={min_count} must be >= 1")
        self.threshold = float(threshold)
        self.max_harm = float(max_harm)
        self.max_original_success = float(max_original_success)
        self.min_count = int(min_count)
        if min_calibration < 2:
            raise ValueError(f"min_calibration={min_calibration} must be >= 2")
        self.min_calibration = int(min_calibration)

    @property
    def active_threshold(self) -> float:
        """``threshold_`` once fitted, ``threshold`` before."""
        return float(self.__dict__.get("threshold_", self.threshold))

    # -- learning ---------------------------------------------------------------------------

    def fit(self, validation: pl.DataFrame) -> RewriteGate:
        """Calibrate each source and pick ``threshold_`` from validation rows ``source,
        confidence, original_success, rewrite_success`` (one row per validation query and
        candidate; booleans for the two outcomes). A source with fewer than
        ``min_calibration`` rows is not calibrated: its raw confidence stands. The harm the
        threshold bounds is counted per row, each candidate as if it were the one chosen: an
        approximation of the gate, which shows one candidate per query
        (``benchmarks/rewrite.py`` measures the gate's own harm)."""
        missing = sorted({"source", "confidence", "original_success", "rewrite_success"}
                         - set(validation.columns))
        if missing:
            raise ValueError(f"validation lacks columns {missing}")
        if validation.is_empty():
            raise ValueError("validation holds no rows to fit the gate on")
        calibrators: dict[str, IsotonicCalibrator] = {}
        calibrated = validation["confidence"].cast(pl.Float64).to_numpy().copy()
        for (source,), part in validation.with_row_index("_row").group_by(
                "source", maintain_order=True):
            calibrator = IsotonicCalibrator(self.min_calibration)
            if part.height < calibrator.min_samples:
                continue  # too few outcomes to calibrate on: its raw confidence stands
            calibrator.fit(part["confidence"].to_numpy(), part["rewrite_success"].to_numpy())
            calibrators[str(source)] = calibrator
            calibrated[part["_row"].to_numpy()] = calibrator.predict(
                part["confidence"].to_numpy())
        self.calibrators_ = calibrators
        self.threshold_ = fit_threshold(calibrated, validation["original_success"].to_numpy(),
                                        validation["rewrite_success"].to_numpy(),
                                        self.max_harm)
        return self

    def calibrate(self, source: str, confidence: float) -> float:
        calibrator = self.__dict__.get("calibrators_", {}).get(source)
        return float(calibrator.predict(confidence)) if calibrator is not None \
            else float(confidence)

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, queries: Sequence[str], stats: pl.DataFrame | None = None,
               markov: Sequence[Rewrite | None] | None = None,
               llm: Sequence[Rewrite | None] | None = None) -> list[RewriteDecision]:
        """One decision per query. ``stats``: the queries' own outcomes in the same order,
        columns ``successes, failures, success_rate`` (nulls for unseen queries), as
        :meth:`MarkovRewriter.stats` returns; ``markov`` and ``llm``: the candidates of each
        rewriter in the same order (None where it proposes nothing)."""
        n = len(queries)
        for name, given in (("stats", stats), ("markov", markov), ("llm", llm)):
            if given is not None and len(given) != n:
                raise ValueError(f"{name} has {len(given)} rows for {n} queries")
        none: list[Rewrite | None] = [None] * n
        markov, llm = markov or none, llm or none
        if stats is None:
            rates: list[float | None] = [None] * n
            seen = [0] * n
        else:
            rates = stats["success_rate"].to_list()
            seen = (stats["successes"].cast(pl.Int64).fill_null(0)
                    + stats["failures"].cast(pl.Int64).fill_null(0)).to_list()
        threshold = self.active_threshold
        return [self._one(q, rate, count, m, g, threshold)
                for q, rate, count, m, g in zip(queries, rates, seen, markov, llm, strict=True)]

    def _one(self, query: str, rate: float | None, count: int, markov: Rewrite | None,
             llm: Rewrite | None, threshold: float) -> RewriteDecision:
        original = None if rate is None else float(rate)
        if original is not None and original >= self.max_original_success:
            return RewriteDecision(query, False, query, "already succeeds",
                                   original_success=original)
        m, g = ((r, self.calibrate(r.source, r.confidence)) if r is not None else None
                for r in (markov, llm))
        if m is None and g is None:
            return RewriteDecision(query, False, query, "no candidate",
                                   original_success=original)
        # An LLM answer that only echoes the query yields to a Markov candidate.
        g_changes = g is not None and normalize_query(g[0].rewrite) != normalize_query(query)
        if m is not None and count >= self.min_count and m[1] >= threshold:
            rewrite, calibrated = m
        elif g is not None and (g_changes or m is None):
            rewrite, calibrated = g
        else:
            assert m is not None  # one of the two is there
            rewrite, calibrated = m
        fields = dict(source=rewrite.source, confidence=float(rewrite.confidence),
                      calibrated=min(max(calibrated, 0.0), 1.0), original_success=original,
                      why=dict(rewrite.why))
        if normalize_query(rewrite.rewrite) == normalize_query(query):
            return RewriteDecision(query, False, query, "identical", **fields)
        if calibrated < threshold:
            return RewriteDecision(query, False, query, "below threshold", **fields)
        return RewriteDecision(query, True, rewrite.rewrite, "rewritten", **fields)

    def rewrite(self, queries: Sequence[str], markov: Any = None,
                llm: Rewriter | None = None) -> list[RewriteDecision]:
        """:meth:`decide` with the candidates and stats looked up: ``markov`` a fitted
        :class:`~models.rewrite.markov.MarkovRewriter` (its ``stats`` give the queries' own
        outcomes), ``llm`` anything with ``rewrite(queries) -> [Rewrite | None]``. The LLM
        is asked only about the queries the gate has not already settled."""
        queries = list(queries)
        stats = markov.stats(queries) if markov is not None else None
        proposals = markov.rewrite(queries) if markov is not None else None
        guesses: list[Rewrite | None] | None = None
        if llm is not None:
            rates = stats["success_rate"].to_list() if stats is not None else [None] * len(
                queries)
            ask = [i for i, rate in enumerate(rates)
                   if rate is None or rate < self.max_original_success]
            guesses = [None] * len(queries)
            for i, got in zip(ask, llm.rewrite([queries[i] for i in ask]), strict=True):
                guesses[i] = got
        return self.decide(queries, stats, proposals, guesses)

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"threshold": self.threshold, "max_harm": self.max_harm,
                                 "max_original_success": self.max_original_success,
                                 "min_count": self.min_count,
                                 "min_calibration": self.min_calibration}
        if "threshold_" in self.__dict__:
            state["threshold_"] = self.threshold_
            state["calibrators_"] = {s: c.state_dict() for s, c in self.calibrators_.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> RewriteGate:
        self.__init__(state["threshold"], state["max_harm"],  # type: ignore[misc]
                      state["max_original_success"], state["min_count"],
                      state.get("min_calibration", 20))
        for name in ("threshold_", "calibrators_"):
            self.__dict__.pop(name, None)
        if "threshold_" in state:
            self.threshold_ = float(state["threshold_"])
            self.calibrators_ = {s: IsotonicCalibrator().load_state_dict(c)
                                 for s, c in state["calibrators_"].items()}
        return self
