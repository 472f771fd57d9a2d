"""The ingest pipeline: poll, validate, dead-letter, deduplicate, apply, commit.

Each poll returns a batch of raw messages, handed to an apply stage
(:mod:`ingest.stages`: on this thread, or in a second process with
``ingest.decode_process``) that decodes and validates them with :mod:`ingest.codec`,
counts valid events whose ``event_id`` was seen recently as duplicates, and writes the rest
to the sink. The rejected messages of each finished batch become dead letters. Every
``flush_max_events`` events or ``flush_interval_s`` seconds the dead letters are sent (or
journaled), the sink is flushed with the offsets it now covers, and only then are the
offsets committed to Kafka. At all times ``consumed == applied + rejected + duplicates``
(counted when a batch is finished).

If the broker is replaced by one with another cluster id (an in-memory broker restarted),
the offsets held so far refer to a log that no longer exists: the consumer flushes what it
has and reads the new cluster's partitions from the beginning; deduplication drops what it
had already applied. The cluster id is asked for on a background thread every
``cluster_check_s``: a metadata request can take hundreds of milliseconds on a busy broker,
and the poll loop should not stall for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ingest.dlq import dead_letter_record
from ingest.producer import EventProducer
from ingest.settings import Settings
from ingest.sink import Sink, TopicPartition
from ingest.stages import ApplyStage, InlineStage, ProcessStage, SinkFactory
from ingest.transport import ConsumerClient, PolledBatch, ensure_topics, make_consumer

log = logging.getLogger(__name__)

#: The poll timeout while the apply stage still has batches to finish.
IN_FLIGHT_POLL_S = 0.02


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


def _factory_of(sink: Sink | SinkFactory) -> SinkFactory | None:
    # A sink class is a factory too (NullSink); a sink instance has a bound write method.
    if isinstance(sink, type) or (callable(sink) and not hasattr(sink, "write")):
        return sink  # type: ignore[return-value]
    return None


class EventConsumer:
    """Consume the events topic into a :class:`~ingest.sink.Sink`; see the module doc.

    ``sink`` is a sink, or a factory of one (a class, or e.g.
    ``functools.partial(ParquetLogStore, path)``); with ``ingest.decode_process`` it must
    be a factory that can be pickled, as the sink is built in the apply process.
    """

    def __init__(
        self,
        settings: Settings,
        sink: Sink | SinkFactory,
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
        self.counters = Counters()
        factory = _factory_of(sink)
        if ingest.decode_process:
            if factory is None:
                raise ValueError(
                    f"ingest.decode_process=true builds the sink in the apply process, so "
                    f"sink must be a picklable factory (a class or functools.partial), not "
                    f"the {type(sink).__name__} instance given")
            self._stage: ApplyStage = ProcessStage(factory, ingest)
        else:
            self._stage = InlineStage(
                factory() if factory else sink, ingest)  # type: ignore[arg-type]
        self._in_flight: deque[tuple[PolledBatch, dict[TopicPartition, int]]] = deque()
        self.dlq = EventProducer(
            settings, bootstrap, topic=kafka.dlq_topic, partitions=1,
            journal_dir=dlq_journal_dir or f"{ingest.journal_dir}/dlq",
        )
        ensure_topics(bootstrap, {self.topic: kafka.partitions, kafka.dlq_topic: 1})
        self._client: ConsumerClient = make_consumer(
            kafka, bootstrap, group_id or kafka.group_id)
        self._client.subscribe([self.topic], self._on_assign, self._on_revoke)
        self._pending_offsets: dict[TopicPartition, int] = {}
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._cluster_id: str | None = None
        self._observed_cluster: str | None = None
        self._cluster_check_s = cluster_check_s
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch_cluster, daemon=True,
                                         name="clickloop-cluster-watch")
        self._watcher.start()

    # ------------------------------------------------------------------ rebalance hooks

    def _on_assign(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._cluster_id = self._client.cluster_id()
        starts = self._stage.checkpoint().starts_for(self._cluster_id, partitions)
        log.info("assigned %s on cluster %s; starting from the sink checkpoint at %s",
                 partitions, self._cluster_id, starts)
        return starts

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        self.flush()

    # ------------------------------------------------------------------------- the loop

    def poll_once(self) -> int:
        """One poll; returns how many messages it consumed."""
        ingest = self.settings.ingest
        now = time.monotonic()
        observed = self._observed_cluster
        if observed is not None and observed != self._cluster_id:
            self._cluster_changed(observed)
        # With batches in flight in the apply process, a quiet topic must not hold their
        # outcomes (and the next flush) back for a whole poll timeout.
        timeout_s = min(ingest.poll_timeout_s, IN_FLIGHT_POLL_S) if self._in_flight \
            else ingest.poll_timeout_s
        batch = self._client.poll(ingest.poll_max_records, timeout_s)
        consumed = len(batch.values)
        if consumed:
            # Offsets now: confluent-kafka reads them from the client's position, which
            # the next poll moves on.
            self._in_flight.append((batch, batch.next_offsets()))
            self._stage.submit(batch.values)
        # Nothing new fetched: finish what is in flight rather than wait for a message.
        self._settle(wait=not consumed)
        if self._unflushed >= ingest.flush_max_events or (
                self._unflushed and now - self._last_flush >= ingest.flush_interval_s):
            self.flush()
        return consumed

    def _settle(self, wait: bool) -> None:
        """Account for the batches the stage has finished: dead letters, counters, offsets."""
        counters, dlq_max_raw_bytes = self.counters, self.settings.ingest.dlq_max_raw_bytes
        for outcome in self._stage.completed(wait):
            batch, offsets = self._in_flight.popleft()
            if rejected := outcome.rejected:
                self.dlq.send_raw(
                    dead_letter_record(batch.values[r.index], batch.key(r.index), r.reason,
                                       *batch.source(r.index), dlq_max_raw_bytes)
                    for r in rejected)
            consumed = len(batch.values)
            counters.consumed += consumed
            counters.rejected += len(rejected)
            counters.applied += outcome.applied
            counters.duplicates += consumed - len(rejected) - outcome.applied
            self._pending_offsets.update(offsets)
            self._unflushed += consumed

    def flush(self) -> None:
        """Every batch finished, dead letters out, sink durable with its offsets, then commit.
        (Dead letters first: the sink's checkpoint is where a restart resumes.)"""
        self._settle(wait=True)
        self.dlq.flush()
        offsets, self._pending_offsets = self._pending_offsets, {}
        self._stage.flush(offsets, self._cluster_id)
        if offsets:
            self._client.commit(offsets)
        self._unflushed = 0
        self._last_flush = time.monotonic()

    def _watch_cluster(self) -> None:
        while True:
            try:
                self._observed_cluster = self._client.cluster_id()
            except Exception:  # noqa: BLE001 - broker unreachable: nothing to compare yet
                pass
            if self._closing.wait(self._cluster_check_s):
                return

    def _cluster_changed(self, current: str) -> None:
        if self._cluster_id is not None:
            log.warning("broker cluster changed from %s to %s: re-reading from the beginning",
                        self._cluster_id, current)
            self.flush()
            self._client.seek_to_beginning(self._client.assignment())
            ensure_topics(self.bootstrap, {self.topic: self.settings.kafka.partitions,
                                           self.settings.kafka.dlq_topic: 1})
        self._cluster_id = current

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
        finally:
            self._watcher.join()
            try:
                self._client.close()  # may revoke partitions, which flushes through the stage
            finally:
                self._stage.close()
                self.dlq.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
