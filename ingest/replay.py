"""Replay a click log into Kafka or the parquet log store, at full speed or in scaled time.

:func:`open_log` reads a clickloop JSON-lines event log, a parquet log store folder, the
Open Bandit Dataset CSV, or any CSV / JSON-lines / parquet click log with a column mapping.
Every source yields :class:`~ingest.frames.LogBatch` es: the valid events as frames, and
the rejected ones with their file line and reason, which the replay writes to a rejects
file, so nothing is dropped silently. With ``speed`` set, an event logged ``t`` seconds
after the first one is sent ``t / speed`` seconds after the replay started.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

import msgspec
import numpy as np
import polars as pl

from ingest.adapters import LogError
from ingest.adapters.generic import generic_frames
from ingest.adapters.obd import obd_frames
from ingest.dedupe import DedupeWindow
from ingest.events import EVENT_TYPES
from ingest.frames import LogBatch, frames_in_time_order, message_records
from ingest.jsonl_log import BOM, validated_batches
from ingest.logstore import CHECKPOINT, ParquetLogStore, iter_frames, scan
from ingest.producer import EventProducer

LogFormat = Literal["auto", "events", "store", "obd", "generic"]
#: A paced replay sends together the messages due within this many seconds.
PACE_TICK_S = 0.01


class ReplayError(LogError):
    """The log cannot be replayed as asked."""


def detect_format(path: Path) -> LogFormat:
    if path.is_dir():
        if (path / CHECKPOINT).exists():
            return "store"
        raise ReplayError(f"{path} is a folder but not a clickloop log store (no {CHECKPOINT})")
    if not path.exists():
        raise ReplayError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ReplayError(f"{path}: the file is empty")
    if path.suffix.lower() == ".csv":
        with open(path, errors="replace") as handle:
            header = handle.readline()
        return "obd" if "propensity_score" in header and "item_id" in header else "generic"
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, "rb") as handle:
            first = handle.readline().removeprefix(BOM)
        try:
            document = msgspec.json.decode(first)
        except (msgspec.DecodeError, RecursionError):
            return "events"  # the decoder will report each bad line
        return "events" if isinstance(document, dict) and "type" in document \
            and "event_id" in document else "generic"
    return "generic"


def open_log(
    path: str | os.PathLike[str],
    log_format: LogFormat = "auto",
    mapping: Mapping[str, str] | None = None,
    policy: str | None = None,
    assume_deterministic: bool = False,
    workers: int = 0,
    keep_messages: bool = False,
) -> Iterator[LogBatch]:
    """Batches of events from a log (``format="auto"``: known by its path, or generic when a
    ``mapping`` is given). A JSON-lines event log is validated by ``workers`` processes (0:
    automatic) and with ``keep_messages`` keeps its valid lines for a replay to Kafka."""
    path = Path(path)
    if workers < 0:
        raise ReplayError(f"workers={workers} must be >= 0 (0: automatic)")
    # A column mapping only means something to a generic log.
    chosen = (log_format if log_format != "auto" else "generic" if mapping
              else detect_format(path))
    if chosen == "events":
        return validated_batches(path, workers, keep_messages=keep_messages)
    if chosen == "store":
        return iter_frames(path)
    if chosen == "obd":
        return obd_frames(path, policy=policy)
    if chosen == "generic":
        return generic_frames(path, mapping, policy=policy or "logged",
                              assume_deterministic=assume_deterministic)
    raise ReplayError(f"unknown log format {log_format!r}")


class EventClock:
    """Maps event time to wall time for a scaled replay (``speed=None``: no waiting). The
    earliest event time of the first batch is due as soon as that batch is ready."""

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed <= 0:
            raise ReplayError(f"speed={speed} must be > 0")
        self.speed = speed
        self._started = 0.0
        self._first_ts: float | None = None

    def due(self, ts: pl.Series) -> np.ndarray | None:
        """When each event time is due, in ``time.perf_counter`` seconds; ``None`` at full
        speed."""
        if self.speed is None or not len(ts):
            return None
        if self._first_ts is None:
            self._first_ts = float(ts.min())  # type: ignore[arg-type]
            self._started = time.perf_counter()
        return self._started + (ts.to_numpy() - self._first_ts) / self.speed

    @staticmethod
    def wait(until: float) -> None:
        delay = until - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing is what a scaled replay does, not a wait for an event


class ReplayTarget(Protocol):
    def write(self, batch: LogBatch, clock: EventClock) -> int:
        """Take a batch of validated events; return how many were sent on (not dropped as
        duplicates)."""

    def close(self) -> None: ...


class KafkaTarget:
    """Sends events to the events topic in time order, keyed by user, paced by the clock;
    a JSON-lines log's lines are forwarded as they were. :meth:`close` waits up to
    ``deliver_timeout_s`` (default: the setting) for what had to be journaled, and raises
    :class:`~ingest.producer.Undelivered` if some of it is still there."""

    def __init__(self, producer: EventProducer, deliver_timeout_s: float | None = None
                 ) -> None:
        self.producer = producer
        self.deliver_timeout_s = deliver_timeout_s

    def write(self, batch: LogBatch, clock: EventClock) -> int:
        messages = (frames_in_time_order(batch.frames) if batch.messages is None
                    else batch.messages.sort("ts", maintain_order=True))
        records = message_records(messages)
        due = clock.due(messages["ts"])
        if due is None:
            self.producer.send_raw(records)
            return len(records)
        start = 0
        while start < len(records):
            clock.wait(due[start])
            end = max(start + 1, int(np.searchsorted(due, time.perf_counter() + PACE_TICK_S,
                                                     "right")))
            self.producer.send_raw(records[start:end])
            self.producer.flush()  # paced events leave when due, not when a batch fills
            start = end
        return len(records)

    def close(self) -> None:
        try:
            self.producer.deliver(self.deliver_timeout_s, check=True)
        finally:
            self.producer.close()


class ParquetTarget:
    """Appends to a parquet log store, dropping events whose ``event_id`` it already has."""

    def __init__(self, root: str | os.PathLike[str], flush_rows: int = 2_000_000) -> None:
        self.store = ParquetLogStore(root)
        self.flush_rows = flush_rows
        self._seen = DedupeWindow(None)
        for kind in EVENT_TYPES:
            self._seen.seed(scan(root, kind).collect()["event_id"].to_list())
        self._unflushed = 0

    def write(self, batch: LogBatch, clock: EventClock) -> int:
        written = 0
        for kind, frame in batch.frames.items():
            if not frame.height:
                continue
            if (due := clock.due(frame["ts"])) is not None:
                clock.wait(float(due.max()))
            fresh = frame.filter(pl.Series(self._seen.add_many(frame["event_id"].to_list())))
            self.store.write({kind: fresh})
            written += fresh.height
        self._unflushed += written
        if self._unflushed >= self.flush_rows:
            self.store.flush({}, None)
            self._unflushed = 0
        return written

    def close(self) -> None:
        self.store.flush({}, None)
        self.store.close()


@dataclass
class ReplaySummary:
    read: int = 0
    sent: int = 0
    rejected: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    rejects_file: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


def replay(
    batches: Iterator[LogBatch],
    target: ReplayTarget,
    *,
    speed: float | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    on_batch: Callable[[ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Hand every batch's valid events to ``target`` and append its rejects, with their line
    and reason, to the rejects file (created at the first one)."""
    clock = EventClock(speed)
    summary = ReplaySummary()
    path = Path(rejects_path or "replay.rejects.jsonl")
    rejects: IO[str] | None = None
    started = time.perf_counter()
    try:
        for batch in batches:
            if batch.rejected and rejects is None:
                rejects = open(path, "a")  # noqa: SIM115 - closed below
                summary.rejects_file = str(path)
            for row in batch.rejected:
                # Counted by what the reason names (a field, a column), or its first words.
                rule = re.split(r"[=:(]", row.reason, maxsplit=1)[0].strip()
                summary.reasons[rule] = summary.reasons.get(rule, 0) + 1
                rejects.write(json.dumps(  # type: ignore[union-attr]
                    {"line": row.line, "error": row.reason, "raw": row.raw}) + "\n")
            sent = target.write(batch, clock)
            summary.read += batch.read
            summary.rejected += len(batch.rejected)
            summary.sent += sent
            summary.duplicates += batch.read - len(batch.rejected) - sent
            if on_batch is not None:
                on_batch(summary)
        target.close()
    finally:
        if rejects is not None:
            rejects.close()
        summary.seconds = time.perf_counter() - started
    return summary
