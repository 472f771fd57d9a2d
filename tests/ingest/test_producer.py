"""The producer against a real broker: where journaled records go, and when delivery is done."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from ingest.broker import EmbeddedBroker, free_port
from ingest.codec import encode
from ingest.dlq import MAX_ERROR_BYTES, dead_letter_record, parse_dead_letter
from ingest.events import Click, Event
from ingest.journal import Entry, Journal, journal_folder
from ingest.producer import EventProducer, Undelivered
from ingest.settings import Settings

pytestmark = pytest.mark.kafka


def clicks(n: int, prefix: str) -> list[Event]:
    return [Click(event_id=f"{prefix}-{i}", ts=1.7e9 + i, user_id=f"u{i % 7}",
                  request_id=f"r{i}", item_id="a", position=1 + i % 5) for i in range(n)]


def read_topic(bootstrap: str, topic: str, expected: int, deadline_s: float = 30.0
               ) -> list[Any]:
    """The messages of ``topic`` from the beginning, polled until ``expected`` have arrived or
    the deadline passes (end offsets are not used: the embedded broker can report them short)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None,
                             enable_auto_commit=False)
    deadline = time.monotonic() + deadline_s
    messages: list[Any] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)  # lets the metadata refresh
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if not assigned:
            return messages
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
    finally:
        consumer.close()
    return messages


def event_ids(messages: list[Any]) -> set[str]:
    import msgspec

    return {msgspec.json.decode(m.value)["event_id"] for m in messages}


def test_a_drain_sends_each_record_to_the_topic_it_was_journaled_for(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings]) -> None:
    a, b = settings_factory(), settings_factory()  # two topics, one journal folder
    spooled = clicks(50, "a")
    Journal(journal_folder(b.ingest.journal_dir, broker.bootstrap), b.ingest.journal_max_bytes,
            cluster=broker.bootstrap).append(
        [Entry(a.kafka.topic, broker.bootstrap, e.user_id.encode(), encode(e), None)
         for e in spooled])
    with EventProducer(b, broker.bootstrap) as producer:  # configured for topic B
        producer.send(clicks(20, "b"))
        assert producer.deliver(30) == 0
    assert event_ids(read_topic(broker.bootstrap, a.kafka.topic, 50)) == {
        e.event_id for e in spooled}
    assert event_ids(read_topic(broker.bootstrap, b.kafka.topic, 20)) == {
        e.event_id for e in clicks(20, "b")}


def test_a_producer_never_drains_the_journal_of_another_cluster(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(ingest={"producer_timeout_s": 0.5})
    gone = f"127.0.0.1:{free_port()}"  # nobody listens there
    folder = journal_folder(settings.ingest.journal_dir, gone)
    away = EventProducer(settings, gone)
    away.send(clicks(30, "x"))
    assert away.deliver(0) == 30
    spooled = rf"30 event\(s\) are spooled in {re.escape(str(folder))}, .*"
    with pytest.raises(Undelivered, match=spooled + r"deliver_timeout_s=0\.2.*`clickloop drain`"):
        away.deliver(0.2, check=True)
    away.close()
    with EventProducer(settings, broker.bootstrap) as here:
        assert here.deliver(10) == 0 and here.stats.drained == 0
    journal = Journal(folder, settings.ingest.journal_max_bytes)
    assert journal.pending == 30 and {e.cluster for e in journal.entries()} == {gone}
    # The broker moved: the journal's records go to the new address when asked explicitly.
    with EventProducer(settings, broker.bootstrap, journal=journal) as drainer:
        assert drainer.deliver(30) == 0 and drainer.stats.drained == 30
    assert event_ids(read_topic(broker.bootstrap, settings.kafka.topic, 30)) == {
        e.event_id for e in clicks(30, "x")}


def test_a_dead_letter_header_stays_bounded_for_a_1_mb_value() -> None:
    value = "é".encode() * 500_000  # 1 MB, two bytes a character: cut on a character
    error = f"user_id={value.decode()!r} must be 1 to 256 characters"
    key, payload, headers = dead_letter_record(value, b"u", error, "events", 3, 42, 64 * 1024)
    header = dict(headers or [])["clickloop.error"]
    assert len(header) <= MAX_ERROR_BYTES == 1024
    assert header.endswith(f"… ({len(error.encode()):,} bytes)".encode())
    assert len(payload) == 64 * 1024
    assert sum(len(name) + len(data) for name, data in headers or []) < 2 * MAX_ERROR_BYTES
    letter = parse_dead_letter(payload, headers or [], key)
    assert letter.error.startswith("user_id='éé") and letter.raw_size == 1_000_000
    assert letter.truncated and (letter.topic, letter.partition, letter.offset) == (
        "events", 3, 42)


def test_a_dead_letter_that_cannot_be_sent_does_not_hold_up_the_ones_after_it(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings]) -> None:
    # A request limit below the cut payload (64 KiB), for this DLQ producer only.
    settings = settings_factory(kafka={"max_request_bytes": 16 * 1024})
    kafka, ingest = settings.kafka, settings.ingest

    def letter(offset: int, raw: bytes) -> tuple[bytes | None, bytes, Any]:
        return dead_letter_record(raw, b"u", "not valid JSON", kafka.topic, 0, offset,
                                  ingest.dlq_max_raw_bytes)

    dlq = EventProducer(settings, broker.bootstrap, topic=kafka.dlq_topic, partitions=1,
                        journal_dir=f"{ingest.journal_dir}/dlq", ordered=False)
    try:
        dlq.send_raw([letter(0, b"x" * 1_000_000)])
        dlq.flush()
        assert dlq.journal.pending == 1  # refused, spooled
        dlq.send_raw(letter(offset, b"{oops") for offset in range(1, 6))
        dlq.flush()
        assert dlq.deliver(2.0) == 1  # retried until the deadline; still too big
        dlq.send_raw([letter(6, b"{late")])
        assert dlq.deliver(2.0) == 1
    finally:
        dlq.close()
    letters = [parse_dead_letter(m.value, m.headers or [], m.key)
               for m in read_topic(broker.bootstrap, kafka.dlq_topic, 6)]
    assert sorted(x.offset for x in letters) == [1, 2, 3, 4, 5, 6]
    waiting = dlq.journal.peek(10)
    assert [parse_dead_letter(e.value, e.headers or []).raw_size for e in waiting] == [1_000_000]
    assert waiting[0].topic == kafka.dlq_topic
