"""The impression-click join: one row per shown slot, with what the user did with it.

Every learner trains on this table. Shown-but-not-clicked slots stay in it as the
exposure-aware negatives: the item *was* examined with the logged propensity, which is what
lets an estimator tell "not shown" from "shown and ignored".

Columns: ``request_id, user_id, ts, item_id, position, score, propensity, policy,
experiment, variant, query, context, clicked, clicks, reactions, dwell``. ``context`` is
the impression's JSON text (everything the policy saw, e.g. user features), repeated on
each of its slots; :func:`expand_context` turns it into one column per key.
"""

from __future__ import annotations

import os

import polars as pl

from ingest.frames import empty_frame
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
    reactions = empty_frame("reaction").lazy() if reactions is None else reactions
    dwells = empty_frame("dwell").lazy() if dwells is None else dwells
    # The slot fields take the place of ``slots``, and each join adds its columns at the
    # end: that is the column order of the module doc.
    return (
        impressions.unique("request_id", keep="first", maintain_order=True)
        .select("request_id", "user_id", "ts", "slots", "policy", "experiment", "variant",
                "query", "context")
        .explode("slots")
        .unnest("slots")
        .join(clicks.group_by(_KEY).agg(clicked=pl.len() > 0, clicks=pl.len().cast(pl.Int32)),
              on=_KEY, how="left")
        .join(reactions.group_by(_KEY).agg(reactions=pl.col("reaction").unique().sort()),
              on=_KEY, how="left")
        .join(dwells.group_by(_KEY).agg(dwell=pl.col("seconds").sum()), on=_KEY, how="left")
        .with_columns(pl.col("clicked").fill_null(False), pl.col("clicks").fill_null(0),
                      pl.col("reactions").fill_null([]), pl.col("dwell").fill_null(0.0))
    )


def expand_context(rows: pl.DataFrame, prefix: str = "") -> pl.DataFrame:
    """``rows`` with ``context`` replaced by one column per key of its JSON (``prefix`` +
    key; null where a row lacks the key). Eager, because the keys are only known once the
    JSON has been read."""
    context = rows["context"]
    if context.null_count() == len(context):
        return rows.drop("context")
    decoded = context.str.json_decode(infer_schema_length=None).struct.unnest()
    decoded = decoded.rename({name: prefix + name for name in decoded.columns})
    clashes = sorted(set(decoded.columns) & (set(rows.columns) - {"context"}))
    if clashes:
        raise ValueError(f"context keys {clashes} clash with columns of the join; "
                         f"pass a prefix, e.g. prefix='context.'")
    return pl.concat([rows.drop("context"), decoded], how="horizontal")


def join_log(root: str | os.PathLike[str]) -> pl.LazyFrame:
    """The join over everything committed in a parquet log store."""
    frames = scan_all(root)
    return impression_click_join(frames["impression"], frames["click"], frames["reaction"],
                                 frames["dwell"])
