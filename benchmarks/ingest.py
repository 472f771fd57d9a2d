"""Ingest throughput: the pipeline against the raw Kafka client, and replay to parquet.

For each backend (kafka-python, confluent-kafka) the same topic of simulated events is read
twice in one process, by two fresh consumer groups:

- raw: the client library's own poll loop, touching each message's value;
- pipeline: :class:`ingest.consumer.EventConsumer` with a no-op sink (poll, decode, validate,
  dead-letter check, dedupe, apply, flush and commit).

Both clocks start at the first message (so the group join, which the embedded broker delays
by about half the session timeout, is not counted) and stop at the last. The ratio
pipeline / raw is the figure of merit (target >= 0.8); absolute rates depend on the machine.

Replay to parquet: a JSON-lines event log through validation, dedupe and the parquet log
store, against polars alone reading the same file and writing parquet (no validation),
as a reference floor measured in the same run (target >= 500k events/s).

Usage: python benchmarks/ingest.py [--quick] [--out benchmarks/results/ingest.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
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
import polars as pl  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from ingest.broker import EmbeddedBroker  # noqa: E402
from ingest.codec import decode_batch, encode  # noqa: E402
from ingest.consumer import EventConsumer  # noqa: E402
from ingest.events import Event, event_type  # noqa: E402
from ingest.producer import EventProducer  # noqa: E402
from ingest.replay import ParquetTarget, open_log, replay  # noqa: E402
from ingest.settings import Settings, load_settings  # noqa: E402
from ingest.sink import NullSink  # noqa: E402
from ingest.transport import _ConfluentConsumer, _KafkaPythonConsumer  # noqa: E402
from simulation.clicklog import PositionBasedLog  # noqa: E402

console = Console()


def simulated(n: int, seed: int = 0) -> list[Event]:
    return [e for batch in PositionBasedLog(seed=seed).batches(n) for e in batch][:n]


def settings_for(base: Settings, backend: str, topic: str, workdir: Path) -> Settings:
    kafka = msgspec.structs.replace(base.kafka, backend=backend, topic=topic,
                                    dlq_topic=f"{topic}.dlq")
    ingest = msgspec.structs.replace(base.ingest, journal_dir=str(workdir / "journal"),
                                     poll_max_records=10_000, flush_max_events=200_000)
    return msgspec.structs.replace(base, kafka=kafka, ingest=ingest)


def raw_consume(settings: Settings, bootstrap: str, n: int) -> float:
    """Messages per second of the client library's own loop (configured as ours is)."""
    group = f"raw-{uuid.uuid4().hex[:8]}"
    count, first = 0, None
    if settings.kafka.backend == "confluent-kafka":
        consumer = _ConfluentConsumer(settings.kafka, bootstrap, group)._consumer
        consumer.subscribe([settings.kafka.topic])
        while count < n:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is None:
                    first = first or time.perf_counter()
                    count += message.value() is not None
    else:
        consumer = _KafkaPythonConsumer(settings.kafka, bootstrap, group)._consumer
        consumer.subscribe([settings.kafka.topic])
        while count < n:
            for messages in consumer.poll(timeout_ms=500, max_records=10_000).values():
                first = first or time.perf_counter()
                for message in messages:
                    count += message.value is not None
    elapsed = time.perf_counter() - first  # type: ignore[operator]
    consumer.close()
    return count / elapsed


def pipeline_consume(settings: Settings, bootstrap: str, n: int) -> tuple[float, dict]:
    group = f"pipe-{uuid.uuid4().hex[:8]}"
    first: list[float] = []
    with EventConsumer(settings, NullSink(), bootstrap, group_id=group) as consumer:
        def mark(_: object) -> None:
            if not first:
                # The first poll's messages arrived before this call: count them out.
                first.append(time.perf_counter())
                first.append(consumer.counters.consumed)

        counters = consumer.run(max_events=n, on_progress=mark)
        elapsed = time.perf_counter() - first[0]
    return (counters.consumed - first[1]) / elapsed, counters.as_dict()


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


def replay_rates(events: list[Event], workdir: Path) -> dict[str, float]:
    log = workdir / "events.jsonl"
    log.write_bytes(b"\n".join(encode(e) for e in events) + b"\n")
    store = workdir / "replayed"
    summary = replay(open_log(log, "events"), ParquetTarget(store), rejects_path=workdir / "r")
    assert summary.rejected == 0 and summary.sent == len(events)
    started = time.perf_counter()
    # Reference floor: polars alone, no validation, untyped.
    pl.read_ndjson(log, infer_schema_length=None).write_parquet(workdir / "floor.parquet")
    floor = time.perf_counter() - started
    return {"events": len(events), "replay_events_per_s": summary.rate,
            "polars_only_events_per_s": len(events) / floor,
            "ratio": summary.rate / (len(events) / floor)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--messages", type=int, help="messages per consume run")
    parser.add_argument("--replay-events", type=int, help="events in the replay log")
    parser.add_argument("--out", default="benchmarks/results/ingest.json")
    args = parser.parse_args()
    n = args.messages or (100_000 if args.quick else 1_000_000)
    n_replay = args.replay_events or (300_000 if args.quick else 2_000_000)
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
            with EmbeddedBroker() as broker:
                topic = f"bench-{uuid.uuid4().hex[:8]}"
                producing = settings_for(base, "kafka-python", topic, workdir)
                progress.update(task, description=f"producing {n:,} messages")
                with EventProducer(producing, broker.bootstrap) as producer:
                    producer.send(events[:n])
                for backend in backends:
                    settings = settings_for(base, backend, topic, workdir)
                    progress.update(task, description=f"{backend}: raw client")
                    raw = raw_consume(settings, broker.bootstrap, n)
                    progress.update(task, description=f"{backend}: pipeline")
                    pipe, counters = pipeline_consume(settings, broker.bootstrap, n)
                    results["backends"][backend] = {
                        "raw_msgs_per_s": raw, "pipeline_msgs_per_s": pipe,
                        "ratio": pipe / raw, "counters": counters}
            progress.update(task, description=f"replaying {n_replay:,} events to parquet")
            results["replay_to_parquet"] = replay_rates(events[:n_replay], workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = Table(title=f"ingest throughput ({n:,} simulated events per consume run)")
    for name in ("backend", "raw client msg/s", "pipeline msg/s", "pipeline / raw",
                 "target"):
        table.add_column(name, justify="right")
    for backend, r in results["backends"].items():
        table.add_row(backend, f"{r['raw_msgs_per_s']:,.0f}", f"{r['pipeline_msgs_per_s']:,.0f}",
                      f"{r['ratio']:.2f}", "≥ 0.80")
    console.print(table)
    rp = results["replay_to_parquet"]
    replay_table = Table(title=f"replay to parquet ({rp['events']:,} events)")
    for name in ("replay events/s", "polars-only floor events/s", "replay / floor", "target"):
        replay_table.add_column(name, justify="right")
    replay_table.add_row(f"{rp['replay_events_per_s']:,.0f}",
                         f"{rp['polars_only_events_per_s']:,.0f}", f"{rp['ratio']:.2f}",
                         "≥ 500,000 events/s")
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
