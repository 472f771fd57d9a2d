"""The ingest pipeline against a real broker over a real socket (the embedded Tansu)."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import polars as pl
import pytest

from ingest.broker import EmbeddedBroker, free_port
from ingest.codec import encode
from ingest.consumer import EventConsumer
from ingest.dlq import read_dead_letters
from ingest.events import Click, Event
from ingest.journal import JournalFull
from ingest.logstore import ParquetLogStore, scan
from ingest.producer import EventProducer
from ingest.settings import Settings
from ingest.sink import MemorySink
from simulation.clicks import PositionBasedModel, examination
from simulation.policies import EpsilonGreedyPolicy, popularity_policy
from simulation.simulator import simulate
from simulation.world import World

pytestmark = pytest.mark.kafka
BACKENDS = [
    "kafka-python",
    pytest.param("confluent-kafka", marks=pytest.mark.skipif(
        importlib.util.find_spec("confluent_kafka") is None,
        reason="confluent-kafka (the fast extra) is not installed")),
]


def wait_for(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.02)


def good_events(n: int, seed: int = 0) -> list[Event]:
    """``n`` simulated events (impressions, clicks, reactions, dwell) in time order."""
    world = World(n_items=1000, n_users=300, seed=seed)
    log = simulate(world, EpsilonGreedyPolicy(popularity_policy(world), 0.3),
                   PositionBasedModel(examination(5)), n=n, k=5, seed=seed)
    return log.events()[:n]


def clicks(n: int, prefix: str) -> list[Event]:
    return [Click(event_id=f"{prefix}-{i}", ts=1.7e9 + i, user_id=f"u{i % 97}",
                  request_id=f"r{i}", item_id=f"i{i % 13}", position=1 + i % 5)
            for i in range(n)]


TEN_MB = 10 * 1024 * 1024


def malformed(i: int) -> tuple[bytes, str]:
    """The i-th bad message and the words its DLQ reason must contain."""
    click = {"type": "click", "event_id": f"bad-{i}", "ts": 1.0, "user_id": "u",
             "request_id": "r", "item_id": "x", "position": 1}
    impression = {"type": "impression", "event_id": f"bad-{i}", "ts": 1.0, "user_id": "u",
                  "request_id": "r", "policy": "p",
                  "slots": [{"item_id": "x", "position": 1, "score": 0.0, "propensity": 0.5}]}
    kind = i % 9
    if i == 500:
        return b'{"type": "click", "pad": "' + b"x" * TEN_MB + b'"}', "over max_event_bytes"
    if i == 501:
        deep = b"[" * 100_000 + b"]" * 100_000
        return b'{"type": "click", "event_id": ' + deep + b"}", "event_id must be str"
    if i == 502:
        return b"[" * 100_000, "must be a JSON object"
    if kind == 0:
        return b'{"type": "click", "event_id": "bad-%d", ' % i, "not valid JSON"
    if kind == 1:
        return msgspec.json.encode({**click, "position": "2"}), "position='2' must be int"
    if kind == 2:
        del click["item_id"]
        return msgspec.json.encode(click), "item_id is required"
    if kind == 3:
        return msgspec.json.encode({**click, "position": -3}), "position=-3 must be an integer"
    if kind == 4:
        raw = msgspec.json.encode(impression).replace(b'"propensity":0.5', b'"propensity":NaN')
        return raw, "not valid JSON"
    if kind == 5:
        impression["slots"][0]["propensity"] = 1.7  # type: ignore[index]
        return msgspec.json.encode(impression), "slots[0].propensity=1.7 must be in (0, 1]"
    if kind == 6:
        return msgspec.json.encode({**click, "type": "purchase"}), "type='purchase' must be"
    if kind == 7:
        impression["slots"][0]["propensity"] = 0  # type: ignore[index]
        return msgspec.json.encode(impression), "slots[0].propensity=0 must be in (0, 1]"
    return msgspec.json.encode({**click, "ts": "yesterday"}), "ts='yesterday' must be float"


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_messages_go_to_the_dlq_and_counters_reconcile(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings], backend: str
) -> None:
    settings = settings_factory(kafka={"backend": backend})
    good = good_events(10_000)
    bad = [malformed(i) for i in range(1000)]
    records = [(e.user_id.encode(), encode(e), None) for e in good]
    for i, (raw, _) in enumerate(bad):
        records.append((b"bad-%d" % i, raw, None))
    random.Random(3).shuffle(records)
    with EventProducer(settings, broker.bootstrap) as producer:
        producer.send_raw(records)
        producer.flush()
        assert producer.stats.acknowledged == 11_000 and producer.journal.pending == 0

    sink = MemorySink()
    with EventConsumer(settings, sink, broker.bootstrap) as consumer:
        counters = consumer.run(max_events=11_000, idle_timeout_s=60)
    assert counters.as_dict() == {"consumed": 11_000, "applied": 10_000, "rejected": 1000,
                                  "duplicates": 0}
    assert counters.reconciles
    assert sorted(e.event_id for e in sink.events) == sorted(e.event_id for e in good)

    letters = read_dead_letters(settings.kafka, broker.bootstrap, max_records=1000,
                                idle_timeout_s=10)
    assert len(letters) == 1000
    by_key = {letter.key: letter for letter in letters}
    assert len(by_key) == 1000
    for i, (raw, reason) in enumerate(bad):
        letter = by_key[b"bad-%d" % i]
        assert reason in letter.error, (i, letter.error)
        assert letter.topic == settings.kafka.topic and letter.raw_size == len(raw)
        assert letter.raw == raw[: settings.ingest.dlq_max_raw_bytes]
    assert by_key[b"bad-500"].truncated
    assert len({(d.partition, d.offset) for d in letters}) == 1000


def _consume_process(settings: Settings, bootstrap: str, store: Path
                     ) -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "CLICKLOOP_KAFKA_TOPIC": settings.kafka.topic,
           "CLICKLOOP_KAFKA_DLQ_TOPIC": settings.kafka.dlq_topic,
           "CLICKLOOP_KAFKA_GROUP_ID": settings.kafka.group_id,
           "CLICKLOOP_KAFKA_BACKEND": settings.kafka.backend,
           "CLICKLOOP_INGEST_JOURNAL_DIR": settings.ingest.journal_dir,
           "CLICKLOOP_INGEST_FLUSH_MAX_EVENTS": "2000",
           "CLICKLOOP_INGEST_POLL_MAX_RECORDS": "500"}
    return subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "consume", "--out", str(store),
         "--bootstrap", bootstrap, "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2])


def _stored_ids(store: Path) -> list[str]:
    return scan(store, "click").select("event_id").collect()["event_id"].to_list()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_consumer_killed_mid_stream_resumes_exactly_once(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings], tmp_path: Path,
        backend: str) -> None:
    settings = settings_factory(kafka={"backend": backend})
    events = clicks(60_000, "k")
    with EventProducer(settings, broker.bootstrap) as producer:
        producer.send(events)
    store = tmp_path / "log"

    first = _consume_process(settings, broker.bootstrap, store)
    try:
        wait_for(lambda: len(_stored_ids(store)) >= 6000, 60, "the first 6,000 events stored")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    at_kill = len(_stored_ids(store))
    assert at_kill < 60_000, "the consumer finished before it could be killed mid-stream"

    second = _consume_process(settings, broker.bootstrap, store)
    try:
        wait_for(lambda: len(_stored_ids(store)) >= 60_000, 90, "all 60,000 events stored")
        second.send_signal(signal.SIGTERM)
        output = second.communicate(timeout=30)[0].decode()
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, output
    ids = _stored_ids(store)
    assert len(ids) == 60_000 and set(ids) == {e.event_id for e in events}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_broker_replaced_while_producing_every_event_arrives_once(
        settings_factory: Callable[..., Settings], tmp_path: Path, backend: str) -> None:
    """A memory-only broker loses what it held when it stops, so the first one is stopped only
    after the consumer has read what it acknowledged; everything produced after that has to
    survive in the producer's journal and reach the new broker."""
    settings = settings_factory(kafka={"backend": backend},
                                ingest={"producer_timeout_s": 2.0, "flush_interval_s": 0.2})
    port = free_port()
    events = clicks(10_000, "b")
    sink = MemorySink()
    stop = threading.Event()
    first = EmbeddedBroker(port=port, log_file=tmp_path / "first.log").start()
    second = EmbeddedBroker(port=port, log_file=tmp_path / "second.log")
    producer = EventProducer(settings, first.bootstrap, max_backoff_s=0.5)
    consumer = EventConsumer(settings, sink, first.bootstrap)
    thread = threading.Thread(target=consumer.run, kwargs={"should_stop": stop.is_set})
    thread.start()
    try:
        for start in range(0, 10_000, 500):
            producer.send(events[start:start + 500])
            producer.flush()
            if start == 3500:
                assert producer.journal.pending == 0
                wait_for(lambda: len(sink.events) >= 4000, 60, "4,000 events consumed")
                first.stop()
        assert producer.journal.pending > 0, "nothing was spooled while the broker was down"
        second.start()
        assert second.cluster_id != first.cluster_id

        def drained() -> bool:
            producer.flush()
            return producer.journal.pending == 0

        wait_for(drained, 60, "the journal to drain into the new broker")
        wait_for(lambda: len(sink.events) >= 10_000, 90, "all 10,000 events consumed")
    finally:
        stop.set()
        thread.join(timeout=60)
        consumer.close()
        producer.close()
        first.stop()
        second.stop()
    ids = [e.event_id for e in sink.events]
    assert len(ids) == 10_000 and set(ids) == {e.event_id for e in events}
    assert consumer.counters.reconciles
    assert producer.stats.spooled >= 6000 and producer.stats.drained == producer.stats.spooled


