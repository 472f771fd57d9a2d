"""Ingest throughput: the pipeline against the raw Kafka client, a consumer group of one and
of two, and replay to parquet.

Consume, one consumer. For each backend (kafka-python, confluent-kafka) the same topic of
simulated events is read twice in this process, by two fresh consumer groups:

- raw: the client library's own poll loop, touching each message's value;
- pipeline: :class:`ingest.consumer.EventConsumer` with a no-op sink (poll, decode, validate,
  dead-letter check, dedupe, frames, write, periodic flush and commit).

Both clocks start once the first poll that returned messages has been handled (so the group
join, which the embedded broker delays by about half the session timeout and which may end
inside that poll, is not counted; nor are that poll's messages) and stop when the n-th
message is done; no poll asks for more messages than remain (librdkafka waits out the poll
timeout for a batch it cannot fill). Reported: messages per second, the ratio pipeline /
raw, and CPU seconds per message (this process's CPU time over the same span, every thread
of it included: the client's fetch threads and heartbeats too; the broker's CPU is not).
Absolute rates depend on the machine; the broker shares its cores.

Consume, one consumer group over a topic of :data:`GROUP_PARTITIONS` partitions: one, then
two ``EventConsumer`` processes (the realistic deployment: a process per consumer, each
with a no-op sink of its own) with one ``group_id``, on a fresh empty topic. The members
poll the empty topic until the group has settled (every partition assigned, each member
holding some, none twice); then they stop polling but stay in the group (their heartbeats
run on a background thread), the topic is filled, and each is told to go and how many
messages its partitions hold. This keeps the join and any rebalance out of the measured
span and gives the members equal footing, where producing first would let the first member
to join take every partition until the broker admits the second. Reported: total messages
per second from the start of the first poll that returned messages, in any member (no join
is inside it: the group had settled), to the last message any member finished, every
message counted (stamps from the system-wide monotonic clock); CPU seconds per message,
each member's CPU time over its own span, summed; and what each member consumed. (As in the
one-consumer rows, librdkafka reads ahead on its own threads before the span, while the
members wait.) The run fails unless each member consumed what its partitions hold, their
counts add up to the topic's messages and each member held partitions. On a machine with
few cores the broker and the members compete for them.

For confluent-kafka the raw loop is also timed with librdkafka's default fetch backoff
instead of ours (``kafka.fetch_queue_backoff_ms``), to show what the setting does.

Without a broker: the consumer's per-batch work (decode and validate, dedupe window,
frames, no-op sink write) timed in CPU per message; the validating decode per event type
against stdlib json; the consumer's dedupe window once full, and the replay's dedupe against
every stored id, each against another structure doing the same job.

Replay to parquet: a JSON-lines event log through validation, dedupe and the parquet log
store (in one process, and with workers as a replay picks them by default, or as
``--replay-workers`` asks), and a columnar click log (parquet, one row per shown slot);
each replay runs three times, each time in a fresh interpreter as the command line runs it,
against polars alone reading the same file and writing parquet (no validation), a reference
floor measured in the same run. The targets are :data:`REPLAY_TARGETS`.

Results go to ``--out`` (by default a file in the system's temporary folder; pass
``--out benchmarks/results/ingest.json`` to record a run).

Usage: python benchmarks/ingest.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import compress
from pathlib import Path
from typing import IO, Any

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `ingest` package: take the folder out.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ingest.broker import EmbeddedBroker  # noqa: E402
from ingest.codec import decode_batch, encode  # noqa: E402
from ingest.consumer import EventConsumer  # noqa: E402
from ingest.dedupe import DedupeWindow  # noqa: E402
from ingest.events import Event, event_type  # noqa: E402
from ingest.frames import split_events  # noqa: E402
from ingest.joins import impression_click_join  # noqa: E402
from ingest.jsonl_log import auto_workers  # noqa: E402
from ingest.producer import EventProducer  # noqa: E402
from ingest.settings import IngestSettings, Settings, load_settings  # noqa: E402
from ingest.sink import NullSink  # noqa: E402
from ingest.transport import _ConfluentConsumer, _KafkaPythonConsumer, ensure_topics  # noqa: E402
from simulation.clicks import PositionBasedModel, examination  # noqa: E402
from simulation.policies import EpsilonGreedyPolicy, popularity_policy  # noqa: E402
from simulation.simulator import simulate  # noqa: E402
from simulation.world import World  # noqa: E402

# Wide enough for the tables when the output is not a terminal (a log, CI).
console = Console(width=shutil.get_terminal_size((140, 40)).columns)

#: librdkafka's default fetch.queue.backoff.ms (ours is a setting, 10 by default).
LIBRDKAFKA_FETCH_BACKOFF_MS = 1000
#: Partitions of every topic the consume rows read.
GROUP_PARTITIONS = 4
#: A group member gives up after this long without a message (and the run fails).
MEMBER_STALL_S = 30.0
#: How long the group may take to settle, and the whole group run to finish.
GROUP_JOIN_TIMEOUT_S = 90.0
GROUP_RUN_TIMEOUT_S = 900.0
#: Messages a poll returns at most, in every consume row.
POLL_RECORDS = 10_000
#: Events per second a replay must reach, by row: the JSON-lines log replayed as by default
#: and the parquet click log.
REPLAY_TARGETS = {"events_jsonl_auto": 400_000, "clicklog_parquet": 500_000}


def step(what: str) -> None:
    # Plain lines rather than a live progress display: its refresh thread would run inside
    # the CPU time this process measures.
    console.print(f"[dim]{what}…[/dim]")


def simulated(n: int, seed: int = 0) -> list[Event]:
    """n events of a simulated log, in time order: impressions of 5 slots, clicks, dwell,
    reactions."""
    world = World(n_items=10_000, seed=seed)
    impressions = n // 4 + 100
    while True:
        log = simulate(world, EpsilonGreedyPolicy(popularity_policy(world), 0.3),
                       PositionBasedModel(examination(5)), n=impressions, k=5, seed=seed)
        events = log.events()
        if len(events) >= n:
            return events[:n]
        impressions *= 2


def settings_for(base: Settings, backend: str, topic: str, journal: Path) -> Settings:
    kafka = msgspec.structs.replace(base.kafka, backend=backend, topic=topic,
                                    dlq_topic=f"{topic}.dlq", partitions=GROUP_PARTITIONS)
    ingest = msgspec.structs.replace(base.ingest, journal_dir=str(journal),
                                     poll_max_records=POLL_RECORDS, flush_max_events=200_000)
    return msgspec.structs.replace(base, kafka=kafka, ingest=ingest)


def produce(settings: Settings, bootstrap: str, events: Sequence[Event]) -> None:
    """Every event on the settings' topic, acknowledged (or this raises)."""
    ensure_topics(bootstrap, {settings.kafka.topic: settings.kafka.partitions})
    with EventProducer(settings, bootstrap) as producer:
        producer.send(events)
        producer.deliver(check=True)


