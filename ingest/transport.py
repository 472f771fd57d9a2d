"""The small Kafka interface clickloop needs, with two backends behind it: ``kafka-python``
(always installed) and ``confluent-kafka`` (the ``fast`` extra, librdkafka, the faster one).
Everything above this module talks to :class:`ProducerClient`, :class:`ConsumerClient` and
:func:`ensure_topics` only. The client libraries are imported on first use, so that importing
this module stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Protocol

from ingest.journal import Record
from ingest.settings import KafkaSettings
from ingest.sink import TopicPartition

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], None]
#: Called with newly assigned partitions; returns where to start reading each (or nothing,
#: to start at the committed offset, else the beginning).
AssignCallback = Callable[[list[TopicPartition]], dict[TopicPartition, int]]


class TransportError(RuntimeError):
    """The broker could not be reached or refused a request."""


class PolledBatch(Protocol):
    """The messages of one poll, from any partitions, in the client's own objects.

    ``values`` is built once per poll; a key or a source ``(topic, partition, offset)`` is read
    only for the few messages that need it (the rejected), which keeps the per-message cost of
    a poll down. ``next_offsets`` gives, per partition, the offset after its last message.
    """

    values: list[bytes | None]

    def key(self, index: int) -> bytes | None: ...
    def source(self, index: int) -> tuple[str, int, int]: ...
    def next_offsets(self) -> dict[TopicPartition, int]: ...


class ProducerClient(Protocol):
    def send_batch(self, topic: str, records: Sequence[Record], timeout_s: float) -> list[int]:
        """Send and wait; return the indices of records that were *not* acknowledged."""
        ...

    def close(self) -> None: ...


class ConsumerClient(Protocol):
    def subscribe(self, topics: list[str], on_assign: AssignCallback,
                  on_revoke: PartitionsCallback) -> None: ...
    def poll(self, max_records: int, timeout_s: float) -> PolledBatch: ...
    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit ``offsets`` for the group; False when the broker refused (logged)."""
    def seek_to_beginning(self, partitions: list[TopicPartition]) -> None: ...
    def assignment(self) -> list[TopicPartition]: ...
    def cluster_id(self) -> str | None: ...
    def close(self) -> None: ...


# Options both clients share, in kafka-python's names (librdkafka's have dots for underscores).
_PRODUCER = {"acks": "all", "linger_ms": 5, "max_in_flight_requests_per_connection": 1}


