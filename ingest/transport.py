"""The small Kafka interface clickloop needs, with two backends behind it.

``kafka-python`` is always installed; ``confluent-kafka`` (the ``fast`` extra, librdkafka)
consumes far faster (``benchmarks/ingest.py`` times both). Everything above this module
talks to :class:`ProducerClient`, :class:`ConsumerClient` and :func:`ensure_topics` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ingest.journal import Record as OutgoingRecord
from ingest.settings import KafkaSettings

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
PartitionsCallback = Callable[[list[TopicPartition]], None]
#: Called with newly assigned partitions; returns where to start reading each (or nothing,
#: to start at the committed offset, else the beginning).
AssignCallback = Callable[[list[TopicPartition]], dict[TopicPartition, int]]


class TransportError(RuntimeError):
    """The broker could not be reached or refused a request."""


class PolledBatch(Protocol):
    """The messages of one poll, from any partitions, in the client's own objects.

    ``values`` is built once per poll; keys and offsets are read only for the few messages
    that need them (the rejected), which keeps the per-message cost of a poll down.
    """

    values: list[bytes | None]

    def key(self, index: int) -> bytes | None: ...

    def source(self, index: int) -> tuple[str, int, int]:
        """(topic, partition, offset) of message ``index``."""
        ...

    def next_offsets(self) -> dict[TopicPartition, int]:
        """For each partition in the batch, the offset after its last message."""
        ...


class _KafkaPythonBatch:
    def __init__(self, records: dict[Any, list[Any]]) -> None:
        self._records = [m for messages in records.values() for m in messages]
        self._last = {(tp.topic, tp.partition): messages[-1].offset + 1
                      for tp, messages in records.items() if messages}
        self.values = [m.value for m in self._records]

    def key(self, index: int) -> bytes | None:
        return self._records[index].key

    def source(self, index: int) -> tuple[str, int, int]:
        m = self._records[index]
        return m.topic, m.partition, m.offset

    def next_offsets(self) -> dict[TopicPartition, int]:
        return self._last


class _ConfluentBatch:
    """Built with C-level ``map`` over the message methods: a Python loop over a batch's
    messages costs as much again as the client's own consume."""

    def __init__(self, messages: list[Any], consumer: Any) -> None:
        from confluent_kafka import Message

        # Errors here are partition-EOF notices and transient faults librdkafka retries.
        if any(map(Message.error, messages)):
            messages = [m for m in messages if m.error() is None]
        self._messages = messages
        self._consumer = consumer
        self.values = list(map(Message.value, messages))

    def key(self, index: int) -> bytes | None:
        return self._messages[index].key()

    def source(self, index: int) -> tuple[str, int, int]:
        m = self._messages[index]
        return m.topic(), m.partition(), m.offset()

    def next_offsets(self) -> dict[TopicPartition, int]:
        # librdkafka's position in a partition is the offset after the last message it
        # handed to the application, i.e. after this batch's last one in that partition.
        from confluent_kafka import Message
        from confluent_kafka import TopicPartition as CTP

        if not self._messages:
            return {}
        present = set(zip(map(Message.topic, self._messages),
                          map(Message.partition, self._messages), strict=True))
        return {(tp.topic, tp.partition): tp.offset
                for tp in self._consumer.position([CTP(t, p) for t, p in present])}


class ProducerClient(Protocol):
    def send_batch(
        self, topic: str, records: Sequence[OutgoingRecord], timeout_s: float
    ) -> list[int]:
        """Send and wait; return the indices of records that were *not* acknowledged."""
        ...

    def close(self) -> None: ...


class ConsumerClient(Protocol):
    def subscribe(
        self, topics: list[str], on_assign: AssignCallback, on_revoke: PartitionsCallback
    ) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> PolledBatch: ...

    def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    def seek_to_beginning(self, partitions: list[TopicPartition]) -> None: ...

    def assignment(self) -> list[TopicPartition]: ...

    def cluster_id(self) -> str | None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- kafka-python


