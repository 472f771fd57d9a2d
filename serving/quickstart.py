"""``clickloop run``: the loop on the embedded defaults, end to end, from stream to rankers.

A simulated production log (:class:`simulation.ltr.RankingExperiment`: slates ordered by
popularity and promotions, position-based clicks, reactions and dwell, the truth known) goes
through a real Kafka broker with a few malformed and duplicated messages mixed in; the
consumer validates, dead-letters, deduplicates and writes the parquet log. From the log
store's impression-click join it then estimates the examination curve by regression-EM,
trains a naive ranker (every click a positive) and a propensity-weighted one (each click
weighted by one over the estimated examination of its position), and judges both by their
true nDCG@10 on contexts that were never in the log. Last, it embeds the catalog's titles
(all-MiniLM-L6-v2, cached on disk), builds the self-tuning FAISS index over them and searches
it through the retrieval pipeline with noisy queries (typos, synonyms, truncations), beside
the simulator's exact-word engine. Prints tables and saves a plot.
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
import numpy as np  # noqa: E402
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
from models.embeddings import TextEncoder  # noqa: E402
from models.propensity import RegressionEM  # noqa: E402
from models.ultr import IPSListwise  # noqa: E402
from ranking.index import build  # noqa: E402
from ranking.pipeline import Pipeline, Request  # noqa: E402
from simulation.catalog import catalog  # noqa: E402
from simulation.ltr import RankingExperiment  # noqa: E402
from simulation.policies import item_id  # noqa: E402
from simulation.queries import QueryNoise  # noqa: E402
from simulation.search import lexical_retrieve, parse_query  # noqa: E402

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


def _search_demo(experiment: RankingExperiment, workdir: Path, cache_dir: Path,
                 console: Console, queries: int = 4) -> None:
    """Index the catalog's titles and search it with noisy queries for popular items, each
    beside the rank the exact-word engine gives the item."""
    world = experiment.world
    items = catalog(world)
    encoder = TextEncoder(cache_dir=cache_dir)
    index = build(items["item_id"].to_list(), encoder.encode(items["title"].to_list()),
                  model=encoder.name)
    index.save(workdir / "index")
    point = index.operating_point
    console.print(f"index over {len(index):,} titles ({encoder.name}, {encoder.dim}-d): "
                  f"{point['structure']} chosen, recall@{point['k']} {point['recall']:.3f} on "
                  f"its tuning sample")
    rng = np.random.default_rng([experiment.seed, 13])
    targets = np.argsort(-world.popularity, kind="stable")[: 4 * queries]
    noise = QueryNoise()
    typed: list[tuple[int, str]] = []
    for target, title in zip(targets.tolist(), world.titles(targets), strict=True):
        noisy = noise.apply(title, rng, level=1.0).noisy
        if noisy != title and len(typed) < queries:
            typed.append((target, noisy))
    pipeline = Pipeline(index, query_encoder=encoder, retrieve=50)
    ranked = pipeline.run([Request(query=q) for _, q in typed], k=50)
    asked = np.stack([parse_query(q) for _, q in typed])
    exact = lexical_retrieve(world, asked, 50)
    table = Table(title="search with noisy queries: where the wanted item lands (of "
                  f"{len(index):,})")
    for name in ("typed", "wanted item", "dense rank", "exact-word rank", "dense top 1"):
        table.add_column(name, justify="right" if "rank" in name else "left")
    for (target, query), rows, words in zip(typed, ranked, exact, strict=True):
        wanted = item_id(target)
        dense = next((r.position for r in rows if r.item_id == wanted), None)
        lexical = np.flatnonzero(words == target)
        table.add_row(query, world.titles(np.array([target]))[0],
                      str(dense) if dense else "> 50",
                      str(int(lexical[0]) + 1) if len(lexical) else "> 50",
                      world.titles(np.array([int(rows[0].item_id[1:])]))[0])
    console.print(table)


def run_quickstart(settings: Settings, *, impressions: int, workdir: str | Path,
                   bootstrap: str | None, console: Console,
                   cache_dir: str | Path = ".clickloop/embeddings") -> int:
    progress = Console(stderr=True)  # spinners and the verdict; results go to ``console``
    workdir, cache_dir = Path(workdir), Path(cache_dir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = _settings_for(settings, workdir)
    experiment = RankingExperiment()
    log = experiment.log(impressions)
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

    rows = experiment.with_grades(join_log(workdir / "log").collect())
    truth = experiment.examination / experiment.examination[0]
    with progress.status("regression-EM: the examination curve from the log…"):
        # Relevance per item: popularity and promotions put an item at different positions
        # for different users, which is what tells its relevance from its position.
        curve = RegressionEM(n_positions=experiment.k, key=("item_id",)).fit(rows).examination_
    by_position = (rows.group_by("position").agg(shown=pl.len(), ctr=pl.col("clicked").mean())
                   .sort("position"))
    ctr = by_position["ctr"].to_numpy()
    table = Table(title="examination by position, relative to position 1")
    for name in ("position", "shown", "CTR", "CTR / CTR@1", "true θ", "regression-EM"):
        table.add_column(name, justify="right")
    for index, row in enumerate(by_position.iter_rows(named=True)):
        table.add_row(str(row["position"]), f"{row['shown']:,}", f"{row['ctr']:.4f}",
                      f"{ctr[index] / ctr[0]:.3f}", f"{truth[index]:.3f}",
                      f"{curve[index]:.3f}")
    console.print(table)

    held_out = experiment.held_out()
    rankers = {"naive": ("clicks", "clicked", None),
               "propensity-weighted": ("clicks × 1/θ (EM)", "clicked", curve),
               "oracle (ceiling)": ("true relevance", "grade", None)}
    ndcg: dict[str, float] = {}
    for name, (_, labels, weights) in rankers.items():
        with progress.status(f"training the {name} ranker…"):
            data = experiment.lists(rows, labels=labels, examination=weights)
            model = IPSListwise(data.n_features, ips=weights is not None)
            judged = experiment.train_and_judge({name: (model, data)}, held_out, max_epochs=20)
        ndcg[name] = judged[name].mean
    scores = Table(title=f"rankers trained on the log, judged on {len(held_out.grades):,} "
                   "new contexts")
    for name in ("ranker", "learns from", "true nDCG@10", "of the oracle's"):
        scores.add_column(name, justify="right")
    for name, (source, _, _) in rankers.items():
        scores.add_row(name, source, f"{ndcg[name]:.4f}",
                       f"{ndcg[name] / ndcg['oracle (ceiling)']:.1%}")
    console.print(scores)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    positions = by_position["position"].to_numpy()
    left.plot(positions, ctr / ctr[0], "o-", label="CTR / CTR@1 (logged)")
    left.plot(positions, truth, "s--", label="true θ_k / θ_1")
    left.plot(positions, curve, "^:", label="regression-EM estimate")
    left.set_xticks(positions)
    left.set(xlabel="position", ylabel="relative to position 1",
             title="Position bias in the log")
    left.legend()
    right.bar(list(ndcg), list(ndcg.values()), color=["tab:gray", "tab:blue", "tab:green"])
    low = min(ndcg.values())
    right.set_ylim(low - 0.5 * (max(ndcg.values()) - low) - 1e-3, None)
    right.set(ylabel="true nDCG@10 on new contexts", title="Naive against debiased")
    figure.tight_layout()
    plot = workdir / "quickstart.png"
    figure.savefig(plot, dpi=120)
    with progress.status("retrieval: embedding the catalog and building the index…"):
        _search_demo(experiment, workdir, cache_dir, console)
    console.print(f"log store: {workdir / 'log'}   index: {workdir / 'index'}   plot: {plot}")
    ok = counters.reconciles and counters.rejected == planted and \
        counters.duplicates == resent and len(letters) == planted
    if not ok:
        progress.print("error: the run did not reconcile: see the tables above")
    return 0 if ok else 1
