"""``clickloop run``: the whole ingest path on the embedded defaults, end to end.

A simulated log (a seeded world, uniformly random slates so that CTR differences by position
are pure position bias, position-based clicks, reactions and dwell) goes through a real
Kafka broker with a few malformed and duplicated messages mixed in; the consumer validates,
dead-letters, deduplicates and writes the parquet log; the impression-click join then gives
CTR by position next to the true examination curve, and CTR divided by it (IPS), which is
flat when the bias is removed. Prints tables and saves a plot.
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
from ingest.consumer import EventConsumer  # noqa: E402
from ingest.dlq import read_dead_letters  # noqa: E402
from ingest.frames import frames_in_time_order  # noqa: E402
from ingest.joins import join_log  # noqa: E402
from ingest.logstore import ParquetLogStore  # noqa: E402
from ingest.producer import EventProducer  # noqa: E402
from ingest.settings import Settings  # noqa: E402
from simulation.clicks import PositionBasedModel, examination  # noqa: E402
from simulation.policies import UniformRandomPolicy  # noqa: E402
from simulation.simulator import simulate  # noqa: E402
from simulation.world import World  # noqa: E402

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
    progress = Console(stderr=True)  # spinners and the verdict; results go to ``console``
    workdir = Path(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = _settings_for(settings, workdir)
    theta = examination(5)
    log = simulate(World(n_items=2000, n_users=1000, seed=7), UniformRandomPolicy(),
                   PositionBasedModel(theta, noise_floor=0.05), n=impressions, k=5, seed=7)
    messages = frames_in_time_order(log.frames())
    records = [(user.encode(), message.encode(), None)
               for user, message in zip(messages["user_id"], messages["message"], strict=True)]
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

        # Every BAD_EVERY-th good message is followed by a malformed one and, as a retrying
        # client would, by a second copy of itself.
        stream = []
        for index, record in enumerate(records):
            stream.append(record)
            if index % BAD_EVERY == BAD_EVERY - 1:
                bad = BAD_KINDS[(index // BAD_EVERY) % len(BAD_KINDS)]
                stream += [(b"bad", bad, None), record]
        produced = len(records)
        planted = resent = (len(stream) - produced) // 2  # one bad and one copy each
        with progress.status("producing the simulated events…"), \
                EventProducer(settings, bootstrap) as producer:
            producer.send_raw(stream)
        total = produced + planted + resent
        console.print(f"produced {produced:,} events, {planted:,} malformed, "
                      f"{resent:,} duplicates → topic {kafka.topic}")

        store = ParquetLogStore(workdir / "log")
        with progress.status("consuming into the parquet log…"), \
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
        .agg(shown=pl.len(), ctr=pl.col("clicked").mean())
        .sort("position")
        .collect()
        .with_columns(theta=pl.Series(theta), ips=pl.col("ctr") / pl.Series(theta))
    )
    ctr = Table(title="CTR by position from the impression-click join (uniform slates)")
    for name in ("position", "shown", "CTR", "true θ (examination)", "CTR / θ (IPS)"):
        ctr.add_column(name, justify="right")
    for row in by_position.iter_rows(named=True):
        ctr.add_row(str(row["position"]), f"{row['shown']:,}", f"{row['ctr']:.4f}",
                    f"{row['theta']:.2f}", f"{row['ips']:.4f}")
    console.print(ctr)

    figure, axis = plt.subplots(figsize=(6, 4))
    first = by_position["ctr"][0]
    axis.plot(by_position["position"], by_position["ctr"] / first, "o-",
              label="CTR / CTR@1 (logged)")
    axis.plot(by_position["position"], theta / theta[0], "s--", label="true θ_k / θ_1")
    axis.plot(by_position["position"], by_position["ips"] / by_position["ips"][0], "^:",
              label="IPS: (CTR / θ) relative to position 1")
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
        progress.print("error: the run did not reconcile: see the tables above")
    return 0 if ok else 1