class _KafkaPythonProducer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, timeout_s: float) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self._error = KafkaError
        timeout_ms = int(timeout_s * 1000)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap.split(","),
                acks="all",
                linger_ms=5,
                batch_size=256 * 1024,
                max_request_size=settings.max_request_bytes,
                max_block_ms=timeout_ms,
                request_timeout_ms=min(timeout_ms, settings.request_timeout_ms),
                delivery_timeout_ms=timeout_ms + 1000,
                bootstrap_timeout_ms=timeout_ms,
                max_in_flight_requests_per_connection=1,
            )
        except KafkaError as exc:
            raise TransportError(f"cannot connect a producer to {bootstrap}: {exc}") from None

    def send_batch(
        self, topic: str, records: Sequence[OutgoingRecord], timeout_s: float
    ) -> list[int]:
        futures = []
        failed: list[int] = []
        for index, (key, value, headers) in enumerate(records):
            try:
                futures.append((index, self._producer.send(topic, value=value, key=key,
                                                           headers=headers)))
            except self._error:
                failed.append(index)
        try:
            self._producer.flush(timeout=timeout_s)
        except self._error:
            pass
        for index, future in futures:
            if not future.is_done or future.failed():
                failed.append(index)
        return sorted(failed)

    def close(self) -> None:
        # Abandon anything unacknowledged: the caller has journaled it already, and a late
        # delivery would only add duplicates. close() flushes first and raises on pending
        # records before it stops the sender; kafka-python has no public abort, so the
        # sender is force-closed (aborting its batches) and close() then completes.
        try:
            self._producer.close(timeout=0)
        except self._error:
            self._producer._sender.force_close()
            self._producer.close(timeout=0)


class _KafkaPythonConsumer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, group_id: str) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self._error = KafkaError
        self._timeout_ms = settings.request_timeout_ms
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap.split(","),
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=max(100, settings.session_timeout_ms // 6),
                request_timeout_ms=settings.request_timeout_ms + settings.session_timeout_ms,
                max_partition_fetch_bytes=settings.max_request_bytes,
                fetch_max_bytes=4 * settings.max_request_bytes,
                receive_message_max_bytes=8 * settings.max_request_bytes,
                reconnect_backoff_max_ms=500,
            )
        except KafkaError as exc:
            raise TransportError(f"cannot connect a consumer to {bootstrap}: {exc}") from None

    def subscribe(
        self, topics: list[str], on_assign: AssignCallback, on_revoke: PartitionsCallback
    ) -> None:
        from kafka import ConsumerRebalanceListener
        from kafka.structs import TopicPartition as KTP

        consumer = self._consumer

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
                on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
                starts = on_assign([(tp.topic, tp.partition) for tp in assigned])
                for (topic, partition), offset in starts.items():
                    consumer.seek(KTP(topic, partition), offset)

        self._consumer.subscribe(topics, listener=Listener())

    def poll(self, max_records: int, timeout_s: float) -> PolledBatch:
        return _KafkaPythonBatch(
            self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records))

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka.structs import OffsetAndMetadata
        from kafka.structs import TopicPartition as KTP

        try:
            self._consumer.commit({KTP(t, p): OffsetAndMetadata(o, "", -1)
                                   for (t, p), o in offsets.items()},
                                  timeout_ms=self._timeout_ms)
        except self._error as exc:
            # The sink's own checkpoint is the source of truth for positions; a failed
            # commit only means a restart re-reads what the checkpoint already skips.
            log.warning("offset commit failed (%s); the sink checkpoint still holds them", exc)

    def seek_to_beginning(self, partitions: list[TopicPartition]) -> None:
        from kafka.structs import TopicPartition as KTP

        if partitions:
            self._consumer.seek_to_beginning(*[KTP(t, p) for t, p in partitions])

    def assignment(self) -> list[TopicPartition]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def cluster_id(self) -> str | None:
        return self._consumer._client.cluster.cluster_id  # no public accessor in kafka-python

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=self._timeout_ms)


# ------------------------------------------------------------------------ confluent-kafka


def _confluent_common(settings: KafkaSettings, bootstrap: str) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        "message.max.bytes": settings.max_request_bytes,
        "receive.message.max.bytes": 8 * settings.max_request_bytes + 512,
        "reconnect.backoff.max.ms": 500,
        "log_level": 3,
    }


