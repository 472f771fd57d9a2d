"""``clickloop run``: the whole ingest path on the embedded defaults, end to end.

Simulated impressions and clicks (position-based model, known propensities) go through a
real Kafka broker with a few malformed and duplicated messages mixed in; the consumer
validates, dead-letters, deduplicates and writes the parquet log; the impression-click join
then gives CTR by position, naive and propensity-weighted, next to the true examination
curve. Prints tables and saves a plot.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import ExitStack
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import msgspec  # noqa: E402
import polars as pl  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ingest.broker import EmbeddedBroker  # noqa: E402
from ingest.codec import encode  # noqa: E402
from ingest.consumer import EventConsumer  # noqa: E402
from ingest.dlq import read_dead_letters  # noqa: E402
from ingest.joins import join_log  # noqa: E402
from ingest.logstore import ParquetLogStore  # noqa: E402
from ingest.producer import EventProducer  # noqa: E402
from ingest.settings import Settings  # noqa: E402
from simulation.clicklog import PositionBasedLog  # noqa: E402

#: Bad messages planted in the stream, one of each kind per this many good events.
BAD_EVERY = 1000
BAD_KINDS: list[bytes] = [
    b"{not json",
    b'{"type": "click", "event_id": "bad", "ts": 1, "user_id": "u", "request_id": "r",'
    b' "item_id": "i", "position": -3}',
    b'{"type": "impression", "event_id": "bad", "ts": 1, "user_id": "u", "request_id": "r",'
    b' "policy": "p", "slots": [{"item_id": "i", "position": 1, "score": 0, "propensity": 1.7}]}',
    b'{"type": "purchase", "event_id": "bad", "ts": 1, "user_id": "u"}',
]


def _settings_for(settings: Settings, workdir: Path) -> Settings:
    ingest = msgspec.structs.replace(settings.ingest, journal_dir=str(workdir / "journal"))
    return msgspec.structs.replace(settings, ingest=ingest)


def run_quickstart(settings: Settings, *, impressions: int, workdir: str | Path,
                   bootstrap: str | None, console: Console) -> int:
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = _settings_for(settings, workdir)
    world = PositionBasedLog(k=5, eta=1.0, seed=7)
    with ExitStack() as stack:
        bootstrap = bootstrap or settings.kafka.bootstrap
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap
            console.print(f"embedded Tansu broker on [bold]{bootstrap}[/]")
        # A run-specific topic keeps a shared broker's own events out of this demo.
        run_id = uuid.uuid4().hex[:8]
        kafka = msgspec.structs.replace(settings.kafka, topic=f"quickstart-{run_id}",
                                        dlq_topic=f"quickstart-{run_id}.dlq",
                                        group_id=f"quickstart-{run_id}")
        settings = msgspec.structs.replace(settings, kafka=kafka)

        produced = planted = resent = 0
        with console.status("simulating and producing events…"), \
                EventProducer(settings, bootstrap) as producer:
            for batch in world.batches(impressions):
                producer.send(batch)
                produced += len(batch)
                bad = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(len(batch) // BAD_EVERY)]
                producer.send_raw((b"bad", raw, None) for raw in bad)
                planted += len(bad)
                # A retrying client sends some events twice; the consumer must drop them.
                again = batch[:: BAD_EVERY]
                producer.send_raw((e.user_id.encode(), encode(e), None) for e in again)
                resent += len(again)
        total = produced + planted + resent
        console.print(f"produced {produced:,} events, {planted:,} malformed, "
                      f"{resent:,} duplicates → topic {kafka.topic}")

        store = ParquetLogStore(workdir / "log")
        with console.status("consuming into the parquet log…"), \
                EventConsumer(settings, store, bootstrap) as consumer:
            counters = consumer.run(max_events=total, idle_timeout_s=30.0)
        table = Table(title="ingest counters (consumed = applied + rejected + duplicates)")
        for name in ("consumed", "applied", "rejected", "duplicates", "reconciles"):
            table.add_column(name, justify="right")
        table.add_row(*(f"{v:,}" for v in counters.as_dict().values()),
                      "yes" if counters.reconciles else "[red]NO[/]")
        console.print(table)

        letters = read_dead_letters(kafka, bootstrap, max_records=planted)
        reasons = pl.DataFrame({"reason": [d.error for d in letters]}).group_by(
            "reason").len().sort("len", descending=True)
        dlq = Table(title=f"dead letters: {len(letters):,} of {planted:,} planted")
        dlq.add_column("count", justify="right")
        dlq.add_column("reason")
        for reason, count in reasons.iter_rows():
            dlq.add_row(f"{count:,}", reason)
        console.print(dlq)

    by_position = (
        join_log(workdir / "log")
        .group_by("position")
        .agg(shown=pl.len(), ctr=pl.col("clicked").mean(),
             ips_clicks=(pl.col("clicked") / pl.col("propensity")).sum(),
             ips_shown=(1 / pl.col("propensity")).sum())
        .with_columns(ips_ctr=pl.col("ips_clicks") / pl.col("ips_shown"))
        .sort("position")
        .collect()
    )
    theta = world.examination()
    ctr = Table(title="CTR by position from the impression-click join")
    for name in ("position", "shown", "logged CTR", "SNIPS CTR if items were uniform",
                 "true θ"):
        ctr.add_column(name, justify="right")
    for row in by_position.iter_rows(named=True):
        ctr.add_row(str(row["position"]), f"{row['shown']:,}", f"{row['ctr']:.4f}",
                    f"{row['ips_ctr']:.4f}", f"{theta[row['position'] - 1]:.3f}")
    console.print(ctr)

    figure, axis = plt.subplots(figsize=(6, 4))
    first = by_position["ctr"][0]
    axis.plot(by_position["position"], by_position["ctr"] / first, "o-",
              label="CTR / CTR@1 (logged)")
    axis.plot(range(1, len(theta) + 1), theta / theta[0], "s--", label="true θ_k / θ_1")
    axis.set_xticks(range(1, len(theta) + 1))
    axis.set_xlabel("position")
    axis.set_ylabel("relative to position 1")
    axis.set_title("Position bias in the simulated log")
    axis.legend()
    figure.tight_layout()
    plot = workdir / "ctr_by_position.png"
    figure.savefig(plot, dpi=120)
    console.print(f"log store: {workdir / 'log'}   plot: {plot}")
    ok = counters.reconciles and counters.rejected == planted and \
        counters.duplicates == resent and len(letters) == planted
    if not ok:
        console.print("[red]the run did not reconcile: see the tables above[/]")
    return 0 if ok else 1
