"""``clickloop ope``: off-policy evaluation of a policy from another policy's log.

Every estimator of :mod:`bandits.ope` on the behaviour log, with bootstrap intervals and, when
an on-policy log of the evaluation policy is given, their relative errors against its mean
reward. The reward model is cross-fitted again on every bootstrap resample, as Open Bandit
Pipeline does, so the figures are comparable with its own.

The behaviour log is an Open Bandit Dataset file, a generic CSV or parquet log, or a parquet
log store (:mod:`bandits.ope.generic`); the evaluation policy a probability table or one of
ours by name (:mod:`bandits.ope.policies`). Every format goes through the same
:class:`~bandits.ope.obd.ObdLog` reward refit and :func:`~bandits.ope.evaluate`."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ingest.settings import Settings

console = Console(stderr=True)
results = Console()


class OpeCliError(Exception):
    """A problem the user can fix; ``serving.cli`` prints it as one ``error:`` line."""


def _check(args: argparse.Namespace) -> None:
    if args.bootstrap < 2:
        raise OpeCliError(f"--bootstrap={args.bootstrap} must be at least 2: an interval needs "
                          "resamples")
    if args.folds < 2:
        raise OpeCliError(f"--folds={args.folds} must be at least 2")
    if args.policy_dist is None and args.policy is None:
        raise OpeCliError("no evaluation policy: pass --policy-dist FILE or --policy NAME")
    kind = None
    if args.policy is not None:
        from bandits.ope import OPEInputError
        from bandits.ope.policies import parse_policy

        try:
            kind, _ = parse_policy(args.policy)
        except OPEInputError as exc:
            raise OpeCliError(f"--policy {args.policy}: {exc}") from None
        if kind == "learner" and args.format != "log":
            raise OpeCliError(f"--policy {args.policy} needs --format log: the learner scores "
                              "items under each impression's context JSON, which only a log "
                              f"store keeps (--format {args.format} has none)")
        if kind == "learner" and args.items is None:
            raise OpeCliError(f"--policy {args.policy} needs --items FILE: the item vectors "
                              "the learner was trained with (as for clickloop learn --items)")
    if args.items is not None and kind != "learner":
        raise OpeCliError("--items is for --policy learner:DIR only")
    if args.format == "obd" and args.item_context is None:
        raise OpeCliError("--format obd needs --item-context FILE (OBD's item_context.csv)")
    if args.context_fields is not None and args.format != "log":
        raise OpeCliError(f"--context-fields is for --format log only (not {args.format})")
    folders = ("log", "truth_log") if args.format == "log" else ()
    for flag in ("log", "item_context", "policy_dist", "truth_log", "items"):
        path = getattr(args, flag)
        if path is None:
            continue
        if flag in folders and not Path(path).is_dir():
            raise OpeCliError(f"--{flag.replace('_', '-')} {path}: no such log store folder")
        if flag not in folders and not Path(path).is_file():
            raise OpeCliError(f"--{flag.replace('_', '-')} {path}: no such file")


def _obd_log(args: argparse.Namespace) -> tuple[Any, float | None]:
    """The OBD log with its evaluation policy, and the truth log's value."""
    import numpy as np

    from bandits.ope import OPEData
    from bandits.ope.obd import on_policy_value, read_item_context, read_obd_log, read_policy_dist
    from bandits.ope.policies import logged_policy, parse_policy, uniform_policy

    items = read_item_context(args.item_context)
    truth = on_policy_value(args.truth_log) if args.truth_log else None
    if args.policy_dist is not None:
        return read_obd_log(args.log, items, read_policy_dist(args.policy_dist)), truth
    from ingest.adapters.obd import read_obd

    # The policy is built on the log's own positions, so they are read first.
    positions = int(read_obd(args.log)["position"].max() or 1)
    log = read_obd_log(args.log, items, np.full((items.shape[0], positions),
                                                1.0 / items.shape[0]))
    data = log.data
    kind, _ = parse_policy(args.policy)
    dist = (uniform_policy(data.n, data.n_actions, data.n_positions) if kind == "uniform" else
            logged_policy(data.action, data.position, data.n_actions, data.n_positions))
    data = OPEData(data.reward, data.action, data.position, data.pscore, dist)
    return replace(log, data=data), truth