class _ConfluentProducer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, timeout_s: float) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({
            **_confluent_common(settings, bootstrap),
            "acks": "all",
            "linger.ms": 5,
            # The Java client's (and kafka-python's) key hash: a user lands on the same
            # partition whichever backend produced the event.
            "partitioner": "murmur2_random",
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
            "message.timeout.ms": int(timeout_s * 1000),
        })

    def send_batch(
        self, topic: str, records: Sequence[OutgoingRecord], timeout_s: float
    ) -> list[int]:
        acknowledged = [False] * len(records)
        failed: list[int] = []

        def delivered(index: int) -> Callable[[object, object], None]:
            def callback(error: object, _message: object) -> None:
                acknowledged[index] = error is None
            return callback

        for index, (key, value, headers) in enumerate(records):
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       on_delivery=delivered(index))
            except (BufferError, Exception):  # noqa: BLE001 - librdkafka raises KafkaException
                failed.append(index)
            self._producer.poll(0)
        remaining = self._producer.flush(timeout_s)
        if remaining:
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.flush(0)
        return sorted(set(failed) | {i for i, ok in enumerate(acknowledged) if not ok})

    def close(self) -> None:
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.flush(0)


class _ConfluentConsumer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, group_id: str) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({
            **_confluent_common(settings, bootstrap),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(100, settings.session_timeout_ms // 6),
            "max.partition.fetch.bytes": settings.max_request_bytes,
            "fetch.max.bytes": 4 * settings.max_request_bytes,
            "fetch.queue.backoff.ms": settings.fetch_queue_backoff_ms,
        })

    def subscribe(
        self, topics: list[str], on_assign: AssignCallback, on_revoke: PartitionsCallback
    ) -> None:
        def assigned(consumer: Any, partitions: list[Any]) -> None:
            starts = on_assign([(tp.topic, tp.partition) for tp in partitions])
            for tp in partitions:
                if (tp.topic, tp.partition) in starts:
                    tp.offset = starts[(tp.topic, tp.partition)]
            consumer.assign(partitions)

        def revoked(consumer: Any, partitions: list[Any]) -> None:
            on_revoke([(tp.topic, tp.partition) for tp in partitions])

        self._consumer.subscribe(topics, on_assign=assigned, on_revoke=revoked)

    def poll(self, max_records: int, timeout_s: float) -> PolledBatch:
        return _ConfluentBatch(
            self._consumer.consume(num_messages=max_records, timeout=timeout_s), self._consumer)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        try:
            self._consumer.commit(offsets=[CTP(t, p, o) for (t, p), o in offsets.items()],
                                  asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed (%s); the sink checkpoint still holds them", exc)

    def seek_to_beginning(self, partitions: list[TopicPartition]) -> None:
        from confluent_kafka import OFFSET_BEGINNING
        from confluent_kafka import TopicPartition as CTP

        for topic, partition in partitions:
            self._consumer.seek(CTP(topic, partition, OFFSET_BEGINNING))

    def assignment(self) -> list[TopicPartition]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def cluster_id(self) -> str | None:
        return self._consumer.list_topics(timeout=2.0).cluster_id

    def close(self) -> None:
        self._consumer.close()


# -------------------------------------------------------------------------------- factory


def make_producer(settings: KafkaSettings, bootstrap: str, timeout_s: float) -> ProducerClient:
    if settings.backend == "confluent-kafka":
        return _ConfluentProducer(settings, bootstrap, timeout_s)
    return _KafkaPythonProducer(settings, bootstrap, timeout_s)


def make_consumer(settings: KafkaSettings, bootstrap: str, group_id: str) -> ConsumerClient:
    if settings.backend == "confluent-kafka":
        return _ConfluentConsumer(settings, bootstrap, group_id)
    return _KafkaPythonConsumer(settings, bootstrap, group_id)


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 10.0) -> None:
    """Create the topics that do not exist yet, with the given partition counts."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","),
                                 request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise TransportError(f"cannot reach the broker at {bootstrap}: {exc}") from None
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, count, 1) for name, count in topics.items()
                   if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise TransportError(f"cannot create topics on {bootstrap}: {exc}") from None
    finally:
        admin.close()
