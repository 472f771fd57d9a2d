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
the simulator's exact-word engine. Last, the online bandits: LinUCB and epsilon-greedy each
serve simulated users from what its own online learner holds, the learner reading the arm's
impressions and clicks from its own Kafka topic (:mod:`simulation.online`), beside uniformly
random slates; their reward over time, regret and freshness. Then query rewriting: simulated
search sessions through Kafka into their own log store, the reformulations mined from it and
the absorbing-Markov rewriter's best rewrites with their confidence (and the gated LLM
rewriter's decisions when a trained one is present). Prints tables and saves plots.
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
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402

from bandits.learner import LearnerConfig, LearnerSink  # noqa: E402
from bandits.policies import EpsilonGreedy  # noqa: E402
from ingest.broker import EmbeddedBroker  # noqa: E402
from ingest.consumer import EventConsumer  # noqa: E402
from ingest.dlq import read_dead_letters  # noqa: E402
from ingest.frames import frames_in_time_order, message_records  # noqa: E402
from ingest.joins import join_log  # noqa: E402
from ingest.logstore import ParquetLogStore, scan  # noqa: E402
from ingest.producer import EventProducer  # noqa: E402
from ingest.settings import Settings  # noqa: E402
from models.embeddings import TextEncoder  # noqa: E402
from models.propensity import RegressionEM  # noqa: E402
from models.rewrite import MarkovRewriter, query_outcomes  # noqa: E402
from models.ultr import IPSListwise  # noqa: E402
from ranking.index import build  # noqa: E402
from ranking.pipeline import Pipeline, Request  # noqa: E402
from simulation.catalog import catalog  # noqa: E402
from simulation.clicks import PositionBasedModel, examination  # noqa: E402
from simulation.ltr import RankingExperiment  # noqa: E402
from simulation.online import Arm, BanditWorld, KafkaFeedback, run_loop  # noqa: E402
from simulation.policies import RetrievalOrderPolicy, item_id  # noqa: E402
from simulation.queries import QueryNoise  # noqa: E402
from simulation.search import lexical_retrieve, parse_query, simulate_search  # noqa: E402
from simulation.world import World  # noqa: E402

#: The online bandit demo: requests per arm and round, and the learners' click window.
BANDIT_REQUESTS = 200
BANDIT_WINDOW_S = 0.25

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


def _stream_into_log(settings: Settings, bootstrap: str, experiment: RankingExperiment,
                     impressions: int, workdir: Path, console: Console,
                     progress: Console) -> bool:
    """Produce the simulated log with planted bad and duplicated messages, consume it into
    the parquet log store, and report; True when everything reconciles."""
    log = experiment.log(impressions)
    messages = frames_in_time_order(log.frames())
    records = message_records(messages)
    kafka = settings.kafka
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
    return counters.reconciles and counters.rejected == planted and \
        counters.duplicates == resent and len(letters) == planted