def _read_slates(args: argparse.Namespace, path: str, flag: str) -> Any:
    from bandits.ope.generic import read_generic_log, read_log_store
    from serving.catalog import report_rejected

    if args.format == "log":
        fields = None if args.context_fields is None else tuple(
            f.strip() for f in args.context_fields.split(",") if f.strip())
        return read_log_store(path, fields)
    slates = read_generic_log(path)
    report_rejected(path, slates.rejected, flag)
    return slates


def _slate_log(args: argparse.Namespace) -> tuple[Any, float | None]:
    """A generic or log-store log with its evaluation policy, and the truth log's value."""
    from bandits.ope.generic import policy_matrix, read_item_features, read_policy_table
    from bandits.ope.policies import (
        learner_scores,
        logged_policy,
        parse_policy,
        top_k_policy,
        uniform_policy,
    )

    slates = _read_slates(args, args.log, "--log")
    truth = None
    if args.truth_log:
        truth = float(_read_slates(args, args.truth_log, "--truth-log").reward.mean())
    if args.policy_dist is not None:
        table = read_policy_table(args.policy_dist)
        slates = slates.with_items(table["item_id"].to_list())
        positions = max(slates.n_positions, int(table["position"].max()))
        dist = policy_matrix(table, slates.item_ids, positions, f"--policy-dist "
                                                                f"{args.policy_dist}")
    else:
        kind, folder = parse_policy(args.policy)
        a, p = slates.n_items, slates.n_positions
        if kind == "uniform":
            dist = uniform_policy(slates.n, a, p)
        elif kind == "logged":
            dist = logged_policy(slates.action, slates.position, a, p)
        else:
            from serving.learn_cli import LearnCliError, read_item_vectors

            try:
                vectors = read_item_vectors(
                    argparse.Namespace(world=None, items=args.items, seed=0))
            except LearnCliError as exc:
                raise OpeCliError(str(exc)) from None
            scores = learner_scores(folder, vectors, slates.item_ids, slates.contexts)
            dist = top_k_policy(scores, slates.slate, p)
    item = (read_item_features(args.item_context, slates.item_ids)
            if args.item_context else None)
    return slates.evaluation(dist, item), truth


def cmd_ope(args: argparse.Namespace, settings: Settings) -> int:
    from bandits.ope import (
        OPEInputError,
        crossed_logistic,
        evaluate,
        jsonable,
        logistic_baseline,
    )

    _check(args)
    try:
        log, truth = _obd_log(args) if args.format == "obd" else _slate_log(args)
        crossed = args.reward_model == "crossed"
        refit = log.refit(crossed_logistic if crossed else logistic_baseline, cross=crossed,
                          folds=args.folds)
        with console.status(f"{args.bootstrap} bootstrap resamples of {log.data.n:,} rows, "
                            f"the reward model cross-fitted on each"):
            report = evaluate(log.data, n_bootstrap=args.bootstrap, seed=args.seed,
                              truth=truth, refit=refit)
    except OPEInputError as exc:
        raise OpeCliError(str(exc)) from None
    report |= {"log": str(args.log), "format": args.format,
               "policy_dist": None if args.policy_dist is None else str(args.policy_dist),
               "policy": args.policy, "n_items": log.data.n_actions,
               "n_positions": log.data.n_positions, "reward_model": args.reward_model,
               "folds": args.folds, "seed": args.seed}
    _print(report)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n")
        console.print(f"wrote {out}")
    return 0


def _print(report: dict[str, Any]) -> None:
    truth = report["truth"]
    title = f"off-policy estimates from {report['n_rows']:,} rows, {report['n_bootstrap']} " \
            "bootstrap resamples" + (f"; true value {truth:.6g}" if truth is not None else "")
    table = Table(title=title)
    table.add_column("estimator")
    table.add_column("estimate", justify="right")
    table.add_column("95% interval", justify="right")
    if truth is not None:
        table.add_column("relative error (mean ± std)", justify="right")
    for name, entry in report["estimators"].items():
        low, high = entry["ci"]
        row = [name, f"{entry['estimate']:.6g}",
               "n/a" if math.isnan(low) else f"[{low:.6g}, {high:.6g}]"]
        if truth is not None:
            error = entry["relative_error"]
            row.append(f"{error['mean']:.3f} ± {error['std']:.3f}")
        table.add_row(*row)
    results.print(table)


