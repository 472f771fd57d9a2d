"""The impression-click join: one row per shown slot, with what the user did with it.

Every learner trains on this table. Shown-but-not-clicked slots stay in it as the
exposure-aware negatives: the item *was* examined with the logged propensity, which is what
lets an estimator tell "not shown" from "shown and ignored".

Columns: ``request_id, user_id, ts, item_id, position, score, propensity, policy,
experiment, variant, query, clicked, clicks, reactions, dwell``.
"""

from __future__ import annotations

import os

import polars as pl

from ingest.logstore import scan_all

_KEY = ["request_id", "item_id"]


def impression_click_join(
    impressions: pl.LazyFrame,
    clicks: pl.LazyFrame,
    reactions: pl.LazyFrame | None = None,
    dwells: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Join feedback onto shown slots by (request_id, item_id); see the module doc.

    An impression logged twice (same ``request_id``) counts once; feedback with no
    impression is left out, since there is no propensity to weight it with.
    """
    slots = (
        impressions.unique("request_id", keep="first", maintain_order=True)
        .select("request_id", "user_id", "ts", "policy", "experiment", "variant", "query",
                "slots")
        .explode("slots")
        .unnest("slots")
    )
    click_stats = clicks.group_by(_KEY).agg(clicks=pl.len().cast(pl.Int32))
    joined = slots.join(click_stats, on=_KEY, how="left")
    if reactions is not None:
        joined = joined.join(
            reactions.group_by(_KEY).agg(reactions=pl.col("reaction").unique().sort()),
            on=_KEY, how="left")
    else:
        joined = joined.with_columns(reactions=pl.lit(None, pl.List(pl.String)))
    if dwells is not None:
        joined = joined.join(dwells.group_by(_KEY).agg(dwell=pl.col("seconds").sum()),
                             on=_KEY, how="left")
    else:
        joined = joined.with_columns(dwell=pl.lit(None, pl.Float64))
    return joined.with_columns(
        clicks=pl.col("clicks").fill_null(0),
        clicked=pl.col("clicks").fill_null(0) > 0,
        reactions=pl.col("reactions").fill_null(pl.lit([], pl.List(pl.String))),
        dwell=pl.col("dwell").fill_null(0.0),
    ).select(
        "request_id", "user_id", "ts", "item_id", "position", "score", "propensity", "policy",
        "experiment", "variant", "query", "clicked", "clicks", "reactions", "dwell",
    )


def join_log(root: str | os.PathLike[str]) -> pl.LazyFrame:
    """The join over everything committed in a parquet log store."""
    frames = scan_all(root)
    return impression_click_join(frames["impression"], frames["click"], frames["reaction"],
                                 frames["dwell"])
