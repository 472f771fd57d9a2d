"""``clickloop ope``: off-policy evaluation of a policy from another policy's log.

Every estimator of :mod:`bandits.ope` on the behaviour log, with bootstrap intervals and, when
an on-policy log of the evaluation policy is given, their relative errors against its mean
reward. The reward model is cross-fitted again on every bootstrap resample, as Open Bandit
Pipeline does, so the figures are comparable with its own."""

from __future__ import annotations

import argparse
import json
import math
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
    if args.format != "obd":
        raise OpeCliError(
            f"--format {args.format}: not available yet. `clickloop ope` reads Open Bandit "
            "Dataset logs (--format obd); a generic or log-store log has string item ids and "
            "no item x position index for --policy-dist to refer to, and no per-row user "
            "features for the reward model. Export it in the OBD layout (item_id 0..n-1, "
            "position 1..k, click, propensity_score, user_feature_*) to evaluate it.")
    if args.policy is not None:
        raise OpeCliError(f"--policy {args.policy}: not available yet: there is no registry "
                          "of our policies' action distributions; give the evaluation policy "
                          "as --policy-dist FILE (item x position probabilities)")
    if args.policy_dist is None:
        raise OpeCliError("no evaluation policy: pass --policy-dist FILE")
    if args.item_context is None:
        raise OpeCliError("--format obd needs --item-context FILE (OBD's item_context.csv)")
    for flag in ("log", "item_context", "policy_dist", "truth_log"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise OpeCliError(f"--{flag.replace('_', '-')} {path}: no such file")


def cmd_ope(args: argparse.Namespace, settings: Settings) -> int:
    from bandits.ope import (
        OPEInputError,
        crossed_logistic,
        evaluate,
        jsonable,
        logistic_baseline,
    )
    from bandits.ope.obd import on_policy_value, read_item_context, read_obd_log, read_policy_dist

    _check(args)
    try:
        log = read_obd_log(args.log, read_item_context(args.item_context),
                           read_policy_dist(args.policy_dist))
        truth = on_policy_value(args.truth_log) if args.truth_log else None
        crossed = args.reward_model == "crossed"
        refit = log.refit(crossed_logistic if crossed else logistic_baseline, cross=crossed,
                          folds=args.folds)
        with console.status(f"{args.bootstrap} bootstrap resamples of {log.data.n:,} rows, "
                            f"the reward model cross-fitted on each"):
            report = evaluate(log.data, n_bootstrap=args.bootstrap, seed=args.seed,
                              truth=truth, refit=refit)
    except OPEInputError as exc:
        raise OpeCliError(str(exc)) from None
    report |= {"log": str(args.log), "policy_dist": str(args.policy_dist),
               "reward_model": args.reward_model, "folds": args.folds, "seed": args.seed}
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
    p.add_argument("--log", required=True, metavar="FILE", help="the behaviour log")
    p.add_argument("--format", choices=("obd", "generic", "log"), default="obd",
                   help="the log's layout: obd (Open Bandit Dataset CSV); generic and log "
                   "(a parquet log store) are not available yet (default: obd)")
    p.add_argument("--item-context", metavar="FILE",
                   help="OBD's item_context.csv: the items' features")
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--policy-dist", metavar="FILE",
                        help="the evaluation policy: CSV of item (rows, item 0 first) x "
                        "position (columns, position 1 first) probabilities, lines starting "
                        "with # skipped, like OBD's bts_action_dist.csv")
    policy.add_argument("--policy", metavar="NAME",
                        help="a policy of ours (not available yet: use --policy-dist)")
    p.add_argument("--truth-log", metavar="FILE",
                   help="an on-policy log of the evaluation policy (same format); its mean "
                   "reward is the true value the relative errors are measured against")
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
