"""Replay a click log into Kafka or the parquet log store, at full speed or in scaled time.

Sources, chosen by :func:`open_log` (``format="auto"`` looks at the path):

- a clickloop event log: JSON lines of events (``.jsonl``), or a parquet log store folder;
- the Open Bandit Dataset CSV (``obd``);
- any click log with a column mapping (``generic``: CSV, JSON lines, parquet).

JSON lines are validated by the stream's decoder (msgspec, one message at a time; a large
log in several worker processes, :mod:`ingest.jsonl_log`); columnar logs by the same rules
on whole frames (:mod:`ingest.validation`), with no object per event.
Rejected events are never dropped silently: they are counted and written with their reason
to a rejects file.
With ``speed`` set, an event logged ``t`` seconds after the first one is sent ``t / speed``
seconds after the replay started (``speed=60``: an hour of log in a minute).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import polars as pl

from ingest.adapters.generic import generic_frames
from ingest.adapters.obd import obd_frames
from ingest.dedupe import IdIndex
from ingest.events import EVENT_TYPES
from ingest.frames import EventFrames, frame_messages, frames_in_time_order
from ingest.jsonl_log import ValidatedLines, validated_batches
from ingest.logstore import CHECKPOINT, ParquetLogStore, iter_frames, scan
from ingest.producer import EventProducer
from ingest.validation import validate_frame

LogFormat = Literal["auto", "events", "store", "obd", "generic"]
#: What a log yields: JSON lines already validated, or frames of events by type.
LogBatch = ValidatedLines | EventFrames


class ReplayError(ValueError):
    """The log cannot be replayed as asked."""


def detect_format(path: Path) -> LogFormat:
    if path.is_dir():
        if (path / CHECKPOINT).exists():
            return "store"
        raise ReplayError(f"{path} is a folder but not a clickloop log store (no {CHECKPOINT})")
    if not path.exists():
        raise ReplayError(f"{path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path) as handle:
            header = handle.readline()
        return "obd" if "propensity_score" in header and "item_id" in header else "generic"
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, "rb") as handle:
            first = handle.readline()
        try:
            return "events" if b'"type"' in first and "event_id" in json.loads(first) \
                else "generic"
        except ValueError:
            return "events"  # the decoder will report each bad line
    return "generic"


def open_log(
    path: str | os.PathLike[str],
    log_format: LogFormat = "auto",
    mapping: Mapping[str, str] | None = None,
    policy: str | None = None,
    assume_deterministic: bool = False,
    workers: int = 0,
) -> Iterator[LogBatch]:
    """Batches of events from a log, whatever its format. A JSON-lines event log is
    validated by ``workers`` processes (1: this one; 0: as
    :func:`ingest.jsonl_log.auto_workers` picks for its size)."""
    path = Path(path)
    if workers < 0:
        raise ReplayError(f"workers={workers} must be >= 0 (0: automatic)")
    chosen = detect_format(path) if log_format == "auto" else log_format
    if chosen == "events":
        return validated_batches(path, workers)
    if chosen == "store":
        return iter_frames(path)
    if chosen == "obd":
        return obd_frames(path, policy=policy)
    if chosen == "generic":
        return generic_frames(path, mapping, policy=policy or "logged",
                              assume_deterministic=assume_deterministic)
    raise ReplayError(f"unknown log format {log_format!r}")


class EventClock:
    """Maps event time to wall time for a scaled replay (``speed=None``: no waiting)."""

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed <= 0:
            raise ReplayError(f"speed={speed} must be > 0")
        self.speed = speed
        self._started = time.perf_counter()
        self._first_ts: float | None = None

    def wait_until(self, ts: float) -> None:
        if self.speed is None:
            return
        if self._first_ts is None:
            self._first_ts = ts
        delay = self._started + (ts - self._first_ts) / self.speed - time.perf_counter()
        if delay > 0:
            # Pacing is what a scaled replay does, not a wait for something to happen.
            time.sleep(delay)


class ReplayTarget(Protocol):
    def write(self, frames: EventFrames, clock: EventClock) -> int:
        """Take validated events; return how many were sent on (not dropped as duplicates)."""
        ...

    def close(self) -> None: ...


class KafkaTarget:
    """Sends events to the events topic in time order, keyed by user, paced by the clock."""

    def __init__(self, producer: EventProducer, pace_rows: int = 500) -> None:
        self.producer = producer
        self.pace_rows = pace_rows

    def write(self, frames: EventFrames, clock: EventClock) -> int:
        messages = frames_in_time_order(frames)
        step = self.pace_rows if clock.speed else max(messages.height, 1)
        for start in range(0, messages.height, step):
            part = messages.slice(start, step)
            clock.wait_until(part["ts"][-1])
            self.producer.send_raw(
                (user.encode(), message.encode(), None)
                for user, message in zip(part["user_id"], part["message"], strict=True))
        return messages.height

    def close(self) -> None:
        self.producer.close()


class ParquetTarget:
    """Appends to a parquet log store, dropping events whose ``event_id`` it already has."""

    def __init__(self, root: str | os.PathLike[str], flush_rows: int = 2_000_000) -> None:
        self.store = ParquetLogStore(root)
        self.flush_rows = flush_rows
        self.duplicates = 0
        self._seen = IdIndex(pl.concat([scan(root, kind).select("event_id").collect()
                                        for kind in EVENT_TYPES])["event_id"])
        self._unflushed = 0

    def write(self, frames: EventFrames, clock: EventClock) -> int:
        written = 0
        for kind, frame in frames.items():
            if not frame.height:
                continue
            clock.wait_until(frame["ts"].max())  # type: ignore[arg-type]
            fresh = frame.filter(self._seen.add_new(frame["event_id"]))
            self.duplicates += frame.height - fresh.height
            self.store.write_frames({kind: fresh})
            written += fresh.height
        self._unflushed += written
        if self._unflushed >= self.flush_rows:
            self.store.flush({}, None)
            self._unflushed = 0
        return written

    def close(self) -> None:
        self.store.flush({}, None)


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


@dataclass
class _Rejects:
    """Appends rejected events with their reason; opens the file on the first one."""

    path: Path
    summary: ReplaySummary
    _handle: object = None

    def add(self, position: int, reason: str, raw: str) -> None:
        if self._handle is None:
            self._handle = open(self.path, "a")  # noqa: SIM115
            self.summary.rejects_file = str(self.path)
        rule = reason.split("=", 1)[0] if "=" in reason else reason[:60]
        self.summary.reasons[rule] = self.summary.reasons.get(rule, 0) + 1
        self._handle.write(json.dumps(  # type: ignore[attr-defined]
            {"line": position, "error": reason, "raw": raw}) + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # type: ignore[attr-defined]


def _validated(batch: LogBatch, first: int, rejects: _Rejects) -> tuple[EventFrames, int, int]:
    """(valid frames, events read, events rejected) of one batch."""
    if isinstance(batch, ValidatedLines):
        for index, reason, raw in batch.rejected:
            rejects.add(first + index + 1, reason, raw)
        return batch.frames, batch.read, len(batch.rejected)
    valid: EventFrames = {}
    read = bad = 0
    for kind, frame in batch.items():
        good, rejected = validate_frame(kind, frame)
        valid[kind] = good
        if rejected.height:
            raws = frame_messages(kind, rejected.drop("row", "reason"))["message"]
            for row, reason, raw in zip(rejected["row"], rejected["reason"], raws, strict=True):
                rejects.add(first + read + row + 1, reason, raw)
        read += frame.height
        bad += rejected.height
    return valid, read, bad


def replay(
    batches: Iterator[LogBatch],
    target: ReplayTarget,
    *,
    speed: float | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    on_batch: Callable[[ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Validate every event and hand the good ones to ``target``; see the module doc."""
    clock = EventClock(speed)
    summary = ReplaySummary()
    rejects = _Rejects(Path(rejects_path or "replay.rejects.jsonl"), summary)
    started = time.perf_counter()
    try:
        for batch in batches:
            frames, read, rejected = _validated(batch, summary.read, rejects)
            sent = target.write(frames, clock)
            summary.read += read
            summary.rejected += rejected
            summary.sent += sent
            summary.duplicates += read - rejected - sent
            if on_batch is not None:
                on_batch(summary)
        target.close()
    finally:
        rejects.close()
        summary.seconds = time.perf_counter() - started
    return summary
