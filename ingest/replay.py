"""Replay a click log into Kafka or the parquet log store, at full speed or in scaled time.

Sources, chosen by :func:`open_log` (``format="auto"`` looks at the path):

- a clickloop event log: JSON lines of events (``.jsonl``), or a parquet log store folder;
- the Open Bandit Dataset CSV (``obd``);
- any click log with a column mapping (``generic``: CSV, JSON lines, parquet).

Every message is validated with the consumer's decoder. Rejected lines are never dropped
silently: they are counted and written with their reason to a rejects file.
With ``speed`` set, an event logged ``t`` seconds after the first one is sent ``t / speed``
seconds after the replay started (``speed=60``: an hour of log in a minute).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ingest.adapters.generic import generic_events
from ingest.adapters.obd import obd_events
from ingest.codec import decode_batch
from ingest.dedupe import DedupeWindow
from ingest.events import Event
from ingest.logstore import CHECKPOINT, ParquetLogStore, iter_event_lines
from ingest.producer import EventProducer

LogFormat = Literal["auto", "events", "store", "obd", "generic"]


class ReplayError(ValueError):
    """The log cannot be replayed as asked."""


def jsonl_batches(path: str | os.PathLike[str], batch_lines: int = 50_000
                  ) -> Iterator[list[bytes]]:
    with open(path, "rb") as handle:
        batch: list[bytes] = []
        for line in handle:
            line = line.strip()
            if line:
                batch.append(line)
                if len(batch) >= batch_lines:
                    yield batch
                    batch = []
        if batch:
            yield batch


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
) -> Iterator[list[bytes]]:
    """Batches of event messages from a log, whatever its format."""
    path = Path(path)
    chosen = detect_format(path) if log_format == "auto" else log_format
    if chosen == "events":
        return jsonl_batches(path)
    if chosen == "store":
        return iter_event_lines(path)
    if chosen == "obd":
        return obd_events(path, policy=policy)
    if chosen == "generic":
        return generic_events(path, mapping, policy=policy or "logged",
                              assume_deterministic=assume_deterministic)
    raise ReplayError(f"unknown log format {log_format!r}")


class ReplayTarget(Protocol):
    def write(self, events: Sequence[Event], raws: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


class KafkaTarget:
    """Sends the validated messages to the events topic, keyed by user."""

    def __init__(self, producer: EventProducer) -> None:
        self.producer = producer

    def write(self, events: Sequence[Event], raws: Sequence[bytes]) -> None:
        self.producer.send_raw(
            (e.user_id.encode(), raw, None) for e, raw in zip(events, raws, strict=True))

    def close(self) -> None:
        self.producer.close()


class ParquetTarget:
    """Appends to a parquet log store, dropping events already in it (by ``event_id``)."""

    def __init__(self, root: str | os.PathLike[str], flush_events: int = 500_000,
                 dedupe_window: int = 5_000_000) -> None:
        self.store = ParquetLogStore(root)
        self.flush_events = flush_events
        self.dedupe = DedupeWindow(dedupe_window)
        self.dedupe.seed(self.store.recent_event_ids(dedupe_window))
        self.duplicates = 0
        self._unflushed = 0

    def write(self, events: Sequence[Event], raws: Sequence[bytes]) -> None:
        fresh = [e for e in events if self.dedupe.add(e.event_id)]
        self.duplicates += len(events) - len(fresh)
        self.store.write(fresh)
        self._unflushed += len(fresh)
        if self._unflushed >= self.flush_events:
            self.store.flush({}, None)
            self._unflushed = 0

    def close(self) -> None:
        self.store.flush({}, None)


@dataclass
class ReplaySummary:
    read: int = 0
    sent: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rejects_file: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


def replay(
    batches: Iterator[list[bytes]],
    target: ReplayTarget,
    *,
    speed: float | None = None,
    rejects_path: str | os.PathLike[str] | None = None,
    on_batch: Callable[[ReplaySummary], None] | None = None,
    pace_batch: int = 500,
) -> ReplaySummary:
    """Validate every message and hand the good ones to ``target``; see the module doc."""
    if speed is not None and speed <= 0:
        raise ReplayError(f"speed={speed} must be > 0")
    summary = ReplaySummary()
    started = time.perf_counter()
    first_ts: float | None = None
    rejects = None
    try:
        for raws in batches:
            decoded, rejected = decode_batch(raws)
            if rejected:
                if rejects is None:
                    rejects_path = Path(rejects_path or "replay.rejects.jsonl")
                    rejects = open(rejects_path, "a")  # noqa: SIM115
                    summary.rejects_file = str(rejects_path)
                for r in rejected:
                    rule = r.reason.split("=", 1)[0] if "=" in r.reason else r.reason[:60]
                    summary.reasons[rule] = summary.reasons.get(rule, 0) + 1
                    rejects.write(json.dumps({"line": summary.read + r.index + 1,
                                              "error": r.reason,
                                              "raw": raws[r.index].decode(errors="replace")})
                                  + "\n")
            good = [(e, raw) for e, raw in zip(decoded, raws, strict=True) if e is not None]
            for start in range(0, len(good), pace_batch if speed else len(good) or 1):
                chunk = good[start:start + (pace_batch if speed else len(good))]
                if speed and chunk:
                    first_ts = chunk[0][0].ts if first_ts is None else first_ts
                    due = started + (chunk[-1][0].ts - first_ts) / speed
                    # Pacing is the product's behaviour here (scaled event time), not a wait
                    # for something to happen.
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                target.write([e for e, _ in chunk], [raw for _, raw in chunk])
                summary.sent += len(chunk)
            summary.read += len(raws)
            summary.rejected += len(rejected)
            if on_batch is not None:
                on_batch(summary)
        target.close()
    finally:
        if rejects is not None:
            rejects.close()
        summary.seconds = time.perf_counter() - started
    return summary
