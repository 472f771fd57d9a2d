"""Adapters turn other click-log formats into clickloop events.

Every adapter yields batches of event frames (:mod:`ingest.frames`); replay validates them
on whole columns by the stream's rules (:mod:`ingest.validation`), so a log never bypasses
the contract.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from ingest.frames import EventFrames


def impressions_with_clicks(impressions: pl.DataFrame, clicks: pl.DataFrame, batch_rows: int
                            ) -> Iterator[EventFrames]:
    """``batch_rows`` impressions at a time, each batch with the clicks on its requests
    (one empty batch when there are no impressions)."""
    for start in range(0, max(impressions.height, 1), batch_rows):
        part = impressions.slice(start, batch_rows)
        yield {"impression": part,
               "click": clicks.join(part.select("request_id"), on="request_id", how="semi")}