def add_ope_command(commands: Any) -> None:
    """The ``ope`` command."""
    p = commands.add_parser(
        "ope", help="estimate a policy's value from another policy's log",
        description="Off-policy evaluation: DM, IPW, SNIPW, DR, SNDR, Switch-DR and DR-OS "
        "(both tuned by SLOPE) and replay on the behaviour log, with percentile bootstrap "
        "intervals; the reward model is cross-fitted on every resample. With --truth-log, "
        "the relative error of each against that log's mean reward.")
    p.add_argument("--log", required=True, metavar="PATH",
                   help="the behaviour log: a file (--format obd, generic) or a log store "
                   "folder (--format log)")
    p.add_argument("--format", choices=("obd", "generic", "log"), default="obd",
                   help="the log's layout. obd: Open Bandit Dataset CSV (item_id 0..n-1, "
                   "position, click, propensity_score, user_feature_*, "
                   "user-item_affinity_*). generic: CSV or parquet, one row per shown slot: "
                   "item_id (text), position (1 = top), reward or click (0 or 1), propensity (the "
                   "logging policy's probability of that item at that position), optional "
                   "round or request_id and numeric user_* columns; a bad row is rejected "
                   "(listed on stderr with its line and column) and the others kept. log: a "
                   "parquet log store written by the consumer; reward = clicked, user "
                   "features = the numeric fields of each impression's context JSON. For "
                   "generic and log, items are indexed by their sorted ids (default: obd)")
    p.add_argument("--item-context", metavar="FILE",
                   help="the items' features. obd (required): OBD's item_context.csv. "
                   "generic, log (optional): CSV or parquet of item_id and numeric columns; "
                   "without it the reward model knows items by a one-hot alone")
    p.add_argument("--context-fields", metavar="A,B",
                   help="--format log: the context JSON's numeric fields to use as user "
                   "features (default: every numeric one; a missing one reads 0)")
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--policy-dist", metavar="FILE",
                        help="the evaluation policy. obd: CSV of item (rows, item 0 first) x "
                        "position (columns, position 1 first) probabilities, lines starting "
                        "with # skipped, like OBD's bts_action_dist.csv. generic, log: CSV "
                        "item_id,position,probability (long format; what it does not list "
                        "gets 0); each position's probabilities must sum to 1 (within 1e-6)")
    policy.add_argument("--policy", metavar="NAME",
                        help="a policy of ours instead. uniform: every item equally likely "
                        "at each position. logged: the behaviour policy's own item x position "
                        "frequencies in the log, a sanity check: when the logging policy "
                        "ignored the context (a random or fixed-distribution log), its true "
                        "value is the log's mean reward, which IPW and SNIPW give exactly where "
                        "the logged propensities are those frequencies. learner:DIR: a `clickloop "
                        "learn` checkpoint folder, showing for each logged impression the "
                        "items of highest mean estimate, best first (needs --format log and "
                        "--items)")
    p.add_argument("--items", metavar="FILE",
                   help="--policy learner:DIR: the item vectors it was trained with, a CSV or "
                   "parquet of item_id and numeric columns (as for clickloop learn --items)")
    p.add_argument("--truth-log", metavar="PATH",
                   help="an on-policy log of the evaluation policy (same format as --log); "
                   "its mean reward is the true value the relative errors are measured against")
    p.add_argument("--bootstrap", type=int, default=30,
                   help="bootstrap resamples of the log (default: 30)")
    p.add_argument("--reward-model", choices=("logistic", "crossed"), default="logistic",
                   help="logistic: logistic regression on user, item and position features "
                   "(Open Bandit Pipeline's); crossed: with user x item features too "
                   "(default: logistic)")
    p.add_argument("--folds", type=int, default=3,
                   help="cross-fitting folds of the reward model (default: 3)")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON to OUT")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the resamples and folds (default: 0)")
    p.set_defaults(func=cmd_ope)