@dataclass(frozen=True, slots=True)
class Timed:
    """Messages handled over a timed span, and the process CPU time spent in it."""

    messages: int
    seconds: float
    cpu_seconds: float

    # NaN for an empty span: a run so short that its first poll took every message.
    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.messages else math.nan

    @property
    def cpu_per_message(self) -> float:
        return self.cpu_seconds / self.messages if self.messages else math.nan

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "msgs_per_s": self.rate, "cpu_s_per_msg": self.cpu_per_message}


class _Clock:
    """Wall and process CPU time from :meth:`start` to :meth:`stop`."""

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self, messages: int) -> Timed:
        return Timed(messages, time.perf_counter() - self._wall,
                     time.process_time() - self._cpu)


def raw_consume(settings: Settings, bootstrap: str, n: int) -> Timed:
    """The client library's own loop (configured as ours is), from its first poll that
    returned messages (touched) to the n-th message touched."""
    group = f"raw-{uuid.uuid4().hex[:8]}"
    fetch: Callable[[int], Any]
    touch: Callable[[Any], int]
    if settings.kafka.backend == "confluent-kafka":
        consumer = _ConfluentConsumer(settings.kafka, bootstrap, group)._consumer

        def fetch(limit: int) -> Any:
            return consumer.consume(num_messages=limit, timeout=0.5)

        def touch(messages: Any) -> int:
            got = 0
            for message in messages:
                if message.error() is None:
                    got += message.value() is not None
            return got
    else:
        consumer = _KafkaPythonConsumer(settings.kafka, bootstrap, group)._consumer

        def fetch(limit: int) -> Any:
            return consumer.poll(timeout_ms=500, max_records=limit)

        def touch(records: Any) -> int:
            got = 0
            for messages in records.values():
                for message in messages:
                    got += message.value is not None
            return got
    consumer.subscribe([settings.kafka.topic])
    clock = _Clock()
    # No poll asks for more than remain: librdkafka waits out the timeout for a batch it
    # cannot fill.
    while not (first := touch(fetch(min(POLL_RECORDS, n)))):
        pass
    clock.start()
    count = first
    while count < n:
        count += touch(fetch(min(POLL_RECORDS, n - count)))
    timed = clock.stop(count - first)
    consumer.close()
    return timed


