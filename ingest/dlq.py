"""Dead letters: rejected messages with the reason and where they came from.

A dead letter's value is the rejected payload itself (cut to ``dlq_max_raw_bytes``; the
headers then say how big it was and its SHA-256), and its headers carry the metadata::

    clickloop.error             why it was rejected, e.g. "slots[0].propensity=1.7 must be in (0, 1]"
    clickloop.source.topic      where it was read
    clickloop.source.partition
    clickloop.source.offset
    clickloop.raw.size          the original payload size in bytes
    clickloop.raw.sha256        only when the payload was cut
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ingest.journal import Headers, Record

_PREFIX = "clickloop."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error: str
    topic: str
    partition: int
    offset: int
    raw: bytes
    raw_size: int

    @property
    def truncated(self) -> bool:
        return len(self.raw) < self.raw_size


def dead_letter_record(
    raw: bytes | None, key: bytes | None, error: str, topic: str, partition: int, offset: int,
    max_raw_bytes: int,
) -> Record:
    payload = raw or b""
    headers: Headers = [
        (_PREFIX + "error", error.encode()),
        (_PREFIX + "source.topic", topic.encode()),
        (_PREFIX + "source.partition", str(partition).encode()),
        (_PREFIX + "source.offset", str(offset).encode()),
        (_PREFIX + "raw.size", str(len(payload)).encode()),
    ]
    if len(payload) > max_raw_bytes:
        headers.append((_PREFIX + "raw.sha256", hashlib.sha256(payload).hexdigest().encode()))
        payload = payload[:max_raw_bytes]
    return (key, payload, headers)


def parse_dead_letter(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
    meta = {name[len(_PREFIX):]: data.decode() for name, data in headers
            if name.startswith(_PREFIX)}
    return DeadLetter(
        error=meta["error"], topic=meta["source.topic"],
        partition=int(meta["source.partition"]), offset=int(meta["source.offset"]),
        raw=value or b"", raw_size=int(meta["raw.size"]),
    )
