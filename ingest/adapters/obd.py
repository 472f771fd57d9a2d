"""The Open Bandit Dataset (Saito et al., NeurIPS 2021 Datasets track) as clickloop events.

Each row of ``men.csv`` (or ``all.csv``, ``women.csv``) is one recommendation: ``item_id``
shown at ``position`` (1..3) with the logging policy's ``propensity_score``, and whether it
was clicked. A row becomes one impression with a single slot (the dataset logs the three
positions as separate rows with their own timestamps) plus a click when ``click == 1``.
OBD has no user id: the four hashed user features identify a context, used as ``user_id``
(``ctx-`` and the first 8 hex digits of each); they and the ``user-item_affinity_*``
columns go into the impression's ``context``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from ingest.adapters import impressions_with_clicks
from ingest.frames import SCHEMAS, EventFrames


def obd_policy_name(path: Path) -> str:
    """``random`` or ``bts`` from OBD's folder layout (``<policy>/<campaign>/<campaign>.csv``)."""
    parts = path.resolve().parts
    return f"obd-{parts[-3]}" if len(parts) >= 3 else "obd"


def read_obd(path: str | os.PathLike[str]) -> pl.DataFrame:
    """The raw OBD rows with an ``ts`` column in epoch seconds and a ``row`` index."""
    frame = pl.read_csv(path)
    first = frame.columns[0]
    if first in ("", "column_1"):
        frame = frame.rename({first: "row"})
    else:
        frame = frame.with_row_index("row")
    required = {"timestamp", "item_id", "position", "click", "propensity_score"}
    missing = required - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not an Open Bandit Dataset file, missing columns "
                         f"{sorted(missing)}")
    return frame.with_columns(
        ts=pl.col("timestamp").str.to_datetime(time_zone="UTC").dt.epoch("us") / 1e6,
    )


def obd_frames(path: str | os.PathLike[str], policy: str | None = None,
               batch_rows: int = 500_000) -> Iterator[EventFrames]:
    """Batches of impressions and clicks, in log order, built in polars (no row loop)."""
    path = Path(path)
    policy = policy or obd_policy_name(path)
    frame = read_obd(path)
    user_cols = sorted(c for c in frame.columns if c.startswith("user_feature_"))
    affinity_cols = [c for c in frame.columns if c.startswith("user-item_affinity_")]
    # The user features are hashes already: a prefix of each makes a readable context id.
    user_id = pl.concat_str([pl.lit("ctx"), *(pl.col(c).cast(pl.String).str.head(8)
                                              for c in user_cols)], separator="-")
    context = pl.struct(*(pl.col(c).cast(pl.String) for c in user_cols),
                        *(pl.col(c).cast(pl.Float64) for c in affinity_cols)).struct.json_encode()
    request_id = pl.lit(f"{policy}-{path.stem}-") + pl.col("row").cast(pl.String)
    rows = frame.select(
        request_id=request_id, user_id=user_id, ts=pl.col("ts"), context=context,
        item_id=pl.col("item_id").cast(pl.String), position=pl.col("position").cast(pl.Int32),
        propensity=pl.col("propensity_score").cast(pl.Float64), click=pl.col("click") > 0,
    )
    impressions = rows.select(
        event_id=pl.col("request_id") + "-imp", ts="ts", user_id="user_id",
        request_id="request_id",
        slots=pl.concat_list(pl.struct(item_id="item_id", position="position",
                                       score=pl.lit(0.0), propensity="propensity")),
        policy=pl.lit(policy), experiment=pl.lit(None, pl.String),
        variant=pl.lit(None, pl.String), query=pl.lit(None, pl.String), context="context",
    ).cast(SCHEMAS["impression"])
    clicks = rows.filter("click").select(
        event_id=pl.col("request_id") + "-click", ts="ts", user_id="user_id",
        request_id="request_id", item_id="item_id", position="position",
    ).cast(SCHEMAS["click"])
    yield from impressions_with_clicks(impressions, clicks, batch_rows)