def _bandit_demo(settings: Settings, bootstrap: str, workdir: Path, console: Console,
                 progress: Console, rounds: int) -> Path:
    """LinUCB and epsilon-greedy, each served from its own online learner that reads the
    arm's events from its own topic, beside uniformly random slates, on the same users and
    candidates every round; prints reward, regret and freshness and returns the plot."""
    bandits = BanditWorld(World(n_items=1000, n_users=2000, rank=8, seed=0), k=5,
                          candidates=50)
    rows = bandits.rows()
    arms: list[Arm] = []
    learners: dict[str, LearnerSink] = {}
    with ExitStack() as stack:
        for name, config in (("linucb", LearnerConfig(policy="linucb", alpha=1.0,
                                                      window_s=BANDIT_WINDOW_S)),
                             ("epsilon-greedy", LearnerConfig(policy="epsilon-greedy",
                                                              epsilon=0.1,
                                                              window_s=BANDIT_WINDOW_S))):
            topic = f"{settings.kafka.topic}.{name}"
            arm_settings = msgspec.structs.replace(
                settings,
                kafka=msgspec.structs.replace(settings.kafka, topic=topic,
                                              dlq_topic=f"{topic}.dlq"),
                # One journal per producer: a journal folder has one owner at a time. A short
                # poll: a round's events are fewer than a full poll, which would otherwise
                # wait out the whole timeout.
                ingest=msgspec.structs.replace(settings.ingest, poll_timeout_s=0.05,
                                               journal_dir=str(workdir / "journal" / name)))
            sink = LearnerSink(workdir / "learners" / name, rows, config)
            consumer = stack.enter_context(EventConsumer(arm_settings, sink, bootstrap,
                                                         group_id=f"{topic}.learner"))
            producer = stack.enter_context(EventProducer(arm_settings, bootstrap))
            learners[name] = sink
            arms.append(Arm(name, sink.policy_, KafkaFeedback(producer, consumer)))
        arms.append(Arm("random", EpsilonGreedy(rows.dim, epsilon=1.0)))
        with Progress(TextColumn("[bold]online bandits"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("rounds"), TimeElapsedColumn(), console=progress) as bar:
            task = bar.add_task("rounds", total=rounds)
            result = run_loop(bandits, arms, rounds, BANDIT_REQUESTS, seed=0,
                              progress=lambda _: bar.advance(task))
        # Read before the consumers close: giving the partitions back applies what waits.
        counters = {name: sink.counters.as_dict() for name, sink in learners.items()}
        freshness = {name: sink.freshness() for name, sink in learners.items()}

    third = max(1, rounds // 3)
    early, late = result.summary(first=third), result.summary(last=third)
    table = Table(title=f"online bandits: {rounds} rounds × {BANDIT_REQUESTS} requests per arm "
                  f"(k={bandits.k} of {bandits.candidates} candidates), learning through "
                  "Kafka")
    for name in ("arm", "clicks/imp", "1st third", "last third", "of oracle", "regret",
                 "updates", "fresh p50", "p99"):
        table.add_column(name, justify="left" if name == "arm" else "right")
    overall = result.summary()
    for row, first, last in zip(overall.iter_rows(named=True), early.iter_rows(named=True),
                                late.iter_rows(named=True), strict=True):
        name = row["arm"]
        fresh = freshness.get(name)
        table.add_row(name, f"{row['clicks_per_impression']:.3f}",
                      f"{first['clicks_per_impression']:.3f}",
                      f"{last['clicks_per_impression']:.3f}", f"{last['of_oracle']:.1%}",
                      f"{row['regret']:,.0f}",
                      f"{counters[name]['updates']:,}" if name in counters else "-",
                      f"{fresh['p50_s']:.2f}s" if fresh else "-",
                      f"{fresh['p99_s']:.2f}s" if fresh else "-")
    console.print(table)
    console.print(f"thirds and of oracle: clicks per impression in the first and last third "
                  f"of the rounds, and the last third's expected clicks over the oracle's; "
                  f"freshness: event time to the model that holds it, with a "
                  f"{BANDIT_WINDOW_S:g} s click window")

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    per_round = result.rounds.with_columns(
        reward=pl.col("expected") / pl.col("impressions"),
        best=pl.col("oracle") / pl.col("impressions"),
        cumulative_regret=pl.col("regret").cum_sum().over("arm"))
    for name in [arm.name for arm in arms]:
        mine = per_round.filter(pl.col("arm") == name)
        left.plot(mine["round"], mine["reward"], label=name)
        right.plot(mine["round"], mine["cumulative_regret"], label=name)
    oracle = per_round.filter(pl.col("arm") == arms[0].name)
    left.plot(oracle["round"], oracle["best"], "k--", label="oracle")
    left.set(xlabel="round", ylabel="expected clicks per impression",
             title="Reward over time")
    right.set(xlabel="round", ylabel="cumulative regret (expected clicks)",
              title="Regret against the oracle")
    left.legend()
    right.legend()
    figure.tight_layout()
    plot = workdir / "bandits.png"
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    return plot


def _rewrite_demo(settings: Settings, bootstrap: str, workdir: Path, rewriter: Path,
                  console: Console, progress: Console, sessions: int = 4000) -> None:
    """Simulated search sessions (noisy queries, reformulations) through their own topic into
    their own log store; the reformulations mined from it and the absorbing-Markov
    rewriter's best rewrites with their confidence; and, when a trained rewriter is in
    ``rewriter`` (``clickloop rewrite train --out``), the gate's decisions for the failing
    queries without a mined rewrite."""
    world = World(n_items=2000, n_users=sessions, seed=7)
    # Every slot examined: a query fails because of its results, not its position.
    search = simulate_search(world, RetrievalOrderPolicy(), PositionBasedModel(
        examination(10, eta=0.0)), sessions, users=np.arange(sessions), seed=7)
    topic = f"{settings.kafka.topic}.search"
    search_settings = msgspec.structs.replace(settings, kafka=msgspec.structs.replace(
        settings.kafka, topic=topic, dlq_topic=f"{topic}.dlq", group_id=f"{topic}.log"))
    messages = frames_in_time_order(search.log.frames())
    store = ParquetLogStore(workdir / "search-log")
    with progress.status("search sessions through Kafka into their log store…"):
        with EventProducer(search_settings, bootstrap) as producer:
            producer.send_raw(message_records(messages))
        with EventConsumer(search_settings, store, bootstrap) as consumer:
            consumer.run(max_events=messages.height, idle_timeout_s=30.0)
    with progress.status("mining reformulations…"):
        frames = {kind: scan(workdir / "search-log", kind)
                  for kind in ("query", "click", "dwell", "reaction")}
        steps = query_outcomes(frames["query"], frames["click"], frames["dwell"],
                               frames["reaction"]).collect()
        markov = MarkovRewriter().fit(steps)
    top = markov.rewrites_.sort(["count", "confidence", "query"],
                                descending=[True, True, False]).head(8)
    table = Table(title=f"query rewrites mined from {sessions:,} search sessions "
                  f"({steps.height:,} queries, {markov.pairs_.height:,} reformulations)")
    for name in ("failing query", "rewrite", "seen", "its successes", "confidence"):
        table.add_column(name, justify="left" if name in ("failing query", "rewrite")
                         else "right")
    for row in top.iter_rows(named=True):
        table.add_row(row["query"], row["rewrite"], f"{row['count']:,}",
                      f"{row['successes']:,}", f"{row['confidence']:.3f}")
    console.print(table)
    if not (rewriter / "llm").is_dir():
        console.print(f"no trained LLM rewriter in {rewriter}: `clickloop rewrite train "
                      f"--data {workdir / 'search-log'} --world 2000 --seed 7 --out "
                      f"{rewriter}` trains one, and the next run shows its rewrites")
        return
    from serving.rewrite_cli import RewriteCliError, load_rewrite_model

    try:
        with progress.status(f"loading the rewriter in {rewriter}…"):
            _, gate, llm = load_rewrite_model(rewriter)
    except (RewriteCliError, OSError) as exc:
        progress.print(f"the rewriter in {rewriter} was not used: {exc}")
        return
    unseen = (steps.filter(~pl.col("success"))
              .join(markov.rewrites_.select("query"), on="query", how="anti")
              .unique("query", keep="first", maintain_order=True).head(6)["query"].to_list())
    decisions = gate.rewrite(unseen, markov, llm)
    table = Table(title=f"the gated rewriter on failing queries without a mined rewrite "
                  f"({llm.name})")
    for name in ("query", "output", "reason", "calibrated"):
        table.add_column(name)
    for decision in decisions:
        table.add_row(decision.query, decision.output, decision.reason,
                      "-" if decision.calibrated is None else f"{decision.calibrated:.3f}")
    console.print(table)


def _debias(experiment: RankingExperiment, workdir: Path, console: Console,
            progress: Console) -> Path:
    """Regression-EM on the log's join, then naive, debiased and oracle rankers judged on new
    contexts; returns the plot."""
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
    return plot


def run_quickstart(settings: Settings, *, impressions: int, workdir: str | Path,
                   bootstrap: str | None, console: Console,
                   cache_dir: str | Path = ".clickloop/embeddings",
                   bandit_rounds: int = 30,
                   rewriter: str | Path = ".clickloop/rewriter") -> int:
    progress = Console(stderr=True)  # spinners and the verdict; results go to ``console``
    workdir, cache_dir = Path(workdir), Path(cache_dir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    settings = _settings_for(settings, workdir)
    experiment = RankingExperiment()
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
        ok = _stream_into_log(settings, bootstrap, experiment, impressions, workdir, console,
                              progress)
        plot = _debias(experiment, workdir, console, progress)
        with progress.status("retrieval: embedding the catalog and building the index…"):
            _search_demo(experiment, workdir, cache_dir, console)
        bandit_plot = _bandit_demo(settings, bootstrap, workdir, console, progress,
                                   rounds=bandit_rounds)
        _rewrite_demo(settings, bootstrap, workdir, Path(rewriter), console, progress)
    console.print(f"log store: {workdir / 'log'}   index: {workdir / 'index'}   learners: "
                  f"{workdir / 'learners'}   plots: {plot}, {bandit_plot}")
    if not ok:
        progress.print("error: the run did not reconcile: see the tables above")
    return 0 if ok else 1
