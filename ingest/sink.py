"""Where validated events go, and the checkpoint contract that makes the pipeline exact.

A sink takes events as columns: :meth:`Sink.write` buffers validated frames
(:data:`ingest.frames.EventFrames`, one frame per type in :data:`ingest.frames.SCHEMAS`)
and :meth:`Sink.flush` makes them durable together with the Kafka offsets they cover. On
restart the consumer starts each partition at the sink's checkpoint, so an event reaches
the sink exactly once even if the process died between writing and committing. Offsets
only mean something on the cluster that issued them, so the checkpoint carries the cluster
id too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

from ingest.events import Event
from ingest.frames import SCHEMAS, EventFrames, events_of

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The next offset to read in each partition, on the cluster ``cluster_id``."""

    cluster_id: str | None
    offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def starts_for(self, cluster_id: str | None, partitions: Sequence[TopicPartition]
                   ) -> dict[TopicPartition, int]:
        if cluster_id is None or cluster_id != self.cluster_id:
            return {}
        return {tp: self.offsets[tp] for tp in partitions if tp in self.offsets}

    def advanced(self, cluster_id: str | None, offsets: dict[TopicPartition, int]
                 ) -> Checkpoint:
        """Moved on by ``offsets``, dropping those of another cluster. No offsets (a flush
        before any partition is assigned) change nothing, whatever cluster they name."""
        if not offsets:
            return self
        base = self.offsets if cluster_id == self.cluster_id else {}
        return Checkpoint(cluster_id, {**base, **offsets})

    def without(self, partitions: Sequence[TopicPartition]) -> Checkpoint:
        """Forgetting ``partitions``: the next time they are assigned they start at the
        group's committed offset (see :class:`Sink` on ``revoke``)."""
        gone = set(partitions) & self.offsets.keys()
        if not gone:
            return self
        return Checkpoint(self.cluster_id,
                          {tp: o for tp, o in self.offsets.items() if tp not in gone})


class Sink(Protocol):
    """What :class:`~ingest.consumer.EventConsumer` writes to.

    A sink may also have ``revoke(partitions: list[TopicPartition]) -> None``; the consumer
    calls it, after a flush, for the partitions it gives up (at a rebalance and when it
    closes). A sink's offsets for a partition are only right while no other consumer of
    the group has read on in it; once it is given up, another member may have, so a sink
    whose state must not see an event twice (the online learner) drops those offsets from
    its checkpoint, durably, in ``revoke``, and the partition, when assigned again, starts
    at the group's committed offset, which the flush before ``revoke`` committed. A sink
    without ``revoke`` keeps its offsets, which is right for one whose checkpoint is the
    only truth about what it holds (the parquet log store).
    """

    def write(self, frames: EventFrames) -> None:
        """Accept validated events; they need not be durable until :meth:`flush` returns."""

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        """Make everything written durable, together with the offsets it covers."""

    def checkpoint(self) -> Checkpoint: ...

    def recent_event_ids(self, limit: int) -> list[str]:
        """Ids of the latest events made durable, oldest first, to re-seed deduplication."""

    def close(self) -> None:
        """Release what the sink holds. Frames written since the last flush are dropped:
        no checkpoint covers them, so a restart reads them again."""


def conform(kind: str, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` reduced to the columns of its type's schema, in order. A frame of another
    shape is refused here rather than stored where every later read would trip on it."""
    frame = frame.select(list(SCHEMAS[kind]))
    for name, dtype in SCHEMAS[kind].items():
        if frame.schema[name] != dtype:
            raise TypeError(f"{kind} column {name} is {frame.schema[name]}, not {dtype}")
    return frame


class NullSink:
    """Counts rows and discards them; keeps the checkpoint in memory. For benchmarks."""

    def __init__(self) -> None:
        self.count = 0
        self._checkpoint = Checkpoint(None)

    def write(self, frames: EventFrames) -> None:
        self.count += sum(frame.height for frame in frames.values())

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        self._checkpoint = self._checkpoint.advanced(cluster_id, offsets)

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def recent_event_ids(self, limit: int) -> list[str]:
        return []

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps every durable event in memory, a frame per type (:attr:`frames`): for
    notebooks, learners in-process, and tests."""

    def __init__(self) -> None:
        self.frames: EventFrames = {}
        self._pending: list[tuple[str, pl.DataFrame]] = []
        self._ids = pl.Series("event_id", [], pl.String)  # in the order they were flushed
        self._events: tuple[EventFrames, list[Event]] = (self.frames, [])
        self._checkpoint = Checkpoint(None)

    def write(self, frames: EventFrames) -> None:
        self._pending += [(kind, conform(kind, f)) for kind, f in frames.items() if f.height]

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        if self._pending:
            # A new dict, swapped in whole: a thread reading .events sees before or after.
            frames = dict(self.frames)
            for kind, frame in self._pending:
                frames[kind] = pl.concat([frames[kind], frame]) if kind in frames else frame
                self._ids = pl.concat([self._ids, frame["event_id"]])
            self.frames, self._pending = frames, []
        self._checkpoint = self._checkpoint.advanced(cluster_id, offsets)

    @property
    def events(self) -> list[Event]:
        """The durable events as objects, in time order (converted once per flush)."""
        if self._events[0] is not (frames := self.frames):
            self._events = (frames, events_of(frames))
        return self._events[1]

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def recent_event_ids(self, limit: int) -> list[str]:
        return self._ids.tail(limit).to_list()

    def close(self) -> None:
        self._pending = []
