"""Sessions by inactivity gap, and the chains of queries inside them.

A user's session ends when they are inactive for longer than ``gap_s`` (30 minutes by
default, the usual web-analytics convention). Within a session, the ordered queries form a
chain; each query is marked ``succeeded`` when the impression that answered it got a click.
A failed query followed by one that succeeded is what the query-rewrite learner mines.
"""

from __future__ import annotations

import polars as pl

DEFAULT_GAP_S = 30 * 60.0


def sessionize(events: pl.LazyFrame, gap_s: float = DEFAULT_GAP_S) -> pl.LazyFrame:
    """Add ``session_id`` (``user_id#n``, n from 0) to frames with ``user_id`` and ``ts``."""
    if gap_s <= 0:
        raise ValueError(f"gap_s={gap_s} must be > 0")
    number = ((pl.col("ts").diff() > gap_s).fill_null(True).cum_sum() - 1).over("user_id")
    return events.sort("user_id", "ts", maintain_order=True).with_columns(
        session_id=pl.col("user_id") + "#" + number.cast(pl.String))


def query_chains(
    queries: pl.LazyFrame,
    clicks: pl.LazyFrame,
    others: list[pl.LazyFrame] | None = None,
    gap_s: float = DEFAULT_GAP_S,
) -> pl.LazyFrame:
    """One row per session that has queries: ``session_id, user_id, start, queries,
    request_ids, succeeded`` (lists in time order).

    Sessions are cut on all activity (queries, clicks and any ``others`` with ``user_id``
    and ``ts``), so a user who keeps clicking between two queries stays in one session.
    """
    activity = pl.concat([
        queries.select("user_id", "ts", "request_id", "query"),
        *(f.select("user_id", "ts", request_id=pl.lit(None, pl.String),
                   query=pl.lit(None, pl.String)) for f in (clicks, *(others or []))),
    ])
    clicked = clicks.select("request_id").unique().with_columns(succeeded=pl.lit(True))
    return (
        sessionize(activity, gap_s)
        .filter(pl.col("query").is_not_null())
        .join(clicked, on="request_id", how="left")
        .with_columns(pl.col("succeeded").fill_null(False))
        .sort("user_id", "ts", maintain_order=True)
        .group_by("session_id", maintain_order=True)
        .agg(pl.col("user_id").first(), start=pl.col("ts").min(), queries=pl.col("query"),
             request_ids=pl.col("request_id"), succeeded=pl.col("succeeded"))
    )


def reformulations(chains: pl.LazyFrame) -> pl.LazyFrame:
    """Each failed query and the query the user typed next in the same session:
    ``session_id, failed, next, next_succeeded``."""
    return (
        chains.explode("queries", "succeeded")
        .with_columns(
            next=pl.col("queries").shift(-1).over("session_id"),
            next_succeeded=pl.col("succeeded").shift(-1).over("session_id"),
        )
        .filter(~pl.col("succeeded") & pl.col("next").is_not_null())
        .select("session_id", pl.col("queries").alias("failed"), "next", "next_succeeded")
    )
