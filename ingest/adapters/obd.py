"""The Open Bandit Dataset (Saito et al., NeurIPS 2021 Datasets track) as clickloop events.

Each row of ``men.csv`` (or ``all.csv``, ``women.csv``) is one recommendation: ``item_id``
shown at ``position`` (1..3) with the logging policy's ``propensity_score``, and whether it
was clicked. It becomes one impression with a single slot (the dataset logs the three
positions as separate rows with their own timestamps), and a click when ``click == 1``. OBD
has no user id: ``ctx-`` and the first 8 hex digits of each hashed ``user_feature_*`` stand
for one; those and the ``user-item_affinity_*`` columns are the impression's ``context``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import polars.selectors as cs

from ingest.adapters import LogError, cast_columns, impressions_with_clicks, read_csv
from ingest.frames import LogBatch, RejectedRow

#: Our field for each OBD column that every row needs, and its kind.
_COLUMNS = {"ts": ("timestamp", "timestamp"), "item_id": ("item_id", "id"),
            "position": ("position", "integer"), "clicked": ("click", "flag"),
            "propensity": ("propensity_score", "number")}
_USER, _AFFINITY = "user_feature_", "user-item_affinity_"


def obd_policy_name(path: Path) -> str:
    """``obd-random`` or ``obd-bts`` from OBD's layout (``<policy>/<campaign>/<campaign>.csv``)."""
    parts = path.resolve().parts
    return f"obd-{parts[-3]}" if len(parts) >= 3 else "obd"


def _read(path: str | os.PathLike[str]) -> tuple[pl.DataFrame, list[RejectedRow]]:
    frame = read_csv(path)
    if missing := sorted({column for column, _ in _COLUMNS.values()} - set(frame.columns)):
        raise LogError(f"{path}: not an Open Bandit Dataset file, missing columns {missing}")
    # The first column, unnamed, is the row index that request ids are made of.
    if frame.columns[0] not in ("", "column_1"):
        frame = frame.with_row_index("row")
    columns = {**_COLUMNS, "row": (frame.columns[0], "integer")}
    features = {c: (c, "text" if c.startswith(_USER) else "number")
                for c in frame.columns if c.startswith((_USER, _AFFINITY))}
    return cast_columns(frame, columns | features, required=columns)


def read_obd(path: str | os.PathLike[str]) -> pl.DataFrame:
    """The OBD rows whose values parse, typed, with ``ts`` in epoch seconds and a ``row``."""
    return _read(path)[0].rename({"clicked": "click", "propensity": "propensity_score"})


def obd_frames(path: str | os.PathLike[str], policy: str | None = None,
               batch_rows: int = 500_000) -> Iterator[LogBatch]:
    """The file's events, batched as by :func:`~ingest.adapters.impressions_with_clicks`."""
    path = Path(path)
    policy = policy or obd_policy_name(path)
    frame, rejected = _read(path)
    users = cs.starts_with(_USER)
    rows = frame.with_columns(
        request_id=pl.lit(f"{policy}-{path.stem}-") + pl.col("row").cast(pl.String),
        # The user features are hashes already: a prefix of each makes a readable context id.
        user_id=pl.concat_str(pl.lit("ctx"), users.str.head(8), separator="-"),
        context=pl.struct(users | cs.starts_with(_AFFINITY)).struct.json_encode(),
        score=pl.lit(0.0), policy=pl.lit(policy), query=pl.lit(None, pl.String))
    yield from impressions_with_clicks(rows, rejected, batch_rows, pl.col("request_id") + "-click")
