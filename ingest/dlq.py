"""Dead letters: rejected messages with the reason and where they came from.

A dead letter's value is the rejected payload itself (cut to ``dlq_max_raw_bytes``; the
headers then say how big it was and its SHA-256), and its headers carry the metadata::

    clickloop.error             why it was rejected, cut to MAX_ERROR_BYTES (a reason may
                                quote the whole value)
    clickloop.source.topic      where it was read
    clickloop.source.partition
    clickloop.source.offset
    clickloop.raw.size          the original payload size in bytes
    clickloop.raw.sha256        only when the payload was cut
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ingest.journal import Headers, Record
from ingest.settings import KafkaSettings
from ingest.transport import TransportError

_PREFIX = "clickloop."
#: Bound of the error header, so that a dead letter is never much larger than its cut payload.
MAX_ERROR_BYTES = 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error: str
    topic: str
    partition: int
    offset: int
    raw: bytes
    raw_size: int
    key: bytes | None = None

    @property
    def truncated(self) -> bool:
        return len(self.raw) < self.raw_size


def dead_letter_record(raw: bytes | None, key: bytes | None, error: str, topic: str,
                       partition: int, offset: int, max_raw_bytes: int) -> Record:
    payload = raw or b""
    reason = error.encode(errors="replace")
    if len(reason) > MAX_ERROR_BYTES:
        suffix = f"… ({len(reason):,} bytes)".encode()
        # Cut on a character, not inside one.
        reason = reason[:MAX_ERROR_BYTES - len(suffix)].decode(errors="ignore").encode() + suffix
    headers: Headers = [
        (_PREFIX + "error", reason),
        (_PREFIX + "source.topic", topic.encode()),
        (_PREFIX + "source.partition", str(partition).encode()),
        (_PREFIX + "source.offset", str(offset).encode()),
        (_PREFIX + "raw.size", str(len(payload)).encode()),
    ]
    if len(payload) > max_raw_bytes:
        headers.append((_PREFIX + "raw.sha256", hashlib.sha256(payload).hexdigest().encode()))
        payload = payload[:max_raw_bytes]
    return (key, payload, headers)


def parse_dead_letter(value: bytes | None, headers: Sequence[tuple[str, bytes]],
                      key: bytes | None = None) -> DeadLetter:
    meta = {name[len(_PREFIX):]: data.decode() for name, data in headers
            if name.startswith(_PREFIX)}
    return DeadLetter(
        error=meta["error"], topic=meta["source.topic"],
        partition=int(meta["source.partition"]), offset=int(meta["source.offset"]),
        raw=value or b"", raw_size=int(meta["raw.size"]), key=key,
    )


def read_dead_letters(settings: KafkaSettings, bootstrap: str, *, max_records: int | None = None,
                      idle_timeout_s: float = 3.0, deadline_s: float = 60.0) -> list[DeadLetter]:
    """The DLQ topic from the beginning, read without joining a consumer group until
    ``max_records``, ``idle_timeout_s`` without a message, or ``deadline_s``. (Not up to the
    end offsets: the embedded broker can report them short.)"""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError
    from kafka.structs import TopicPartition

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                                 max_partition_fetch_bytes=settings.max_request_bytes,
                                 fetch_max_bytes=4 * settings.max_request_bytes)
    except KafkaError as exc:
        raise TransportError(f"cannot reach the broker at {bootstrap}: {exc}") from None
    letters: list[DeadLetter] = []
    try:
        partitions = consumer.partitions_for_topic(settings.dlq_topic)
        if not partitions:
            return letters
        consumer.assign([TopicPartition(settings.dlq_topic, p) for p in partitions])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + deadline_s
        idle_at = time.monotonic() + idle_timeout_s
        while time.monotonic() < min(deadline, idle_at) and (
                max_records is None or len(letters) < max_records):
            for messages in consumer.poll(timeout_ms=200).values():
                letters += [parse_dead_letter(m.value, m.headers, m.key) for m in messages]
                idle_at = time.monotonic() + idle_timeout_s
    finally:
        consumer.close()
    return letters[:max_records]