def test_producer_refuses_clearly_when_the_journal_is_full(
        settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(ingest={"journal_max_bytes": 20_000, "producer_timeout_s": 0.5,
                                        "producer_batch_size": 50})
    producer = EventProducer(settings, f"127.0.0.1:{free_port()}")  # nobody listens there
    producer.send(clicks(50, "j"))  # first batch: spooled
    assert producer.journal.pending == 50 and producer.stats.acknowledged == 0
    with pytest.raises(JournalFull, match="refusing new events rather than dropping any"):
        producer.send(clicks(500, "k"))
    assert producer.journal.pending < 500


def test_group_consumer_reads_a_log_store_offsets_from_its_checkpoint(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """Offsets committed to Kafka are the group's; the store's checkpoint is the truth. A
    consumer of another group (no committed offsets: it would start at the beginning) on the
    same store reads only what the store has not got."""
    settings = settings_factory()
    with EventProducer(settings, broker.bootstrap) as producer:
        producer.send(clicks(3000, "c"))
    store = ParquetLogStore(tmp_path / "log")
    with EventConsumer(settings, store, broker.bootstrap) as consumer:
        consumer.run(max_events=3000, idle_timeout_s=30)
    checkpoint = store.checkpoint()
    assert sum(checkpoint.offsets.values()) == 3000
    with EventProducer(settings, broker.bootstrap) as producer:
        producer.send(clicks(500, "d"))
    other = msgspec.structs.replace(
        settings, kafka=msgspec.structs.replace(settings.kafka, group_id="another-group"))
    with EventConsumer(other, ParquetLogStore(tmp_path / "log"), broker.bootstrap) as again:
        counters = again.run(max_events=500, idle_timeout_s=30)
        assert len(again._client.assignment()) == settings.kafka.partitions
    assert counters.as_dict() == {"consumed": 500, "applied": 500, "rejected": 0,
                                  "duplicates": 0}
    assert scan(tmp_path / "log", "click").select(pl.len()).collect().item() == 3500


class _Tracked(EventConsumer):
    """Records its partitions from the rebalance callbacks, on its own thread
    (confluent-kafka's ``assignment()`` waits on a ``consume`` of another thread)."""

    owned: frozenset[tuple[str, int]] = frozenset()

    def _on_assign(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        starts = super()._on_assign(partitions)
        self.owned = frozenset(partitions)
        return starts

    def _on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        self.owned = frozenset()
        super()._on_revoke(partitions)


@pytest.mark.parametrize("backend", BACKENDS)
def test_offsets_read_but_not_flushed_are_committed_when_a_partition_changes_hands(
        broker: EmbeddedBroker, settings_factory: Callable[..., Settings], backend: str
) -> None:
    """The first member reads every event with no flush due; when a second member joins,
    the first flushes and commits in its revoke, so the second starts its partition where
    the first got to: the group holds every event once."""
    settings = settings_factory(
        kafka={"backend": backend, "partitions": 2, "session_timeout_ms": 3000},
        ingest={"flush_interval_s": 3600.0, "flush_max_events": 1_000_000})
    first_events, later = clicks(300, "a"), clicks(100, "b")
    sinks = [MemorySink(), MemorySink()]
    consumers: list[_Tracked] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(consumer: EventConsumer) -> None:
        try:
            consumer.run(should_stop=stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def start(sink: MemorySink) -> None:
        consumers.append(_Tracked(settings, sink, broker.bootstrap))
        thread = threading.Thread(target=run, args=(consumers[-1],))
        thread.start()
        threads.append(thread)

    threads: list[threading.Thread] = []
    try:
        start(sinks[0])
        wait_for(lambda: len(consumers[0].owned) == 2, 30, "one member")
        with EventProducer(settings, broker.bootstrap) as producer:
            producer.send(first_events)
        wait_for(lambda: consumers[0].counters.consumed == 300, 30, "the first events read")
        start(sinks[1])
        wait_for(lambda: bool(errors)
                 or all(len(c.owned) == 1 for c in consumers),
                 30, "the two members to split the partitions")
        assert not errors, f"a member failed in the rebalance: {errors[0]!r}"
        with EventProducer(settings, broker.bootstrap) as producer:
            producer.send(later)
        every = {e.event_id for e in [*first_events, *later]}
        wait_for(lambda: bool(errors) or all(any(e in c._window for c in consumers)
                                             for e in every), 30, "every event read")
        assert not errors, f"a member failed: {errors[0]!r}"
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for consumer in consumers:
            consumer.close()
    held = sorted(e.event_id for sink in sinks for e in sink.events)
    assert held == sorted(every)  # none twice: the second member read on from the commit
