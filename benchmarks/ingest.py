"""Ingest throughput: the pipeline against the raw Kafka client, and replay to parquet.

For each backend (kafka-python, confluent-kafka) the same topic of simulated events is read
twice in one process, by two fresh consumer groups:

- raw: the client library's own poll loop, touching each message's value;
- pipeline: :class:`ingest.consumer.EventConsumer` with a no-op sink (poll, decode, validate,
  dead-letter check, dedupe, apply, flush and commit), once with everything on the polling
  thread and once with ``ingest.decode_process`` (decode to sink in a second process).

Both clocks start at the first message (so the group join, which the embedded broker delays
by about half the session timeout, is not counted) and stop at the last. The ratio
pipeline / raw is the figure of merit (target >= 0.8); absolute rates depend on the machine.
For confluent-kafka the raw loop is also timed with librdkafka's default fetch backoff
(1000 ms) instead of ours (``kafka.fetch_queue_backoff_ms``), to show what the setting does.

Replay to parquet: a JSON-lines event log through validation, dedupe and the parquet log
store (in one process, and as by default: one validating process per core for a log of 64 MB
or more, the replaying one and workers), and a columnar click log (parquet, one row per shown
slot); each replay runs three times, each time in a fresh interpreter as the command line
runs it, against polars alone reading the same file and writing parquet (no validation), a
reference floor measured in the same run (target >= 500k events/s).

Usage: python benchmarks/ingest.py [--quick] [--out benchmarks/results/ingest.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `ingest` package: take the folder out.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from ingest.broker import EmbeddedBroker  # noqa: E402
from ingest.codec import decode_batch, encode  # noqa: E402
from ingest.consumer import EventConsumer  # noqa: E402
from ingest.dedupe import DedupeWindow, IdIndex  # noqa: E402
from ingest.events import Event, event_type  # noqa: E402
from ingest.frames import split_events  # noqa: E402
from ingest.joins import impression_click_join  # noqa: E402
from ingest.jsonl_log import auto_workers  # noqa: E402
from ingest.producer import EventProducer  # noqa: E402
from ingest.settings import Settings, load_settings  # noqa: E402
from ingest.sink import NullSink  # noqa: E402
from ingest.stages import InlineStage  # noqa: E402
from ingest.transport import _ConfluentConsumer, _KafkaPythonConsumer  # noqa: E402
from simulation.clicks import PositionBasedModel, examination  # noqa: E402
from simulation.policies import EpsilonGreedyPolicy, popularity_policy  # noqa: E402
from simulation.simulator import simulate  # noqa: E402
from simulation.world import World  # noqa: E402

console = Console()


def simulated(n: int, seed: int = 0) -> list[Event]:
    """n events of a simulated log, in time order: impressions of 5 slots, clicks, dwell,
    reactions (about 6.5 events per impression)."""
    world = World(n_items=10_000, seed=seed)
    impressions = n // 4 + 100
    while True:
        log = simulate(world, EpsilonGreedyPolicy(popularity_policy(world), 0.3),
                       PositionBasedModel(examination(5)), n=impressions, k=5, seed=seed)
        events = log.events()
        if len(events) >= n:
            return events[:n]
        impressions *= 2


#: librdkafka's default fetch.queue.backoff.ms (ours is a setting, 10 by default).
LIBRDKAFKA_FETCH_BACKOFF_MS = 1000


def settings_for(base: Settings, backend: str, topic: str, workdir: Path) -> Settings:
    kafka = msgspec.structs.replace(base.kafka, backend=backend, topic=topic,
                                    dlq_topic=f"{topic}.dlq")
    ingest = msgspec.structs.replace(base.ingest, journal_dir=str(workdir / "journal"),
                                     poll_max_records=10_000, flush_max_events=200_000)
    return msgspec.structs.replace(base, kafka=kafka, ingest=ingest)


def raw_consume(settings: Settings, bootstrap: str, n: int) -> float:
    """Messages per second of the client library's own loop (configured as ours is), from
    the first poll that returned messages to the n-th message."""
    group = f"raw-{uuid.uuid4().hex[:8]}"
    count, first, started = 0, 0, 0.0
    if settings.kafka.backend == "confluent-kafka":
        consumer = _ConfluentConsumer(settings.kafka, bootstrap, group)._consumer
        consumer.subscribe([settings.kafka.topic])

        def poll() -> int:
            got = 0
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is None:
                    got += message.value() is not None
            return got
    else:
        consumer = _KafkaPythonConsumer(settings.kafka, bootstrap, group)._consumer
        consumer.subscribe([settings.kafka.topic])

        def poll() -> int:
            got = 0
            for messages in consumer.poll(timeout_ms=500, max_records=10_000).values():
                for message in messages:
                    got += message.value is not None
            return got
    while not (first := poll()):
        pass
    count, started = first, time.perf_counter()
    while count < n:
        count += poll()
    elapsed = time.perf_counter() - started
    consumer.close()
    return (count - first) / elapsed


def pipeline_consume(settings: Settings, bootstrap: str, n: int, decode_process: bool
                     ) -> tuple[float, dict]:
    """Messages per second of the pipeline from its first poll that returned messages to
    its n-th message finished (counted), periodic flushes and commits included; the one
    final flush of a run is not (the raw loop has no counterpart of it)."""
    group = f"pipe-{uuid.uuid4().hex[:8]}"
    settings = msgspec.structs.replace(settings, ingest=msgspec.structs.replace(
        settings.ingest, decode_process=decode_process))
    with EventConsumer(settings, NullSink, bootstrap, group_id=group) as consumer:
        while not (first := consumer.poll_once()):
            pass
        started = time.perf_counter()
        while consumer.counters.consumed < n:
            consumer.poll_once()
        elapsed = time.perf_counter() - started
        rate = (consumer.counters.consumed - first) / elapsed
    return rate, consumer.counters.as_dict()


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


def pipeline_cpu(events: list[Event], base: Settings) -> dict[str, float]:
    """Microseconds of CPU per message for the pipeline's own work (the consumer's
    :class:`~ingest.stages.InlineStage`: decode, validate, dedupe, a no-op sink) with no
    broker at all: the part of the ratio that is ours, free of broker noise. For the
    simulated mix and for clicks alone."""
    costs: dict[str, float] = {}
    for name, chosen in (("mix", events), ("clicks", [e for e in events
                                                      if event_type(e) == "click"])):
        raws: list[bytes | None] = [encode(e) for e in chosen]
        stage = InlineStage(NullSink(), base.ingest)
        started = time.perf_counter()
        for start in range(0, len(raws), 10_000):
            stage.submit(raws[start:start + 10_000])
            stage.completed(wait=True)
        costs[f"{name}_us_per_msg"] = (time.perf_counter() - started) / len(raws) * 1e6
    return costs


def dedupe_steady_state(capacity: int, n: int) -> dict[str, float]:
    """Microseconds per id of :meth:`DedupeWindow.add_many` once the window is full (every id
    evicts one), in batches of 10,000, against a plain loop over a set that never evicts
    (the floor: a membership test and an insert per id) and against evicting the oldest id
    of an insertion-ordered dict (what the window did before), 100,000 evictions in."""
    ids = [f"e{i}" for i in range(capacity + n)]
    window = DedupeWindow(capacity)
    window.add_many(ids[:capacity])
    started = time.perf_counter()
    for start in range(capacity, capacity + n, 10_000):
        window.add_many(ids[start:start + 10_000])
    window_us = (time.perf_counter() - started) / n * 1e6
    # The reference that motivated the window: a dict evicting through its first key, which
    # CPython finds by scanning past every deleted slot. It is put in the state it reaches
    # after 100,000 evictions (100,000 deleted slots at the front; the dict only compacts
    # when it grows), then timed on a few ids, as it is slow.
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


def id_index_against_anti_join(n: int, batch: int) -> dict[str, float]:
    """Microseconds per id to drop repeats from ``n`` ids (2% repeats of earlier ones)
    arriving ``batch`` at a time against every id stored so far: :class:`IdIndex`, and what
    the replay's parquet target did before it (first occurrences in the batch, an anti-join
    against the stored ids, then the new ones appended). Both must keep the same ids."""
    rng = np.random.default_rng(0)
    index = np.arange(n)
    repeats = rng.choice(np.arange(batch, n), n // 50, replace=False)
    index[repeats] = rng.integers(0, repeats)  # an id from before it
    ids = pl.Series("event_id", [f"e{i}" for i in index])
    batches = [ids.slice(start, batch) for start in range(0, n, batch)]
    started = time.perf_counter()
    id_index, kept_by_index = IdIndex(), 0
    for part in batches:
        kept_by_index += int(id_index.add_new(part).sum())
    index_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    stored, kept_by_join = pl.DataFrame(schema={"event_id": pl.String}), 0
    for part in batches:
        fresh = (part.to_frame().unique("event_id", keep="first", maintain_order=True)
                 .join(stored, on="event_id", how="anti"))
        stored = pl.concat([stored, fresh])
        kept_by_join += fresh.height
    join_us = (time.perf_counter() - started) / n * 1e6
    assert kept_by_index == kept_by_join == ids.n_unique()
    return {"ids": n, "batch": batch, "id_index_us_per_id": index_us,
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
                          check=True, cwd=_HERE.parent)
    return json.loads(done.stdout.splitlines()[-1])


def replay_rates(events: list[Event], workdir: Path, asked_workers: int
                 ) -> dict[str, dict[str, float]]:
    """Replay to parquet from two kinds of log (the JSON lines in one process and with
    ``asked_workers``, 0 as by default), each against polars alone reading that log and writing
    parquet with no validation (the I/O floor, measured in the same run)."""
    rates: dict[str, dict[str, float]] = {}
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
        # As a replay runs by default (workers for a log this large) or as asked; a
        # worker's start-up, an interpreter importing polars, is inside the time.
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
        rates[name] = {"events": summary["read"], "source_rows": source_rows,
                       "processes": auto_workers(log, workers) if fmt == "events" else 1,
                       "replay_events_per_s": statistics.median(replay_rates_seen),
                       "replay_events_per_s_runs": replay_rates_seen,
                       "polars_only_rows_per_s": statistics.median(floor_rates_seen),
                       "polars_only_runs": floor_runs}
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--messages", type=int, help="messages per consume run")
    parser.add_argument("--replay-events", type=int, help="events in the replay log")
    parser.add_argument("--replay-workers", type=int, default=0, metavar="N",
                        help="processes for the second JSON-lines replay, the replaying one "
                        "included (default 0: as a replay picks them, one per core for a log "
                        "of 64 MB or more)")
    parser.add_argument("--out", default="benchmarks/results/ingest.json")
    args = parser.parse_args()
    # kafka-python reads ~30k msg/s here, confluent-kafka ~20x more (the raw rows below):
    # give each enough to time.
    n = args.messages or (200_000 if args.quick else 2_000_000)
    n_slow = args.messages or (40_000 if args.quick else 300_000)
    # Quick: still a log large enough (120 MB of JSON lines) for the replay's workers.
    n_replay = args.replay_events or (600_000 if args.quick else 2_000_000)
    backends = ["kafka-python"]
    if importlib.util.find_spec("confluent_kafka"):
        backends.append("confluent-kafka")

    workdir = Path(tempfile.mkdtemp(prefix="clickloop-bench-"))
    base = load_settings(env={})
    results: dict = {"machine": platform.processor() or platform.machine(),
                     "python": platform.python_version(), "messages": n, "backends": {}}
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("simulating events", total=None)
            events = simulated(max(n, n_replay))
            results["codec"] = codec_costs(events[:100_000])
            results["pipeline_cpu"] = pipeline_cpu(events[:100_000], base)
            results["dedupe"] = dedupe_steady_state(base.ingest.dedupe_window, 200_000)
            results["id_index"] = id_index_against_anti_join(1_000_000, 25_000)
            with EmbeddedBroker() as broker:
                topic = f"bench-{uuid.uuid4().hex[:8]}"
                producing = settings_for(base, backends[-1], topic, workdir)
                progress.update(task, description=f"producing {n:,} messages")
                with EventProducer(producing, broker.bootstrap) as producer:
                    producer.send(events[:n])
                for backend in backends:
                    settings = settings_for(base, backend, topic, workdir)
                    count = n if backend == "confluent-kafka" else n_slow
                    progress.update(task, description=f"{backend}: raw client")
                    raw = raw_consume(settings, broker.bootstrap, count)
                    progress.update(task, description=f"{backend}: pipeline")
                    pipe, counters = pipeline_consume(settings, broker.bootstrap, count, False)
                    progress.update(task, description=f"{backend}: pipeline, decode process")
                    apart, apart_counters = pipeline_consume(settings, broker.bootstrap, count,
                                                             True)
                    results["backends"][backend] = {
                        "messages": count, "raw_msgs_per_s": raw, "pipeline_msgs_per_s": pipe,
                        "ratio": pipe / raw, "counters": counters,
                        "decode_process_msgs_per_s": apart,
                        "decode_process_ratio": apart / raw,
                        "decode_process_counters": apart_counters}
                    if backend == "confluent-kafka":
                        # The reference for our fetch setting: librdkafka's own default.
                        progress.update(task, description=f"{backend}: raw, default backoff")
                        default = msgspec.structs.replace(settings, kafka=msgspec.structs.replace(
                            settings.kafka, fetch_queue_backoff_ms=LIBRDKAFKA_FETCH_BACKOFF_MS))
                        results["backends"][backend]["raw_default_backoff_msgs_per_s"] = \
                            raw_consume(default, broker.bootstrap, count)
            progress.update(task, description=f"replaying {n_replay:,} events to parquet")
            results["replay_to_parquet"] = replay_rates(events[:n_replay], workdir,
                                                        args.replay_workers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(title="consume throughput (simulated impressions and clicks)")
    for name in ("backend", "messages", "raw client msg/s", "pipeline msg/s",
                 "pipeline / raw", "with decode process msg/s", "/ raw", "target"):
        table.add_column(name, justify="right")
    for backend, r in results["backends"].items():
        table.add_row(backend, f"{r['messages']:,}", f"{r['raw_msgs_per_s']:,.0f}",
                      f"{r['pipeline_msgs_per_s']:,.0f}", f"{r['ratio']:.2f}",
                      f"{r['decode_process_msgs_per_s']:,.0f}",
                      f"{r['decode_process_ratio']:.2f}", "≥ 0.80")
    console.print(table)
    confluent = results["backends"].get("confluent-kafka")
    if confluent:
        console.print(
            f"confluent-kafka raw client with librdkafka's default fetch backoff "
            f"({LIBRDKAFKA_FETCH_BACKOFF_MS} ms): "
            f"{confluent['raw_default_backoff_msgs_per_s']:,.0f} msg/s; with ours "
            f"({base.kafka.fetch_queue_backoff_ms} ms): {confluent['raw_msgs_per_s']:,.0f}")
    cpu = results["pipeline_cpu"]
    console.print(
        f"pipeline CPU per message without a broker: {cpu['mix_us_per_msg']:.2f} µs (mix), "
        f"{cpu['clicks_us_per_msg']:.2f} µs (clicks only); the raw clients spend "
        + ", ".join(f"{1e6 / r['raw_msgs_per_s']:.2f} µs ({b})"
                    for b, r in results["backends"].items()))
    dedupe = results["dedupe"]
    console.print(
        f"dedupe with a full window of {dedupe['capacity']:,}: "
        f"{dedupe['window_us_per_id']:.2f} µs/id (plain set, no eviction: "
        f"{dedupe['plain_set_us_per_id']:.2f} µs/id; dict evicting its first key, "
        "100k evictions in: "
        f"{dedupe['dict_first_key_eviction_us_per_id']:.1f} µs/id)")
    index = results["id_index"]
    console.print(
        f"dedupe of {index['ids']:,} ids against all stored, {index['batch']:,} a batch: "
        f"IdIndex {index['id_index_us_per_id']:.2f} µs/id; anti-join against the stored ids "
        f"(the replay target before it): {index['anti_join_us_per_id']:.2f} µs/id")
    replay_table = Table(title="replay to parquet")
    for name in ("log", "events", "processes", "replay events/s", "polars-only floor rows/s",
                 "target"):
        replay_table.add_column(name, justify="right")
    for name, rp in results["replay_to_parquet"].items():
        replay_table.add_row(name, f"{rp['events']:,}", str(rp["processes"]),
                             f"{rp['replay_events_per_s']:,.0f}",
                             f"{rp['polars_only_rows_per_s']:,.0f}", "≥ 500,000 events/s")
    console.print(replay_table)
    codec = results["codec"]
    console.print(
        "validating decode per message: "
        f"click ({codec['click_bytes']:.0f} B) {codec['click_msgspec_us']:.2f} µs, "
        f"impression ({codec['impression_bytes']:.0f} B) {codec['impression_msgspec_us']:.2f} µs;"
        f" stdlib json, untyped: {codec['click_stdlib_json_us']:.2f} / "
        f"{codec['impression_stdlib_json_us']:.2f} µs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