def pipeline_consume(settings: Settings, bootstrap: str, n: int) -> tuple[Timed, dict]:
    """The pipeline from its first poll that returned messages (handled) to its n-th
    message done, periodic flushes and commits included; the one final flush of a run is
    not (the raw loop has no counterpart of it)."""
    group = f"pipe-{uuid.uuid4().hex[:8]}"
    clock = _Clock()
    with EventConsumer(settings, NullSink(), bootstrap, group_id=group) as consumer:
        # As in the raw loop, no poll asks for more than remain (instrumentation only).
        client, fetch = consumer._client, consumer._client.poll

        def poll(max_records: int, timeout_s: float) -> Any:
            left = n - consumer.counters.consumed
            return fetch(max(1, min(max_records, left)), timeout_s)

        client.poll = poll  # type: ignore[method-assign]
        while not (first := consumer.poll_once()):
            pass
        clock.start()
        while consumer.counters.consumed < n:
            consumer.poll_once()
        timed = clock.stop(consumer.counters.consumed - first)
    assert consumer.counters.reconciles
    return timed, consumer.counters.as_dict()


# A group member, run in its own interpreter. It answers the benchmark on stdout, one JSON
# object a line, and takes commands on stdin: "hold" (stop polling, say the assignment),
# then "go N" (consume the N messages its partitions hold) or "join" (poll on); once done,
# "close".
_MEMBER = r"""
import json, queue, sys, threading, time
import msgspec
from ingest.consumer import EventConsumer
from ingest.settings import Settings
from ingest.sink import NullSink

settings = msgspec.json.decode(sys.argv[1], type=Settings)
bootstrap, group, stall_s = sys.argv[2], sys.argv[3], float(sys.argv[4])
commands = queue.Queue()
threading.Thread(target=lambda: [commands.put(line.strip()) for line in sys.stdin],
                 daemon=True).start()

def say(**fields):
    print(json.dumps(fields), flush=True)

sink = NullSink()
consumer = EventConsumer(settings, sink, bootstrap, group_id=group)
client = consumer._client
fetch, first, share = client.poll, [], []

def poll(max_records, timeout_s):
    if share:
        # librdkafka waits out the timeout for a batch it cannot fill: ask for no more
        # than remain, so that the last batch does not add that wait to the span.
        max_records = max(1, min(max_records, share[0] - consumer.counters.consumed))
    before = (time.monotonic(), time.process_time())
    batch = fetch(max_records, timeout_s)
    if not first and len(batch.values):
        first.append(before)
    return batch

client.poll = poll

def partitions():
    return [partition for _, partition in client.assignment()]

seen = None
while True:
    command = None if commands.empty() else commands.get()
    if command == "hold":
        say(holding=partitions())
        command = commands.get()
        if command.startswith("go "):
            share.append(int(command.split()[1]))
            break
        seen = None
    if consumer.poll_once():
        sys.exit("the topic had messages before the group settled")
    if (now := partitions()) != seen:
        seen = now
        say(assignment=now)

heard = time.monotonic()
while consumer.counters.consumed < share[0] and time.monotonic() - heard < stall_s:
    if consumer.poll_once():
        heard = time.monotonic()
last = (time.monotonic(), time.process_time())
say(consumed=consumer.counters.consumed, counters=consumer.counters.as_dict(),
    sink_rows=sink.count, partitions=partitions(), first=first[0] if first else None,
    last=last)
commands.get()
consumer.close()
"""


