"""The Open Bandit Dataset (Saito et al., NeurIPS 2021 Datasets track) as clickloop events.

Each row of ``men.csv`` (or ``all.csv``, ``women.csv``) is one recommendation: ``item_id``
shown at ``position`` (1..3) with the logging policy's ``propensity_score``, and whether it
was clicked. A row becomes one impression with a single slot (the dataset logs the three
positions as separate rows with their own timestamps) plus a click when ``click == 1``.
OBD has no user id: the four hashed user features identify a context, used as ``user_id``;
they and the ``user-item_affinity_*`` columns go into the impression's ``context``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec
import polars as pl

from ingest.events import Click, Impression, Slot

_encoder = msgspec.json.Encoder()


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


def obd_events(path: str | os.PathLike[str], policy: str | None = None,
               batch_rows: int = 50_000) -> Iterator[list[bytes]]:
    """Batches of event messages (impressions and clicks), in log order."""
    path = Path(path)
    policy = policy or obd_policy_name(path)
    frame = read_obd(path)
    user_cols = sorted(c for c in frame.columns if c.startswith("user_feature_"))
    affinity_cols = [c for c in frame.columns if c.startswith("user-item_affinity_")]
    source = f"{policy}-{path.stem}"
    for start in range(0, frame.height, batch_rows):
        lines: list[bytes] = []
        for row in frame.slice(start, batch_rows).iter_rows(named=True):
            users = [str(row[c]) for c in user_cols]
            user_id = "ctx-" + hashlib.blake2b("|".join(users).encode(),
                                               digest_size=8).hexdigest()
            request_id = f"{source}-{row['row']}"
            context: dict[str, float | str] = dict(zip(user_cols, users, strict=True))
            context.update((c, float(row[c])) for c in affinity_cols)
            item_id, position = str(row["item_id"]), int(row["position"])
            lines.append(_encoder.encode(Impression(
                event_id=f"{request_id}-imp", ts=row["ts"], user_id=user_id,
                request_id=request_id, policy=policy, context=context,
                slots=[Slot(item_id, position, 0.0, float(row["propensity_score"]))],
            )))
            if row["click"]:
                lines.append(_encoder.encode(Click(
                    event_id=f"{request_id}-click", ts=row["ts"], user_id=user_id,
                    request_id=request_id, item_id=item_id, position=position,
                )))
        yield lines
