"""The ingest pipeline: poll, validate, dead-letter, deduplicate, write, commit.

Each polled batch is decoded and validated (:mod:`ingest.codec`); the rejected become dead
letters with their reason; valid events whose ``event_id`` the window has seen are counted
as duplicates; the rest go to the sink as frames. Every ``flush_max_events`` events or
``flush_interval_s`` seconds the dead letters are sent (or journaled), the sink is flushed
with the offsets it covers, and only then are offsets committed. At all times ``consumed ==
applied + rejected + duplicates``. Ingest scales by partitions: consumers sharing a
``group_id`` split them, each with its own sink; a sink that has ``revoke`` is told, after
a flush, which partitions the consumer gave up (:class:`~ingest.sink.Sink`).

A broker with another cluster id (an in-memory broker restarted) has lost the log the
offsets point into: the consumer flushes and re-reads from the beginning, and
deduplication drops what it had applied. The cluster id is watched on a background thread,
so a slow metadata request never stalls the poll loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from itertools import compress

from ingest.codec import decode_batch
from ingest.dedupe import DedupeWindow
from ingest.dlq import dead_letter_record
from ingest.events import Event
from ingest.frames import split_events
from ingest.producer import EventProducer
from ingest.settings import Settings
from ingest.sink import Sink, TopicPartition
from ingest.transport import ConsumerClient, PolledBatch, ensure_topics, make_consumer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    consumed: int = 0
    applied: int = 0
    rejected: int = 0
    duplicates: int = 0

    @property
    def reconciles(self) -> bool:
        return self.consumed == self.applied + self.rejected + self.duplicates

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class EventConsumer:
    """Consume the events topic into a :class:`~ingest.sink.Sink`; see the module doc.
    The consumer closes the sink when it closes."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        bootstrap: str,
        *,
        group_id: str | None = None,
        topic: str | None = None,
        dlq_journal_dir: str | None = None,
        cluster_check_s: float = 1.0,
    ) -> None:
        kafka, ingest = settings.kafka, settings.ingest
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = topic or kafka.topic
        self.sink = sink
        self.counters = Counters()
        self._window = DedupeWindow(ingest.dedupe_window)
        self._window.seed(sink.recent_event_ids(ingest.dedupe_window))
        self.dlq = EventProducer(
            settings, bootstrap, topic=kafka.dlq_topic, partitions=1,
            journal_dir=dlq_journal_dir or f"{ingest.journal_dir}/dlq", ordered=False,
        )
        self._topics = {self.topic: kafka.partitions, kafka.dlq_topic: 1}
        ensure_topics(bootstrap, self._topics)
        self._client: ConsumerClient = make_consumer(
            kafka, bootstrap, group_id or kafka.group_id)
        self._client.subscribe([self.topic], self._on_assign, self._on_revoke)
        self._pending_offsets: dict[TopicPartition, int] = {}
        self._committed = True  # whether the group took the last flush's offsets
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._cluster_id: str | None = None
        self._observed_cluster: str | None = None
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch_cluster, args=(cluster_check_s,),
                                         daemon=True, name="clickloop-cluster-watch")
        self._watcher.start()

    def _on_assign(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._cluster_id = self._client.cluster_id()
        # A partition left out starts at the group's committed offset (else the beginning):
        # both clients do so for a partition they are not told to seek.
        starts = self.sink.checkpoint().starts_for(self._cluster_id, partitions)
        log.info("assigned %s on cluster %s; starting from the sink checkpoint at %s, the "
                 "rest from the group's committed offsets", partitions, self._cluster_id,
                 starts)
        return starts

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        self.flush()
        self._give_back(partitions)

    def _give_back(self, partitions: list[TopicPartition]) -> None:
        """After a flush (whose commit hands the partitions over): tell a sink that has
        ``revoke`` which partitions this consumer no longer reads (see :class:`Sink`)."""
        revoke = getattr(self.sink, "revoke", None)
        if not partitions or revoke is None:
            return
        if not self._committed:
            # The group did not take the offsets: the sink's own are the only record of
            # where it got to, so it keeps them.
            log.warning("the commit before giving up %s failed: the sink keeps its offsets",
                        partitions)
            return
        revoke(list(partitions))

    def poll_once(self) -> int:
        """One poll; returns how many messages it consumed."""
        ingest = self.settings.ingest
        now = time.monotonic()
        observed = self._observed_cluster
        if observed is not None and observed != self._cluster_id:
            if self._cluster_id is not None:
                log.warning("broker cluster changed from %s to %s: re-reading from the "
                            "beginning", self._cluster_id, observed)
                self.flush()
                self._client.seek_to_beginning(self._client.assignment())
                ensure_topics(self.bootstrap, self._topics)
            self._cluster_id = observed
        batch = self._client.poll(ingest.poll_max_records, ingest.poll_timeout_s)
        consumed = len(batch.values)
        if consumed:
            self._apply(batch)
        if self._unflushed >= ingest.flush_max_events or (
                self._unflushed and now - self._last_flush >= ingest.flush_interval_s):
            self.flush()
        return consumed

    def _apply(self, batch: PolledBatch) -> None:
        """Decode and validate a batch, dead-letter the rejected, drop the events the window
        has seen, write the rest to the sink, and count."""
        ingest, counters = self.settings.ingest, self.counters
        # Offsets first: confluent-kafka reads them from the client's position.
        self._pending_offsets.update(batch.next_offsets())
        events, rejected = decode_batch(batch.values, ingest.max_event_bytes)
        valid: list[Event] = [e for e in events if e is not None] if rejected \
            else events  # type: ignore[assignment]
        if rejected:
            self.dlq.send_raw(
                dead_letter_record(batch.values[r.index], batch.key(r.index), r.reason,
                                   *batch.source(r.index), ingest.dlq_max_raw_bytes)
                for r in rejected)
        fresh = list(compress(valid, self._window.add_many([e.event_id for e in valid])))
        if fresh:
            self.sink.write(split_events(fresh))
        consumed = len(batch.values)
        counters.consumed += consumed
        counters.rejected += len(rejected)
        counters.applied += len(fresh)
        counters.duplicates += len(valid) - len(fresh)
        self._unflushed += consumed

    def flush(self) -> None:
        """Dead letters out, sink durable with its offsets, then commit. (Dead letters first:
        the sink's checkpoint is where a restart resumes.)"""
        self.dlq.flush()
        offsets, self._pending_offsets = self._pending_offsets, {}
        self.sink.flush(offsets, self._cluster_id)
        self._committed = not offsets or self._client.commit(offsets)
        self._unflushed = 0
        self._last_flush = time.monotonic()

    def _watch_cluster(self, every_s: float) -> None:
        while not self._closing.is_set():
            with suppress(Exception):  # broker unreachable: nothing to compare yet
                self._observed_cluster = self._client.cluster_id()
            self._closing.wait(every_s)

    def run(
        self,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        max_events: int | None = None,
        idle_timeout_s: float | None = None,
        on_progress: Callable[[Counters], None] | None = None,
    ) -> Counters:
        """Consume until ``should_stop()``, ``max_events`` consumed, or ``idle_timeout_s``
        without a message; then flush and commit. Returns the counters."""
        last_message = time.monotonic()
        while not should_stop():
            if max_events is not None and self.counters.consumed >= max_events:
                break
            if self.poll_once():
                last_message = time.monotonic()
                if on_progress is not None:
                    on_progress(self.counters)
            elif idle_timeout_s is not None and time.monotonic() - last_message > idle_timeout_s:
                break
        self.flush()
        return self.counters

    def close(self) -> None:
        self._closing.set()
        try:
            self.flush()
            # Give the partitions back here too: not every client version revokes on close
            # (a second give-back finds nothing left to forget).
            self._give_back(self._client.assignment())
        finally:
            self._watcher.join()
            try:
                self._client.close()  # may revoke partitions, which flushes the sink
            finally:
                self.dlq.close()
                self.sink.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