class _Member:
    """One group member's process and the replies it has sent."""

    def __init__(self, settings: Settings, bootstrap: str, group: str, log: Path) -> None:
        self.log = log
        self._stderr: IO[str] = open(log, "w")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _MEMBER, msgspec.json.encode(settings).decode(), bootstrap,
             group, str(MEMBER_STALL_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            cwd=_HERE.parent)
        self._replies: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):  # a library may print to stdout too
                self._replies.put(json.loads(line))
        self._replies.put(None)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def reply(self, timeout_s: float | None) -> dict | None:
        """The next reply, or None if none came within ``timeout_s`` (0: none waiting)."""
        try:
            got = self._replies.get(timeout=timeout_s) if timeout_s else \
                self._replies.get_nowait()
        except queue.Empty:
            return None
        if got is None:
            self._replies.put(None)  # stays at the end for the next reader
            raise RuntimeError(f"a group member exited ({self.process.wait()}):\n"
                               + self.log.read_text()[-3000:])
        return got

    def until(self, key: str, timeout_s: float) -> dict:
        """The first reply that has ``key`` (the replies before it are skipped)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            got = self.reply(left)
            if got is not None and key in got:
                return got
        raise TimeoutError(f"no {key!r} from a group member within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


def partition_sizes(events: Sequence[Event], partitions: int) -> Counter[int]:
    """Messages each partition gets from :class:`EventProducer`: keyed by user, placed by
    murmur2 of the key, the Java client's partitioner, which both backends use. (The embedded
    broker's end offsets are not message counts, so the topic cannot be asked.) A member
    that consumes another number than this fails the run."""
    from kafka.partitioner.default import murmur2

    return Counter((murmur2(e.user_id.encode()) & 0x7FFFFFFF) % partitions for e in events)


def _settled(assignments: Sequence[list[int] | None], partitions: int) -> bool:
    """Every partition held by exactly one member, and every member holding some."""
    if any(not a for a in assignments):
        return False
    held = [p for a in assignments for p in a]  # type: ignore[union-attr]
    return len(held) == len(set(held)) and set(held) == set(range(partitions))


def _hold_settled_group(members: Sequence[_Member], partitions: int) -> list[list[int]]:
    """Let the members poll the empty topic until the group has settled, then hold them
    (not polling, still in the group); returns each member's partitions."""
    latest: list[list[int] | None] = [None] * len(members)
    deadline = time.monotonic() + GROUP_JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        for i, member in enumerate(members):
            while (got := member.reply(0)) is not None:
                latest[i] = got.get("assignment", latest[i])
        if _settled(latest, partitions):
            for member in members:
                member.send("hold")
            held = [member.until("holding", 30.0)["holding"] for member in members]
            if _settled(held, partitions):
                return held
            # A rebalance began between the replies and the hold: poll on until it is over.
            for member in members:
                member.send("join")
            latest = [None] * len(members)
        time.sleep(0.05)
    raise TimeoutError(f"{len(members)} consumers did not settle on {partitions} partitions "
                       f"within {GROUP_JOIN_TIMEOUT_S:.0f} s: {latest}")


def group_consume(settings: Settings, producing: Settings, bootstrap: str,
                  events: Sequence[Event], consumers: int, workdir: Path) -> dict:
    """``consumers`` processes in one group read a fresh topic of ``events``; see the
    module doc."""
    topic = f"group-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-members"
    kafka = msgspec.structs.replace(settings.kafka, topic=topic, dlq_topic=f"{topic}.dlq")
    ensure_topics(bootstrap, {topic: kafka.partitions, kafka.dlq_topic: 1})
    members: list[_Member] = []
    try:
        for i in range(consumers):
            # A journal folder of its own each: two processes must not share one.
            ingest = msgspec.structs.replace(settings.ingest,
                                             journal_dir=str(workdir / f"journal-{group}-{i}"))
            own = msgspec.structs.replace(settings, kafka=kafka, ingest=ingest)
            members.append(_Member(own, bootstrap, group, workdir / f"{group}-{i}.log"))
        held = _hold_settled_group(members, kafka.partitions)
        produce(msgspec.structs.replace(producing, kafka=msgspec.structs.replace(
            producing.kafka, topic=topic, dlq_topic=kafka.dlq_topic)), bootstrap, events)
        sizes = partition_sizes(events, kafka.partitions)
        shares = [sum(sizes[p] for p in partitions) for partitions in held]
        for member, share in zip(members, shares, strict=True):
            member.send(f"go {share}")
        done = [member.until("consumed", GROUP_RUN_TIMEOUT_S) for member in members]
        # Every member stays in the group until all are done: one leaving would hand its
        # partitions to the others mid-run.
        for member in members:
            member.send("close")
        for member in members:
            if member.process.wait(timeout=60):
                raise RuntimeError("a group member failed on close:\n"
                                   + member.log.read_text()[-3000:])
    finally:
        for member in members:
            member.stop()
    consumed = [m["consumed"] for m in done]
    assert consumed == shares and sum(consumed) == len(events), \
        f"the members consumed {consumed} of {shares}, {len(events)} in all"
    assert all(m["partitions"] and m["consumed"] and m["first"] for m in done), done
    assert all(m["sink_rows"] == m["consumed"] for m in done), done
    first = min(m["first"][0] for m in done)
    last = max(m["last"][0] for m in done)
    cpu = sum(m["last"][1] - m["first"][1] for m in done)
    timed = Timed(len(events), last - first, cpu)
    rebalanced = [m["partitions"] for m in done] != held
    if rebalanced:
        console.print(f"[yellow]the group rebalanced during the run: {held} → "
                      f"{[m['partitions'] for m in done]}[/yellow]")
    return {"consumers": consumers, "messages": len(events), **timed.as_dict(),
            "rebalanced": rebalanced,
            "members": [{"consumed": m["consumed"], "partitions": m["partitions"],
                         "cpu_seconds": m["last"][1] - m["first"][1],
                         "started_s": m["first"][0] - first, "ended_s": m["last"][0] - first}
                        for m in done]}


