"""Mining query reformulations from sessionized search logs.

Three pure transforms, each a polars ``LazyFrame`` in, ``LazyFrame`` out:

- :func:`query_outcomes`: one row per typed query, in its session, with whether the results
  it got **succeeded**: a click the user stayed on (dwell at least ``long_dwell_s``, or no
  dwell logged for it), or a like, love or share on that impression. A query **failed** when
  it got no click, only quick returns (clicks with a short dwell), or was the last of an
  abandoned session. Sessions come from :func:`ingest.sessions.query_chains` (cut on all
  activity by an inactivity gap).
- :func:`transitions`: what followed each query step, the input of the absorbing Markov
  chain of :class:`models.rewrite.markov.MarkovRewriter`: ``success`` when it succeeded,
  ``reformulated`` to the next query of the session when it failed and the user typed again,
  ``failure`` when it failed and the session ended.
- :func:`mine_reformulations`: (query, rewrite) pairs where ``query`` failed and ``rewrite``
  was typed later in the same failing chain (before any success), with the rewrite's own
  outcomes: the training pairs of any rewriter (``successes > 0`` gives the pairs whose
  rewrite worked).

Query text is compared after :func:`normalize_query` (lowercase, runs of whitespace made one
space, ends stripped); every table here holds normalized text.
"""

from __future__ import annotations

from typing import overload

import polars as pl

from ingest.sessions import DEFAULT_GAP_S, query_chains

#: Outcomes of a query step in :func:`transitions`.
SUCCESS, FAILURE, REFORMULATED = "success", "failure", "reformulated"
#: Reactions that make the impression they answer a success, whatever the dwell.
POSITIVE_REACTIONS = ("like", "love", "share")
#: Dwell of the "satisfied click" convention (Fox et al., "Evaluating implicit measures to
#: improve web search", TOIS 2005): a shorter stay is a quick return to the results.
DEFAULT_LONG_DWELL_S = 30.0

#: Columns of :func:`query_outcomes`, the input of the other transforms.
STEP_COLUMNS = ("session_id", "step", "ts", "request_id", "query", "success")


@overload
def normalize_query(text: str) -> str: ...
@overload
def normalize_query(text: pl.Expr) -> pl.Expr: ...
def normalize_query(text: str | pl.Expr) -> str | pl.Expr:
    """The one normalization of query text: lowercase, whitespace runs made one space, ends
    stripped. Takes a string, or a polars expression for whole columns (same result)."""
    if isinstance(text, pl.Expr):
        return text.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    return " ".join(text.lower().split())


def query_outcomes(
    queries: pl.LazyFrame,
    clicks: pl.LazyFrame,
    dwells: pl.LazyFrame | None = None,
    reactions: pl.LazyFrame | None = None,
    *,
    gap_s: float = DEFAULT_GAP_S,
    long_dwell_s: float = DEFAULT_LONG_DWELL_S,
) -> pl.LazyFrame:
    """One row per query event: ``session_id, step, ts, request_id, query, success`` (see the
    module doc), ``step`` counting from 0 within the session. Frames have the log store's
    schemas (:data:`ingest.frames.SCHEMAS`)."""
    if not long_dwell_s >= 0:
        raise ValueError(f"long_dwell_s={long_dwell_s} must be >= 0")
    others = [f for f in (dwells, reactions) if f is not None]
    chains = query_chains(queries, clicks, others, gap_s=gap_s)
    # A click is a success unless its dwell says the user came straight back; a click whose
    # dwell was never logged keeps the benefit of the doubt.
    click_ok = clicks.select("request_id", "item_id").unique()
    if dwells is not None:
        stay = dwells.group_by("request_id", "item_id").agg(seconds=pl.col("seconds").sum())
        click_ok = click_ok.join(stay, on=["request_id", "item_id"], how="left").filter(
            pl.col("seconds").is_null() | (pl.col("seconds") >= long_dwell_s))
    good = [click_ok.select("request_id")]
    if reactions is not None:
        good.append(reactions.filter(pl.col("reaction").is_in(POSITIVE_REACTIONS))
                    .select("request_id"))
    succeeded = pl.concat(good).unique().with_columns(success=pl.lit(True))
    return (
        chains.select("session_id", "request_ids", "queries",
                      step=pl.int_ranges(pl.col("queries").list.len()))
        .explode("request_ids", "queries", "step")
        .rename({"request_ids": "request_id", "queries": "query"})
        .join(queries.select("request_id", "ts").unique("request_id"), on="request_id",
              how="left")
        .join(succeeded, on="request_id", how="left")
        .select("session_id", pl.col("step").cast(pl.Int32), "ts", "request_id",
                normalize_query(pl.col("query")).alias("query"),
                pl.col("success").fill_null(False))
    )


