"""A generic click log (CSV, JSON lines or parquet), one row per shown slot, as events.

``mapping`` names the log's column for each field of ours that it calls otherwise. Required:
``user_id``, ``item_id``, ``position`` (1 = top), ``ts`` (epoch seconds, ISO 8601 or a datetime) and
``clicked`` (0/1 or true/false). Optional: ``request_id`` (groups slots into one impression; else
``user_id@ts``), ``propensity`` (the logging policy's probability of the slot), ``score``, ``query``
and ``policy`` (else the ``policy`` argument). Without a propensity no estimator downstream can be
unbiased, so the adapter refuses unless ``assume_deterministic=True`` says the logging policy was
deterministic (every propensity is then 1). A bad row rejects its whole request: a partial slate
would mislead propensity weighting."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import polars as pl

from ingest.adapters import SOURCE_LINE, LogError, cast_columns, impressions_with_clicks, read_table
from ingest.frames import LogBatch

#: The kind of each field (:data:`ingest.adapters.KINDS`), required or not.
REQUIRED = {"user_id": "id", "item_id": "id", "position": "integer", "ts": "timestamp",
            "clicked": "flag"}
OPTIONAL = {"request_id": "id", "propensity": "number", "score": "number", "query": "text",
            "policy": "id"}


class MappingError(LogError):
    """The column mapping does not fit the log."""


def generic_frames(path: str | os.PathLike[str], mapping: Mapping[str, str] | None = None, *,
                   policy: str = "logged", assume_deterministic: bool = False,
                   batch_rows: int = 500_000) -> Iterator[LogBatch]:
    """The log's events, batched as by :func:`~ingest.adapters.impressions_with_clicks`."""
    mapping, kinds = mapping or {}, REQUIRED | OPTIONAL
    if unknown := set(mapping) - set(kinds):
        raise MappingError(f"mapping: unknown fields {sorted(unknown)}; known: {', '.join(kinds)}")
    source = {field: mapping.get(field, field) for field in kinds}
    table, rejected = read_table(path, {column: f for f, column in source.items()})
    columns = [c for c in table.columns if c != SOURCE_LINE]
    if missing := [f"{f} (column {source[f]!r})" for f in REQUIRED if source[f] not in columns]:
        raise MappingError(f"{path}: no column for {', '.join(missing)}; columns are "
                           f"{columns}; map them with field=column")
    fields = [f for f in kinds if f in REQUIRED or source[f] in columns]
    if "propensity" not in fields and not assume_deterministic:
        raise MappingError(f"{path}: no propensity column ({source['propensity']!r}). Map the "
                           "logging policy's propensity, or pass assume_deterministic=True "
                           "(--deterministic) if the logged ranking was deterministic.")
    rows, bad = cast_columns(table, {f: (source[f], kinds[f]) for f in fields}, REQUIRED,
                             ["request_id"] if "request_id" in fields else ["user_id", "ts"])
    defaults = dict(propensity=1.0, score=0.0, policy=pl.lit(policy), query=None, context=None)
    rows = rows.with_columns(**{f: v for f, v in defaults.items() if f not in rows.columns})
    click_id = pl.col("request_id") + "-click-" + pl.col("position").cast(pl.String)
    yield from impressions_with_clicks(rows, rejected + bad, batch_rows, click_id)