def pipeline_cpu(events: list[Event], ingest: IngestSettings) -> dict[str, float]:
    """CPU per message of the consumer's own per-batch work (as ``EventConsumer._apply``
    does it: decode and validate, the dedupe window, frames per type, a no-op sink), with no
    broker at all: the part of the consume rows that is ours, free of broker noise. For the
    simulated mix and for clicks alone. The CPU time counts every thread of this process
    (polars builds frames on several)."""
    costs: dict[str, float] = {}
    for name, chosen in (("mix", events), ("clicks", [e for e in events
                                                      if event_type(e) == "click"])):
        raws: list[bytes | None] = [encode(e) for e in chosen]
        window, sink, clock = DedupeWindow(ingest.dedupe_window), NullSink(), _Clock()
        clock.start()
        for start in range(0, len(raws), POLL_RECORDS):
            decoded, rejected = decode_batch(raws[start:start + POLL_RECORDS],
                                             ingest.max_event_bytes)
            assert not rejected
            valid: list[Event] = decoded  # type: ignore[assignment]
            fresh = list(compress(valid, window.add_many([e.event_id for e in valid])))
            sink.write(split_events(fresh))
        timed = clock.stop(len(raws))
        assert sink.count == len(raws)
        costs[f"{name}_us_per_msg"] = timed.seconds / timed.messages * 1e6
        costs[f"{name}_cpu_us_per_msg"] = timed.cpu_per_message * 1e6
    return costs


def codec_costs(events: list[Event]) -> dict[str, float]:
    """Validating decode per message by event type (results kept alive, as in the pipeline),
    and stdlib json (untyped, unvalidated) on the same bytes as the reference."""
    costs: dict[str, float] = {}
    for kind in ("click", "impression"):
        raws = [encode(e) for e in events if event_type(e) == kind]
        started = time.perf_counter()
        kept = decode_batch(raws)
        costs[f"{kind}_msgspec_us"] = (time.perf_counter() - started) / len(raws) * 1e6
        started = time.perf_counter()
        kept = [json.loads(raw) for raw in raws]  # noqa: F841
        costs[f"{kind}_stdlib_json_us"] = (time.perf_counter() - started) / len(raws) * 1e6
        costs[f"{kind}_bytes"] = sum(map(len, raws)) / len(raws)
    return costs


def dedupe_steady_state(capacity: int, n: int) -> dict[str, float]:
    """Microseconds per id of :meth:`DedupeWindow.add_many` once the window is full (every id
    evicts one), in batches of 10,000, against a plain loop over a set that never evicts
    (the floor: a membership test and an insert per id) and against evicting the oldest id
    of an insertion-ordered dict, 100,000 evictions in."""
    ids = [f"e{i}" for i in range(capacity + n)]
    window = DedupeWindow(capacity)
    window.add_many(ids[:capacity])
    started = time.perf_counter()
    for start in range(capacity, capacity + n, 10_000):
        window.add_many(ids[start:start + 10_000])
    window_us = (time.perf_counter() - started) / n * 1e6
    # The obvious window, a dict evicting through its first key, which CPython finds by
    # scanning past every deleted slot. It is put in the state it reaches after 100,000
    # evictions (100,000 deleted slots at the front; the dict only compacts when it grows),
    # then timed on a few ids, as it is slow.
    aged = 100_000
    ordered = dict.fromkeys([f"old{i}" for i in range(aged)] + ids[:capacity])
    for i in range(aged):
        del ordered[f"old{i}"]
    few = ids[capacity:capacity + 2000]
    started = time.perf_counter()
    for event_id in few:
        if event_id not in ordered:
            ordered[event_id] = None
            del ordered[next(iter(ordered))]
    dict_us = (time.perf_counter() - started) / len(few) * 1e6
    plain: set[str] = set(ids[:capacity])
    started = time.perf_counter()
    for event_id in ids[capacity:]:
        if event_id not in plain:
            plain.add(event_id)
    plain_us = (time.perf_counter() - started) / n * 1e6
    return {"capacity": capacity, "window_us_per_id": window_us, "plain_set_us_per_id": plain_us,
            "dict_first_key_eviction_us_per_id": dict_us}


