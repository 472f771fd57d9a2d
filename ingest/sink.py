"""Where validated events go, and the checkpoint contract that makes the pipeline exact.

A sink buffers events with :meth:`Sink.write` and makes them durable with
:meth:`Sink.flush`, which also records, atomically with the data, the Kafka offsets those
events cover. On restart the consumer starts each partition at the sink's checkpoint, so an
event reaches the sink exactly once even if the process died between writing and
committing. Offsets only mean something on the cluster that issued them, so the checkpoint
carries the cluster id too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ingest.events import Event

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
        """This checkpoint moved on by ``offsets``; offsets of another cluster are dropped.
        A flush that covers no offsets (e.g. before any partition is assigned) changes
        nothing, whatever cluster it names."""
        if not offsets:
            return self
        base = self.offsets if cluster_id == self.cluster_id else {}
        return Checkpoint(cluster_id, {**base, **offsets})


class Sink(Protocol):
    def write(self, events: Sequence[Event]) -> None:
        """Accept events; they need not be durable until :meth:`flush` returns."""
        ...

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        """Make everything written durable, together with the offsets it covers."""
        ...

    def checkpoint(self) -> Checkpoint:
        ...

    def recent_event_ids(self, limit: int) -> list[str]:
        """Ids of the latest events made durable, oldest first, to re-seed deduplication."""
        ...


class NullSink:
    """Discards events; keeps the checkpoint in memory. For benchmarks of the pipeline."""

    def __init__(self) -> None:
        self.count = 0
        self._checkpoint = Checkpoint(None)

    def write(self, events: Sequence[Event]) -> None:
        self.count += len(events)

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        self._checkpoint = self._checkpoint.advanced(cluster_id, offsets)

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def recent_event_ids(self, limit: int) -> list[str]:
        return []


class MemorySink:
    """Keeps every durable event in a list: for notebooks, learners in-process, and tests."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._pending: list[Event] = []
        self._checkpoint = Checkpoint(None)

    def write(self, events: Sequence[Event]) -> None:
        self._pending.extend(events)

    def flush(self, offsets: dict[TopicPartition, int], cluster_id: str | None) -> None:
        self.events.extend(self._pending)
        self._pending = []
        self._checkpoint = self._checkpoint.advanced(cluster_id, offsets)

    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def recent_event_ids(self, limit: int) -> list[str]:
        return [e.event_id for e in self.events[-limit:]]
