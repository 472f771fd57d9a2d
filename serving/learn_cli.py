"""``clickloop learn``: the online bandit learner on the events topic.

It consumes the topic in a consumer group (learners sharing ``--group`` split the
partitions), joins clicks to impressions in a bounded window, updates the policy in
mini-batches at each consumer flush, and checkpoints the state with the offsets it covers
in ``--state``; run again on the same folder, it resumes where the checkpoint ends. At the
end it prints its counters and its freshness (event time to model updated).

``python -m serving.learn_cli ...`` runs the command alone (the same arguments as
``clickloop learn``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ingest.settings import Settings
from serving.signals import stop_on_signals

console = Console(stderr=True)
results = Console()


class LearnCliError(Exception):
    """A problem the user can fix; ``serving.cli`` prints it as one ``error:`` line."""


def examination_curve(spec: str) -> tuple[float, ...]:
    """``--examination``: ``inverse[:ETA]`` (1/p^eta over 100 positions), ``ultr[:ETA]``
    (the ULTR standard curve), ``uniform`` (no position correction), or comma-separated
    probabilities of positions 1, 2, ... (later positions take the last)."""
    name, _, eta_text = spec.partition(":")
    if name in ("inverse", "ultr", "uniform"):
        try:
            eta = float(eta_text) if eta_text else 1.0
        except ValueError:
            raise LearnCliError(f"--examination {spec}: {eta_text!r} is not a number") from None
        if eta < 0:
            raise LearnCliError(f"--examination {spec}: eta={eta} must be >= 0")
        if name == "uniform":
            return (1.0,)
        from simulation.clicks import examination

        return tuple(float(v) for v in examination(100 if name == "inverse" else 10, eta,
                                                   kind=name))  # type: ignore[arg-type]
    try:
        curve = tuple(float(v) for v in spec.split(","))
    except ValueError:
        raise LearnCliError(f"--examination {spec}: expected inverse[:ETA], ultr[:ETA], "
                            "uniform, or comma-separated probabilities") from None
    bad = [v for v in curve if not 0 < v <= 1]
    if bad:
        raise LearnCliError(f"--examination {spec}: {bad[0]} must be a probability in (0, 1]")
    return curve


def read_item_vectors(args: argparse.Namespace) -> Any:
    """The item vectors of ``--items FILE`` or ``--world N`` (also read by ``clickloop ope
    --policy learner:DIR``)."""
    import numpy as np
    import polars as pl

    from bandits.context import ItemVectors

    if args.world is not None:
        from simulation.world import World

        if args.world < 1:
            raise LearnCliError(f"--world={args.world} must be at least 1 item")
        world = World(n_items=args.world, n_users=1, seed=args.seed)
        # Simulated events name items "i<index>" (simulation.simulator).
        return ItemVectors([f"i{n}" for n in range(world.n_items)], world.item_vectors)
    path = Path(args.items)
    if not path.is_file():
        raise LearnCliError(f"--items {path}: no such file")
    try:
        frame = (pl.read_parquet(path) if path.suffix == ".parquet"
                 else pl.read_csv(path, infer_schema_length=None,
                                  schema_overrides={"item_id": pl.String}))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LearnCliError(f"--items {path}: cannot read it: {exc}") from None
    if "item_id" not in frame.columns:
        raise LearnCliError(f"--items {path}: no item_id column (columns: "
                            f"{', '.join(frame.columns)})")
    numeric = [c for c in frame.columns if c != "item_id" and frame.schema[c].is_numeric()]
    if not numeric:
        raise LearnCliError(f"--items {path}: no numeric vector columns beside item_id")
    vectors = frame.select(numeric).cast(pl.Float64).to_numpy()
    bad = ~np.isfinite(vectors)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise LearnCliError(f"--items {path}: row {row + 1} column {numeric[col]} is "
                            f"{frame[numeric[col]][row]!r}; vectors must be finite numbers")
    try:
        return ItemVectors(frame["item_id"].cast(pl.String).to_list(), vectors)
    except ValueError as exc:
        raise LearnCliError(f"--items {path}: {exc}") from None


def _fields(text: str | None) -> tuple[str, ...]:
    return tuple(f.strip() for f in (text or "").split(",") if f.strip())


def _learner(args: argparse.Namespace) -> Any:
    import torch

    from bandits.context import ContextFeatures
    from bandits.learner import (
        LearnerConfig,
        LearnerLocked,
        LearnerSink,
        LearnerStateError,
        TrainingRows,
    )

    try:
        torch.device(args.device)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("CUDA is not available here")
    except (RuntimeError, ValueError) as exc:
        raise LearnCliError(f"--device {args.device}: {exc}") from None
    try:
        features = ContextFeatures(n_hash_buckets=args.hash_buckets,
                                   user_numeric=_fields(args.user_numeric),
                                   user_categorical=_fields(args.user_categorical),
                                   cross=args.cross)
        rows = TrainingRows(features, read_item_vectors(args), examination_curve(args.examination),
                            max_weight=args.max_weight)
        config = LearnerConfig(policy=args.policy,
                               alpha=LearnerConfig.alpha if args.alpha is None else args.alpha,
                               ridge=args.ridge,
                               epsilon=(LearnerConfig.epsilon if args.epsilon is None
                                        else args.epsilon),
                               window_s=args.window, max_pending=args.max_pending,
                               device=args.device)
        return LearnerSink(args.state, rows, config)
    except (LearnerLocked, LearnerStateError, ValueError) as exc:
        raise LearnCliError(str(exc)) from None


def cmd_learn(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.consumer import EventConsumer

    bootstrap = args.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise LearnCliError("no broker given: pass --bootstrap HOST:PORT or set "
                            "CLICKLOOP_KAFKA_BOOTSTRAP")
    for flag, value in (("--idle-exit", args.idle_exit), ("--alpha", args.alpha),
                        ("--epsilon", args.epsilon),
                        ("--ridge", args.ridge), ("--window", args.window)):
        if value is not None and not math.isfinite(value):
            raise LearnCliError(f"{flag}={value} must be a finite number")
    # A flag of the other policy would be silently ignored: refuse it.
    if args.epsilon is not None and args.policy != "epsilon-greedy":
        raise LearnCliError(f"--epsilon is for --policy epsilon-greedy, not {args.policy}")
    if args.alpha is not None and args.policy == "epsilon-greedy":
        raise LearnCliError("--alpha is for the LinUCB policies, not epsilon-greedy")
    if args.idle_exit is not None and args.idle_exit <= 0:
        raise LearnCliError(f"--idle-exit={args.idle_exit} must be > 0 seconds")
    sink = _learner(args)
    stop = stop_on_signals()
    started = time.monotonic()
    # A group takes a while to form, and longer after a crash: the killed member holds its
    # partitions until its session expires. So the idle clock starts at the first message,
    # or after two session timeouts when none comes.
    grace = 2 * settings.kafka.session_timeout_ms / 1000
    last_message: float | None = None
    last_report = started
    try:
        group = args.group or f"{settings.kafka.group_id}.learner"
        consumer = EventConsumer(settings, sink, bootstrap, group_id=group)
    except BaseException:
        sink.close()
        raise
    with consumer:
        while not stop.is_set():
            now = time.monotonic()
            if consumer.poll_once():
                last_message = now
            elif args.idle_exit is not None and (
                    now - last_message > args.idle_exit if last_message is not None
                    else now - started > args.idle_exit + grace):
                break
            if not args.quiet and now - last_report >= args.progress_every:
                last_report = now
                c = sink.counters
                console.print(f"learn: {consumer.counters.consumed:,} consumed · "
                              f"{c.impressions_applied:,} impressions applied · "
                              f"{c.clicks_joined:,} clicks joined · {sink.pending:,} waiting",
                              highlight=False)
        consumer.flush()
        if args.drain:
            sink.drain()
        counters = consumer.counters
    _report(args, settings, sink, counters.as_dict(), time.monotonic() - started)
    if not counters.reconciles:
        raise LearnCliError(f"counters do not reconcile: {counters}")
    return 0


def _report(args: argparse.Namespace, settings: Settings, sink: Any,
            consumed: dict[str, int], seconds: float) -> None:
    table = Table(title=f"learned {settings.kafka.topic} → {sink.path} ({args.policy}, "
                        f"{seconds:.1f} s)")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name, value in {**consumed, **sink.counters.as_dict(),
                        "impressions_waiting": sink.pending}.items():
        table.add_row(name, f"{value:,}")
    fresh = sink.freshness()
    for name in ("p50_s", "p99_s", "max_s"):
        table.add_row(f"freshness_{name}", f"{fresh[name]:.3f}")
    results.print(table)


def add_learn_command(commands: Any) -> None:
    """The ``learn`` command."""
    p = commands.add_parser(
        "learn", help="train a bandit policy online from the events topic",
        description="Consume the events topic, join clicks to impressions by request_id "
        "within a bounded event-time window, update the policy in mini-batches at each "
        "flush, and checkpoint its state with the offsets it covers in --state (a restart "
        "resumes exactly). Learners sharing --group split the partitions. Prints counters "
        "and freshness (event time to model updated) at the end.")
    p.add_argument("--bootstrap", help="broker HOST:PORT (default: kafka.bootstrap)")
    p.add_argument("--state", required=True, metavar="DIR",
                   help="folder of the learner's checkpoint (learner.safetensors)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--items", metavar="FILE",
                        help="CSV or parquet of item_id and numeric vector columns")
    source.add_argument("--world", type=int, metavar="N",
                        help="the item vectors of a simulated world of N items instead")
    p.add_argument("--seed", type=int, default=0, help="seed of --world (default: 0)")
    p.add_argument("--policy", choices=("diag-linucb", "linucb", "epsilon-greedy"),
                   default="diag-linucb", help="diag-linucb merges across partitions; "
                   "epsilon-greedy is the baseline (default: diag-linucb)")
    p.add_argument("--alpha", type=float,
                   help="LinUCB's exploration width (default: 1)")
    p.add_argument("--epsilon", type=float,
                   help="epsilon-greedy's share of uniformly random slates (default: 0.1)")
    p.add_argument("--ridge", type=float, default=1.0, help="prior precision (default: 1)")
    p.add_argument("--examination", default="inverse", metavar="CURVE",
                   help="examination by position: inverse[:ETA], ultr[:ETA], uniform, or "
                   "comma-separated probabilities (default: inverse)")
    p.add_argument("--max-weight", type=float, help="clip 1/examination weights here")
    p.add_argument("--window", type=float, default=300.0, metavar="SECONDS",
                   help="event-time seconds an impression waits for clicks (default: 300)")
    p.add_argument("--max-pending", type=int, default=100_000,
                   help="the most impressions waiting at once (default: 100000)")
    p.add_argument("--user-numeric", metavar="FIELDS",
                   help="comma-separated numeric fields of the impression context")
    p.add_argument("--user-categorical", metavar="FIELDS",
                   help="comma-separated categorical fields of the context (hashed)")
    p.add_argument("--hash-buckets", type=int, default=64,
                   help="buckets of the hashed categorical fields (default: 64)")
    p.add_argument("--cross", choices=("outer", "concat"), default="outer",
                   help="how user and item features combine (default: outer)")
    p.add_argument("--group", help="consumer group; learners sharing it split the partitions "
                   "(default: kafka.group_id + '.learner', apart from the log consumers, so "
                   "both read the whole stream)")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="exit after this long without a message (default: run until "
                   "interrupted)")
    p.add_argument("--drain", action="store_true",
                   help="at exit, apply the impressions still waiting for clicks as the end "
                   "of the stream (without it they are applied too, when the learner gives "
                   "its partitions back to the group, and counted as impressions_revoked)")
    p.add_argument("--device", default="cpu", help="torch device of the policy (default: cpu)")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between progress lines (default: 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_learn)


def main(argv: Sequence[str] | None = None) -> int:
    """``clickloop learn`` on its own (for scripts and tests)."""
    from ingest.broker import BrokerError
    from ingest.settings import SettingsError
    from ingest.transport import TransportError
    from serving.settings import load

    parser = argparse.ArgumentParser(prog="clickloop")
    add_learn_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["learn", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(cmd_learn(args, load(None)) or 0)
    except (LearnCliError, SettingsError, BrokerError, TransportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