def _checked(steps: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    steps = steps.lazy()
    missing = sorted(set(("session_id", "step", "query", "success"))
                     - set(steps.collect_schema().names()))
    if missing:
        raise ValueError(f"steps lack columns {missing}; build them with query_outcomes")
    return steps.with_columns(normalize_query(pl.col("query")).alias("query")).sort(
        "session_id", "step")


def _with_chain(steps: pl.LazyFrame) -> pl.LazyFrame:
    """Number the failing chains of each session: a success closes a chain, and what the
    user types after it is a new need, not a reformulation."""
    closed = pl.col("success").cast(pl.Int32).cum_sum().shift(1, fill_value=0)
    return steps.with_columns(chain=closed.over("session_id"))


def transitions(steps: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """``query, outcome, next, count``: how often a step of ``query`` ended in ``success``,
    ``failure`` or ``reformulated`` to the query ``next`` (null for the other two), from
    :func:`query_outcomes` rows."""
    steps = _checked(steps)
    following = pl.col("query").shift(-1).over("session_id")
    outcome = (pl.when(pl.col("success")).then(pl.lit(SUCCESS))
               .when(following.is_null()).then(pl.lit(FAILURE))
               .otherwise(pl.lit(REFORMULATED)))
    return (
        steps.with_columns(outcome=outcome, next=following)
        .with_columns(next=pl.when(pl.col("outcome") == REFORMULATED).then("next"))
        .group_by("query", "outcome", "next")
        .agg(count=pl.len().cast(pl.UInt32))
        .sort("query", "outcome", "next", nulls_last=True)
    )


def mine_reformulations(steps: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """``query, rewrite, count, successes, failures, sessions``: every (failed query, later
    query of the same failing chain) pair, ``rewrite != query``, from :func:`query_outcomes`
    rows. ``count`` counts the rewrite's occurrences after the query (a query typed twice
    before one rewrite counts once), ``successes`` and ``failures`` split them by the
    rewrite's own results, ``sessions`` counts distinct sessions."""
    steps = _with_chain(_checked(steps)).select("session_id", "chain", "step", "query",
                                                "success")
    later = steps.rename({"step": "rewrite_step", "query": "rewrite",
                          "success": "rewrite_success"}).drop("chain")
    return (
        steps.join(later, on="session_id")
        # Same chain: the rewrite came before the chain's success, or is it.
        .filter((pl.col("rewrite_step") > pl.col("step"))
                & (pl.col("rewrite") != pl.col("query"))
                & ~pl.col("success"))
        .join(steps.select("session_id", rewrite_step="step", rewrite_chain="chain"),
              on=["session_id", "rewrite_step"])
        .filter(pl.col("rewrite_chain") == pl.col("chain"))
        .unique(["session_id", "query", "rewrite_step"])
        .group_by("query", "rewrite")
        .agg(count=pl.len().cast(pl.UInt32),
             successes=pl.col("rewrite_success").sum().cast(pl.UInt32),
             failures=(~pl.col("rewrite_success")).sum().cast(pl.UInt32),
             sessions=pl.col("session_id").n_unique().cast(pl.UInt32))
        .sort("query", "successes", "rewrite", descending=[False, True, False])
    )