def replay_dedupe_against_anti_join(n: int, batch: int) -> dict[str, float]:
    """Microseconds per id to drop repeats from ``n`` ids (2% repeats of earlier ones)
    arriving ``batch`` at a time as a polars column, against every id stored so far: as the
    replay's parquet target does it (a :class:`DedupeWindow` that forgets nothing, fed the
    column as Python strings, its answer back as a mask), and the columnar way (first
    occurrences in the batch, an anti-join against the stored ids, then the new ones
    appended). Both must keep the same ids."""
    rng = np.random.default_rng(0)
    index = np.arange(n)
    repeats = rng.choice(np.arange(batch, n), n // 50, replace=False)
    index[repeats] = rng.integers(0, repeats)  # an id from before it
    ids = pl.Series("event_id", [f"e{i}" for i in index])
    batches = [ids.slice(start, batch) for start in range(0, n, batch)]
    started = time.perf_counter()
    window, kept_by_window = DedupeWindow(None), 0
    for part in batches:
        kept_by_window += part.filter(pl.Series(window.add_many(part.to_list()))).len()
    window_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    stored, kept_by_join = pl.DataFrame(schema={"event_id": pl.String}), 0
    for part in batches:
        fresh = (part.to_frame().unique("event_id", keep="first", maintain_order=True)
                 .join(stored, on="event_id", how="anti"))
        stored = pl.concat([stored, fresh])
        kept_by_join += fresh.height
    join_us = (time.perf_counter() - started) / n * 1e6
    assert kept_by_window == kept_by_join == ids.n_unique()
    return {"ids": n, "batch": batch, "window_us_per_id": window_us,
            "anti_join_us_per_id": join_us}


_REPLAY = """
import json, sys
from ingest.replay import ParquetTarget, open_log, replay
log, fmt, workers, store, rejects = sys.argv[1:]
summary = replay(open_log(log, fmt, workers=int(workers)), ParquetTarget(store),
                 rejects_path=rejects)
print(json.dumps({"read": summary.read, "rejected": summary.rejected, "rate": summary.rate}))
"""


def replay_in_a_fresh_process(log: Path, fmt: str, workers: int, store: Path, rejects: Path
                              ) -> dict:
    """A replay as ``clickloop replay`` runs it: in a new interpreter, not in this one,
    which holds every simulated event and a broker's worth of state (measured from the
    replay's own clock, so the interpreter's start is not in it)."""
    done = subprocess.run([sys.executable, "-c", _REPLAY, str(log), fmt, str(workers),
                           str(store), str(rejects)], capture_output=True, text=True,
                          cwd=_HERE.parent)
    if done.returncode:
        raise RuntimeError(f"replay of {log.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def replay_rates(events: list[Event], workdir: Path, asked_workers: int
                 ) -> dict[str, dict[str, Any]]:
    """Replay to parquet from two kinds of log (the JSON lines in one process and with
    ``asked_workers``, 0 as by default), each against polars alone reading that log and writing
    parquet with no validation (the I/O floor, measured in the same run)."""
    rates: dict[str, dict[str, Any]] = {}
    # 1. clickloop's own JSON-lines event log: msgspec validates every message.
    jsonl = workdir / "events.jsonl"
    jsonl.write_bytes(b"\n".join(encode(e) for e in events) + b"\n")
    # 2. a warehouse click log, one row per shown slot, as parquet: validated on columns.
    frames = split_events(events)
    slots = impression_click_join(frames["impression"].lazy(), frames["click"].lazy()).collect()
    table = workdir / "clicklog.parquet"
    slots.drop("reactions", "dwell", "clicks").write_parquet(table)
    floors: dict[Path, tuple[list[float], int]] = {}  # one floor per log file, not per row
    for name, log, fmt, workers, read, floor_runs in (
        ("events_jsonl", jsonl, "events", 1,
         lambda: pl.read_ndjson(jsonl, infer_schema_length=None), 1),
        # As a replay runs by default or as asked; a worker's start-up, an interpreter
        # importing polars, is inside the time.
        ("events_jsonl_auto" if asked_workers == 0 else f"events_jsonl_{asked_workers}_workers",
         jsonl, "events", asked_workers,
         lambda: pl.read_ndjson(jsonl, infer_schema_length=None), 1),
        ("clicklog_parquet", table, "generic", 0, lambda: pl.read_parquet(table), 3),
    ):
        replay_rates_seen = []
        for run in range(3):  # the median of three runs: these machines are noisy
            store = workdir / f"replayed-{name}-{run}"
            summary = replay_in_a_fresh_process(log, fmt, workers, store, workdir / "r")
            assert summary["rejected"] == 0
            replay_rates_seen.append(summary["rate"])
            shutil.rmtree(store)
        if log not in floors:
            floor_rates = []
            for _ in range(floor_runs):  # polars on JSON lines is slow: fewer runs of it
                started = time.perf_counter()
                rows = read()
                rows.write_parquet(workdir / f"floor-{name}.parquet")
                floor_rates.append(rows.height / (time.perf_counter() - started))
            floors[log] = floor_rates, rows.height
        floor_rates_seen, source_rows = floors[log]
        rate = statistics.median(replay_rates_seen)
        target = REPLAY_TARGETS.get(name)
        rates[name] = {"events": summary["read"], "source_rows": source_rows,
                       "processes": auto_workers(log, workers) if fmt == "events" else 1,
                       "replay_events_per_s": rate,
                       "replay_events_per_s_runs": replay_rates_seen,
                       "polars_only_rows_per_s": statistics.median(floor_rates_seen),
                       "polars_only_runs": floor_runs, "target_events_per_s": target,
                       "met": None if target is None else rate >= target}
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--messages", type=int, help="messages per consume run")
    parser.add_argument("--replay-events", type=int, help="events in the replay log")
    parser.add_argument("--replay-workers", type=int, default=0, metavar="N",
                        help="processes for the second JSON-lines replay, the replaying one "
                        "included (default 0: as a replay picks them)")
    default_out = Path(tempfile.gettempdir()) / "clickloop-bench-ingest.json"
    parser.add_argument("--out", type=Path, default=default_out,
                        help="where the JSON results go (default: %(default)s; "
                        "benchmarks/results/ingest.json to record a run)")
    args = parser.parse_args()
    # kafka-python reads far slower than confluent-kafka: fewer messages keep its rows short.
    n = args.messages or (200_000 if args.quick else 2_000_000)
    n_slow = args.messages or (40_000 if args.quick else 300_000)
    # Quick: still a log large enough for a replay to start workers by default.
    n_replay = args.replay_events or (600_000 if args.quick else 2_000_000)
    backends = ["kafka-python"]
    if importlib.util.find_spec("confluent_kafka"):
        backends.append("confluent-kafka")

    workdir = Path(tempfile.mkdtemp(prefix="clickloop-bench-"))
    base = load_settings(env={})
    results: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "messages": n, "partitions": GROUP_PARTITIONS, "backends": {}, "groups": {}}
    try:
        step("simulating events")
        events = simulated(max(n, n_replay))
        step("timing the pipeline's work, the codec and dedupe without a broker")
        results["codec"] = codec_costs(events[:100_000])
        results["pipeline_cpu"] = pipeline_cpu(events[:100_000], base.ingest)
        results["dedupe"] = dedupe_steady_state(base.ingest.dedupe_window, 200_000)
        results["replay_dedupe"] = replay_dedupe_against_anti_join(1_000_000, 25_000)
        with EmbeddedBroker() as broker:
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            # The fastest producer fills every topic: producing is not what is measured.
            producing = settings_for(base, backends[-1], topic, workdir / "journal")
            step(f"producing {n:,} messages")
            produce(producing, broker.bootstrap, events[:n])
            for backend in backends:
                settings = settings_for(base, backend, topic, workdir / "journal")
                count = n if backend == "confluent-kafka" else n_slow
                step(f"{backend}: raw client, {count:,} messages")
                raw = raw_consume(settings, broker.bootstrap, count)
                step(f"{backend}: pipeline")
                pipe, counters = pipeline_consume(settings, broker.bootstrap, count)
                row: dict[str, Any] = {"messages": count, "raw": raw.as_dict(),
                                       "pipeline": pipe.as_dict(), "counters": counters,
                                       "ratio": pipe.rate / raw.rate}
                if backend == "confluent-kafka":
                    # The reference for our fetch setting: librdkafka's own default.
                    step(f"{backend}: raw client, librdkafka's default fetch backoff")
                    default = msgspec.structs.replace(settings, kafka=msgspec.structs.replace(
                        settings.kafka, fetch_queue_backoff_ms=LIBRDKAFKA_FETCH_BACKOFF_MS))
                    row["raw_default_backoff"] = raw_consume(default, broker.bootstrap,
                                                             count).as_dict()
                results["backends"][backend] = row
                groups: dict[str, dict] = {}
                for consumers in (1, 2):
                    step(f"{backend}: {consumers} consumer process{'es' * (consumers > 1)}"
                         f" in one group, {count:,} messages")
                    groups[str(consumers)] = group_consume(settings, producing,
                                                           broker.bootstrap, events[:count],
                                                           consumers, workdir)
                groups["2"]["vs_one"] = groups["2"]["msgs_per_s"] / groups["1"]["msgs_per_s"]
                results["groups"][backend] = groups
        step(f"replaying {n_replay:,} events to parquet")
        results["replay_to_parquet"] = replay_rates(events[:n_replay], workdir,
                                                    args.replay_workers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, base)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


