"""A generic click log (CSV, JSON lines or parquet), one row per shown slot, as events.

The log's columns are mapped onto clickloop's names with ``mapping`` (ours -> theirs).

=================  =========  =======================================================
field              required   meaning
=================  =========  =======================================================
``user_id``        yes        who saw the slate
``item_id``        yes        the item in this slot
``position``       yes        its rank, 1 = top
``ts``             yes        epoch seconds, or a datetime column
``clicked``        yes        0/1 or boolean
``request_id``     no         groups slots into one impression; default (user_id, ts)
``propensity``     no*        the logging policy's probability of this slot
``score``          no         the policy's score
``query``          no         the query text
``policy``         no         the logging policy's name (else the ``policy`` argument)
=================  =========  =======================================================

(*) Without a propensity column an estimator downstream cannot be unbiased, so the adapter
refuses unless ``assume_deterministic=True`` says the logging policy was deterministic, in
which case every propensity is 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import polars as pl

from ingest.adapters import impressions_with_clicks
from ingest.frames import SCHEMAS, SLOT_FIELDS, EventFrames

REQUIRED = ("user_id", "item_id", "position", "ts", "clicked")
OPTIONAL = ("request_id", "propensity", "score", "query", "policy")


class MappingError(ValueError):
    """The column mapping does not fit the log."""


def read_table(path: str | os.PathLike[str]) -> pl.LazyFrame:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pl.scan_csv(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pl.scan_ndjson(path)
    if suffix == ".parquet":
        return pl.scan_parquet(path)
    raise MappingError(f"{path}: unknown log format {suffix!r} (use .csv, .jsonl or .parquet)")


def generic_frames(
    path: str | os.PathLike[str],
    mapping: Mapping[str, str] | None = None,
    *,
    policy: str = "logged",
    assume_deterministic: bool = False,
    batch_rows: int = 500_000,
) -> Iterator[EventFrames]:
    """Batches of impressions (in time order, ``batch_rows`` at a time) with their clicks."""
    mapping = dict(mapping or {})
    unknown = set(mapping) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise MappingError(f"mapping names unknown fields {sorted(unknown)}; "
                           f"known: {', '.join(REQUIRED + OPTIONAL)}")
    frame = read_table(path)
    columns = frame.collect_schema().names()
    source = {field: mapping.get(field, field) for field in REQUIRED + OPTIONAL}
    missing = [f"{field} (column {source[field]!r})" for field in REQUIRED
               if source[field] not in columns]
    if missing:
        raise MappingError(f"{path}: no column for {', '.join(missing)}; columns are "
                           f"{columns}; map them with field=column")
    present = [f for f in OPTIONAL if source[f] in columns]
    if "propensity" not in present and not assume_deterministic:
        raise MappingError(
            f"{path}: no propensity column ({source['propensity']!r}). Map the logging "
            "policy's propensity, or pass assume_deterministic=True (--deterministic) if "
            "the logged ranking was deterministic.")
    frame = frame.select([pl.col(source[f]).alias(f) for f in (*REQUIRED, *present)])
    ts = pl.col("ts")
    ts_dtype = frame.collect_schema()["ts"]
    if ts_dtype == pl.String:
        ts = ts.str.to_datetime(time_zone="UTC")
    if ts_dtype == pl.String or isinstance(ts_dtype, pl.Datetime):
        ts = ts.dt.epoch("us") / 1e6
    frame = frame.with_columns(
        ts=ts.cast(pl.Float64),
        user_id=pl.col("user_id").cast(pl.String),
        item_id=pl.col("item_id").cast(pl.String),
        position=pl.col("position").cast(pl.Int64),
        clicked=pl.col("clicked").cast(pl.Int64) > 0,
        propensity=(pl.col("propensity") if "propensity" in present else pl.lit(1.0))
        .cast(pl.Float64),
        score=(pl.col("score") if "score" in present else pl.lit(0.0)).cast(pl.Float64),
        policy=(pl.col("policy").cast(pl.String) if "policy" in present else pl.lit(policy)),
        query=(pl.col("query").cast(pl.String) if "query" in present
               else pl.lit(None, pl.String)),
    )
    if "request_id" in present:
        frame = frame.with_columns(request_id=pl.col("request_id").cast(pl.String))
    else:
        frame = frame.with_columns(
            request_id=pl.concat_str([pl.col("user_id"), pl.col("ts").cast(pl.String)],
                                     separator="@"))
    rows = frame.collect()
    slot = pl.struct(*(pl.col(f).cast(t) for f, t in SLOT_FIELDS.items()))
    impressions = (
        rows.group_by("request_id", maintain_order=True)
        .agg(pl.col("ts").min(), pl.col("user_id").first(), pl.col("policy").first(),
             pl.col("query").first(), slots=slot.sort_by("position"))
        .with_columns(event_id=pl.col("request_id") + "-imp",
                      experiment=pl.lit(None, pl.String), variant=pl.lit(None, pl.String),
                      context=pl.lit(None, pl.String))
        .sort("ts", maintain_order=True)
        .select(list(SCHEMAS["impression"]))
        .cast(SCHEMAS["impression"])
    )
    clicks = (
        rows.filter("clicked")
        .with_columns(event_id=pl.col("request_id") + "-click-"
                      + pl.col("position").cast(pl.String))
        .select(list(SCHEMAS["click"]))
        .cast(SCHEMAS["click"])
    )
    yield from impressions_with_clicks(impressions, clicks, batch_rows)
