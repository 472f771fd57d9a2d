"""Events as polars frames, one per event type in the log store's schema: the currency of
ingest. :func:`events_frame` builds one column by column from decoded events;
:func:`frame_messages` turns one back into wire-format JSON, in polars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, is_

import msgspec
import numpy as np
import polars as pl

from ingest.codec import decode
from ingest.events import EVENT_CLASSES, EVENT_TYPES, Event
from ingest.journal import Record

_BASE = {"event_id": pl.String, "ts": pl.Float64, "user_id": pl.String}
SLOT_FIELDS = {"item_id": pl.String, "position": pl.Int32, "score": pl.Float64,
               "propensity": pl.Float64}
SLOT = pl.Struct(SLOT_FIELDS)
#: The schema of each event type. An impression's ``context`` is JSON text, because its
#: keys differ from one source to the next.
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "impression": {**_BASE, "request_id": pl.String, "slots": pl.List(SLOT),
                   "policy": pl.String, "experiment": pl.String, "variant": pl.String,
                   "query": pl.String, "context": pl.String},
    "click": {**_BASE, "request_id": pl.String, "item_id": pl.String, "position": pl.Int32},
    "reaction": {**_BASE, "request_id": pl.String, "item_id": pl.String,
                 "reaction": pl.String},
    "dwell": {**_BASE, "request_id": pl.String, "item_id": pl.String, "seconds": pl.Float64},
    "query": {**_BASE, "request_id": pl.String, "query": pl.String},
}
EventFrames = dict[str, pl.DataFrame]
_encode = msgspec.json.Encoder().encode
#: Columns with the messages of valid events as they came (see :class:`LogBatch`).
MESSAGES_SCHEMA: dict[str, pl.DataType] = {"ts": pl.Float64, "user_id": pl.String,
                                           "message": pl.String}


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A line or row of a source that breaks the contract: its line in the source file
    (1 is the first line; a CSV's header is line 1), why, and the row as text."""

    line: int
    reason: str
    raw: str


@dataclass
class LogBatch:
    """What every source of events yields: the valid events as frames in the store's
    schema, how many events were read, and the rejected ones with their reasons.

    ``messages`` holds the valid events' own JSON messages (``ts``, ``user_id``,
    ``message``) where the source had them (a JSON-lines event log), so that a replay to
    Kafka forwards them as they were instead of encoding the frames again.
    """

    frames: EventFrames
    read: int
    rejected: list[RejectedRow] = field(default_factory=list)
    messages: pl.DataFrame | None = None


def empty_frame(kind: str) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[kind])


def _slots_column(events: Sequence[Event]) -> pl.Series:
    per_event = list(map(attrgetter("slots"), events))
    slots = list(chain.from_iterable(per_event))
    flat = pl.DataFrame({name: list(map(attrgetter(name), slots)) for name in SLOT_FIELDS},
                        schema=SLOT_FIELDS)
    lengths = np.fromiter(map(len, per_event), np.int64, len(per_event))
    if lengths.min() == lengths.max():
        # Every slate the same size (the usual case): a reshape, no grouping.
        return flat.to_struct("slots").reshape((len(events), int(lengths[0]))).arr.to_list()
    rows = pl.Series("_row", np.repeat(np.arange(len(events), dtype=np.uint32), lengths))
    return (flat.with_columns(rows)
            .group_by("_row", maintain_order=True)
            .agg(slots=pl.struct(*SLOT_FIELDS))["slots"])


def events_frame(kind: str, events: Sequence[Event]) -> pl.DataFrame:
    """Events of one type as a frame with that type's schema."""
    schema = SCHEMAS[kind]
    columns: dict[str, object] = {}
    for name in schema:
        if name == "slots":
            columns[name] = _slots_column(events)
        elif name == "context":
            columns[name] = [None if c is None else _encode(c).decode()
                             for c in map(attrgetter(name), events)]
        else:
            columns[name] = list(map(attrgetter(name), events))
    return pl.DataFrame(columns, schema=schema)


def split_events(events: Sequence[Event]) -> EventFrames:
    """Events of any types as one frame per type (types with no events are left out).
    Grouped with C-level passes (one per type) rather than a Python loop per event."""
    classes = list(map(type, events))
    frames: EventFrames = {}
    for kind, cls in EVENT_CLASSES.items():
        group = list(compress(events, map(is_, classes, repeat(cls))))
        if group:
            frames[kind] = events_frame(kind, group)
    return frames


def frame_messages(kind: str, frame: pl.DataFrame) -> pl.DataFrame:
    """``ts``, ``user_id`` and ``message`` (the event's JSON on the wire) for every row."""
    fields = [pl.lit(kind).alias("type"),
              *(pl.col(name) for name in SCHEMAS[kind] if name != "context")]
    message = pl.struct(fields).struct.json_encode()
    if kind == "impression":
        # context is JSON text already: splice it in as an object, not as a string.
        message = pl.when(pl.col("context").is_null()).then(message).otherwise(
            message.str.head(-1) + pl.lit(',"context":') + pl.col("context") + pl.lit("}"))
    return frame.select("ts", "user_id", message=message)


def frames_in_time_order(frames: EventFrames) -> pl.DataFrame:
    """The messages of all frames merged by ``ts`` (ties keep EVENT_TYPES order, so an
    impression precedes the clicks logged at the same instant)."""
    parts = [frame_messages(kind, frames[kind]).with_columns(_order=pl.lit(i))
             for i, kind in enumerate(EVENT_TYPES) if kind in frames and frames[kind].height]
    if not parts:
        return pl.DataFrame(schema=MESSAGES_SCHEMA)
    return pl.concat(parts).sort("ts", "_order", maintain_order=True).drop("_order")


def message_records(messages: pl.DataFrame) -> list[Record]:
    """``messages`` (``user_id``, ``message``) as producer records, keyed by user so that a
    user's events stay in one partition, in order."""
    return [(user.encode(), message.encode(), None)
            for user, message in zip(messages["user_id"], messages["message"], strict=True)]


def events_of(frames: EventFrames) -> list[Event]:
    """Frames back to event objects (through the wire format, so they are validated), in
    time order."""
    return [decode(m.encode()) for m in frames_in_time_order(frames)["message"]]