def report(results: dict[str, Any], base: Settings) -> None:
    table = Table(title="consume, one consumer: pipeline against the raw client")
    for name in ("backend", "messages", "raw msg/s", "raw CPU µs/msg", "pipeline msg/s",
                 "pipeline CPU µs/msg", "pipeline / raw"):
        table.add_column(name, justify="right")
    for backend, r in results["backends"].items():
        table.add_row(backend, f"{r['messages']:,}", f"{r['raw']['msgs_per_s']:,.0f}",
                      f"{r['raw']['cpu_s_per_msg'] * 1e6:.2f}",
                      f"{r['pipeline']['msgs_per_s']:,.0f}",
                      f"{r['pipeline']['cpu_s_per_msg'] * 1e6:.2f}", f"{r['ratio']:.2f}")
    console.print(table)
    confluent = results["backends"].get("confluent-kafka")
    if confluent:
        console.print(
            f"confluent-kafka raw client with librdkafka's default fetch backoff "
            f"({LIBRDKAFKA_FETCH_BACKOFF_MS} ms): "
            f"{confluent['raw_default_backoff']['msgs_per_s']:,.0f} msg/s; with ours "
            f"({base.kafka.fetch_queue_backoff_ms} ms): {confluent['raw']['msgs_per_s']:,.0f}")
    table = Table(title=f"consume, one group over {results['partitions']} partitions "
                  "(a process per consumer, no-op sinks)")
    for name in ("backend", "consumers", "messages", "each consumer (partitions)", "msg/s",
                 "CPU µs/msg", "vs one"):
        table.add_column(name, justify="right")
    for backend, groups in results["groups"].items():
        for consumers, g in groups.items():
            each = ", ".join(f"{m['consumed']:,} ({','.join(map(str, m['partitions']))})"
                             for m in g["members"])
            table.add_row(backend, consumers, f"{g['messages']:,}", each,
                          f"{g['msgs_per_s']:,.0f}", f"{g['cpu_s_per_msg'] * 1e6:.2f}",
                          f"{g['vs_one']:.2f}" if "vs_one" in g else "—")
    console.print(table)
    cpu = results["pipeline_cpu"]
    console.print(
        f"pipeline's per-batch work without a broker, CPU per message: "
        f"{cpu['mix_cpu_us_per_msg']:.2f} µs (mix), {cpu['clicks_cpu_us_per_msg']:.2f} µs "
        f"(clicks only); wall {cpu['mix_us_per_msg']:.2f} / {cpu['clicks_us_per_msg']:.2f} µs")
    dedupe = results["dedupe"]
    console.print(
        f"dedupe with a full window of {dedupe['capacity']:,}: "
        f"{dedupe['window_us_per_id']:.2f} µs/id (plain set, no eviction: "
        f"{dedupe['plain_set_us_per_id']:.2f} µs/id; dict evicting its first key, "
        "100k evictions in: "
        f"{dedupe['dict_first_key_eviction_us_per_id']:.1f} µs/id)")
    replayed = results["replay_dedupe"]
    console.print(
        f"replay dedupe of {replayed['ids']:,} ids against all stored, "
        f"{replayed['batch']:,} a batch: unbounded window {replayed['window_us_per_id']:.2f} "
        f"µs/id; anti-join against the stored ids: {replayed['anti_join_us_per_id']:.2f} µs/id")
    table = Table(title="replay to parquet (median of three, each in a fresh interpreter)")
    for name in ("log", "events", "processes", "replay events/s", "polars-only floor rows/s",
                 "target events/s", "met"):
        table.add_column(name, justify="right")
    for name, rp in results["replay_to_parquet"].items():
        target = rp["target_events_per_s"]
        table.add_row(name, f"{rp['events']:,}", str(rp["processes"]),
                      f"{rp['replay_events_per_s']:,.0f}",
                      f"{rp['polars_only_rows_per_s']:,.0f}",
                      "—" if target is None else f"≥ {target:,}",
                      "—" if rp["met"] is None else ("yes" if rp["met"] else "no"))
    console.print(table)
    codec = results["codec"]
    console.print(
        "validating decode per message: "
        f"click ({codec['click_bytes']:.0f} B) {codec['click_msgspec_us']:.2f} µs, "
        f"impression ({codec['impression_bytes']:.0f} B) {codec['impression_msgspec_us']:.2f} µs;"
        f" stdlib json, untyped: {codec['click_stdlib_json_us']:.2f} / "
        f"{codec['impression_stdlib_json_us']:.2f} µs")


if __name__ == "__main__":
    main()