def _consumer_options(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    return {"group_id": group_id, "enable_auto_commit": False, "auto_offset_reset": "earliest",
            "session_timeout_ms": settings.session_timeout_ms,
            "heartbeat_interval_ms": max(100, settings.session_timeout_ms // 6),
            "max_partition_fetch_bytes": settings.max_request_bytes,
            "fetch_max_bytes": 4 * settings.max_request_bytes, "reconnect_backoff_max_ms": 500}


def _pairs(partitions: Any) -> list[TopicPartition]:
    return [(tp.topic, tp.partition) for tp in partitions]


_COMMIT_FAILED = "offset commit failed (%s); the sink checkpoint still holds them"


# --------------------------------------------------------------------------- kafka-python


class _KafkaPythonBatch:
    def __init__(self, records: dict[Any, list[Any]]) -> None:
        self._records = [m for messages in records.values() for m in messages]
        self._next = {(tp.topic, tp.partition): messages[-1].offset + 1
                      for tp, messages in records.items() if messages}
        self.values = [m.value for m in self._records]

    def key(self, index: int) -> bytes | None:
        return self._records[index].key

    def source(self, index: int) -> tuple[str, int, int]:
        m = self._records[index]
        return m.topic, m.partition, m.offset

    def next_offsets(self) -> dict[TopicPartition, int]:
        return self._next


class _KafkaPythonProducer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, timeout_s: float) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self._error = KafkaError
        timeout_ms = int(timeout_s * 1000)
        try:
            self._producer = KafkaProducer(
                **_PRODUCER, bootstrap_servers=bootstrap.split(","), batch_size=256 * 1024,
                max_request_size=settings.max_request_bytes, max_block_ms=timeout_ms,
                request_timeout_ms=min(timeout_ms, settings.request_timeout_ms),
                delivery_timeout_ms=timeout_ms + 1000, bootstrap_timeout_ms=timeout_ms)
        except KafkaError as exc:
            raise TransportError(f"cannot connect a producer to {bootstrap}: {exc}") from None

    def send_batch(self, topic: str, records: Sequence[Record], timeout_s: float) -> list[int]:
        futures, failed = [], []
        for index, (key, value, headers) in enumerate(records):
            try:
                futures.append((index, self._producer.send(topic, value=value, key=key,
                                                           headers=headers)))
            except self._error:
                failed.append(index)
        with suppress(self._error):
            self._producer.flush(timeout=timeout_s)
        failed += [index for index, f in futures if not f.is_done or f.failed()]
        return sorted(failed)

    def close(self) -> None:
        # Abandon anything unacknowledged: the caller has journaled it, and a late delivery
        # would only add duplicates. close() raises on pending records before it stops the
        # sender, and kafka-python has no public abort: force-close the sender, then close.
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
        self._in_listener = False
        try:
            self._consumer = KafkaConsumer(
                **_consumer_options(settings, group_id), bootstrap_servers=bootstrap.split(","),
                request_timeout_ms=settings.request_timeout_ms + settings.session_timeout_ms,
                receive_message_max_bytes=8 * settings.max_request_bytes)
        except KafkaError as exc:
            raise TransportError(f"cannot connect a consumer to {bootstrap}: {exc}") from None

    def subscribe(self, topics: list[str], on_assign: AssignCallback,
                  on_revoke: PartitionsCallback) -> None:
        from kafka import ConsumerRebalanceListener
        from kafka.structs import TopicPartition as KTP

        consumer, client = self._consumer, self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
                # kafka-python calls this on its IO thread, where a blocking commit cannot
                # wait for its own reply: the revoke's commit goes out asynchronously, ahead
                # of the join request on the coordinator's connection.
                client._in_listener = True
                try:
                    on_revoke(_pairs(revoked))
                finally:
                    client._in_listener = False

            def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
                for (topic, partition), offset in on_assign(_pairs(assigned)).items():
                    consumer.seek(KTP(topic, partition), offset)

        consumer.subscribe(topics, listener=Listener())

    def poll(self, max_records: int, timeout_s: float) -> PolledBatch:
        return _KafkaPythonBatch(
            self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records))

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        from kafka.structs import OffsetAndMetadata
        from kafka.structs import TopicPartition as KTP

        offsets_ = {KTP(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            if self._in_listener:
                # Its outcome comes after the listener returns: a failure is only logged.
                self._consumer.commit_async(offsets_, callback=self._async_committed)
            else:
                self._consumer.commit(offsets_, timeout_ms=self._timeout_ms)
        except self._error as exc:
            log.warning(_COMMIT_FAILED, exc)
            return False
        return True

    @staticmethod
    def _async_committed(offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            log.warning(_COMMIT_FAILED, response)

    def seek_to_beginning(self, partitions: list[TopicPartition]) -> None:
        from kafka.structs import TopicPartition as KTP

        if partitions:  # kafka-python seeks every assigned partition when given none
            self._consumer.seek_to_beginning(*[KTP(t, p) for t, p in partitions])

    def assignment(self) -> list[TopicPartition]:
        return sorted(_pairs(self._consumer.assignment()))

    def cluster_id(self) -> str | None:
        return self._consumer._client.cluster.cluster_id  # no public accessor in kafka-python

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=self._timeout_ms)


# ------------------------------------------------------------------------ confluent-kafka


def _librdkafka(settings: KafkaSettings, bootstrap: str, options: dict[str, Any]
                ) -> dict[str, Any]:
    return {**{name.replace("_", "."): value for name, value in options.items()},
            "bootstrap.servers": bootstrap, "message.max.bytes": settings.max_request_bytes,
            "receive.message.max.bytes": 8 * settings.max_request_bytes + 512,
            "reconnect.backoff.max.ms": 500, "log_level": 3}


class _ConfluentBatch:
    """Built with C-level ``map`` over the message methods: a Python loop over a batch's
    messages costs as much again as the client's own consume."""

    def __init__(self, messages: list[Any], consumer: Any) -> None:
        from confluent_kafka import Message

        # Errors here are partition-EOF notices and transient faults librdkafka retries.
        if any(map(Message.error, messages)):
            messages = [m for m in messages if m.error() is None]
        self._messages, self._consumer = messages, consumer
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

        m = self._messages
        present = set(zip(map(Message.topic, m), map(Message.partition, m), strict=True))
        positions = self._consumer.position([CTP(t, p) for t, p in present])
        return {(tp.topic, tp.partition): tp.offset for tp in positions}


class _ConfluentProducer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, timeout_s: float) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({
            **_librdkafka(settings, bootstrap, _PRODUCER),
            # kafka-python's key hash: a user's events land on one partition with either backend.
            "partitioner": "murmur2_random",
            "enable.idempotence": False,
            "message.timeout.ms": int(timeout_s * 1000),
        })

    def send_batch(self, topic: str, records: Sequence[Record], timeout_s: float) -> list[int]:
        acknowledged = [False] * len(records)

        def delivered(index: int) -> Callable[[object, object], None]:
            def callback(error: object, _message: object) -> None:
                acknowledged[index] = error is None
            return callback

        for index, (key, value, headers) in enumerate(records):
            with suppress(Exception):  # BufferError or KafkaException: never acknowledged
                self._producer.produce(topic, value=value, key=key, headers=headers,
                                       on_delivery=delivered(index))
            self._producer.poll(0)
        if self._producer.flush(timeout_s):
            self.close()  # abandons the rest, which the caller journals
        return [index for index, ok in enumerate(acknowledged) if not ok]

    def close(self) -> None:
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.flush(0)


class _ConfluentConsumer:
    def __init__(self, settings: KafkaSettings, bootstrap: str, group_id: str) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({
            **_librdkafka(settings, bootstrap, _consumer_options(settings, group_id)),
            "enable.auto.offset.store": False,
            "fetch.queue.backoff.ms": settings.fetch_queue_backoff_ms,
        })

    def subscribe(self, topics: list[str], on_assign: AssignCallback,
                  on_revoke: PartitionsCallback) -> None:
        def assigned(consumer: Any, partitions: list[Any]) -> None:
            starts = on_assign(_pairs(partitions))
            for tp in partitions:
                tp.offset = starts.get((tp.topic, tp.partition), tp.offset)
            consumer.assign(partitions)

        self._consumer.subscribe(topics, on_assign=assigned,
                                 on_revoke=lambda _, partitions: on_revoke(_pairs(partitions)))

    def poll(self, max_records: int, timeout_s: float) -> PolledBatch:
        return _ConfluentBatch(
            self._consumer.consume(num_messages=max_records, timeout=timeout_s), self._consumer)

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        try:
            self._consumer.commit(offsets=[CTP(t, p, o) for (t, p), o in offsets.items()],
                                  asynchronous=False)
        except KafkaException as exc:
            log.warning(_COMMIT_FAILED, exc)
            return False
        return True

    def seek_to_beginning(self, partitions: list[TopicPartition]) -> None:
        from confluent_kafka import OFFSET_BEGINNING
        from confluent_kafka import TopicPartition as CTP

        for topic, partition in partitions:
            self._consumer.seek(CTP(topic, partition, OFFSET_BEGINNING))

    def assignment(self) -> list[TopicPartition]:
        return sorted(_pairs(self._consumer.assignment()))

    def cluster_id(self) -> str | None:
        return self._consumer.list_topics(timeout=2.0).cluster_id

    def close(self) -> None:
        self._consumer.close()


# -------------------------------------------------------------------------------- factory


def make_producer(settings: KafkaSettings, bootstrap: str, timeout_s: float) -> ProducerClient:
    cls = _ConfluentProducer if settings.backend == "confluent-kafka" else _KafkaPythonProducer
    return cls(settings, bootstrap, timeout_s)


def make_consumer(settings: KafkaSettings, bootstrap: str, group_id: str) -> ConsumerClient:
    cls = _ConfluentConsumer if settings.backend == "confluent-kafka" else _KafkaPythonConsumer
    return cls(settings, bootstrap, group_id)


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 10.0) -> None:
    """Create the topics that do not exist yet, with the given partition counts."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","),
                                 request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    except KafkaError as exc:
        raise TransportError(f"cannot reach the broker at {bootstrap}: {exc}") from None
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, count, 1) for name, count in topics.items()
                   if name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # another client created it meanwhile
                admin.create_topics(missing)
    except KafkaError as exc:
        raise TransportError(f"cannot create topics on {bootstrap}: {exc}") from None
    finally:
        admin.close()
