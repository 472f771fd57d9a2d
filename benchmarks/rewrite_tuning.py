"""The LLM rewriter's hyper-parameters, chosen on the validation day of
``benchmarks/rewrite.py``'s simulation and never on its held-out day.

The same world, sessions and split as the full benchmark (``--seed``, ``--sessions``,
``--days``): the learners train on the days before the validation day; the validation
day's failing steps, separately for queries seen in those days and unseen ones, are the
measure (success@10 of the exact-word engine, as in the benchmark). Two stages, each picking
the variant of highest mean success@10 over the two groups:

1. SFT: ``identity_share`` of :func:`models.rewrite.pipeline.sft_pairs` (queries that succeed
   as typed, paired with themselves, as a share of the mined reformulations);
2. DPO on the chosen SFT model, one set of preference pairs for every variant: ``lr``,
   ``beta`` and ``nll_weight`` (:class:`models.rewrite.dpo.DPOModule`). The chosen SFT
   model itself is reported beside them: DPO is only worth its step where it beats it.

Steps, batch sizes and LoRA ranks are the full plan's (``--quick``: the quick plan's, to
show it works). Writes ``--out`` (JSON, default ``benchmarks/results/rewrite-tuning.json``,
``rewrite-tuning-quick.json`` with ``--quick``) and prints one table per stage.

Usage: python benchmarks/rewrite_tuning.py [--quick] [--out PATH] [--seed N] [--sessions N]
       [--per-group N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
import polars as pl  # noqa: E402
import rewrite as bench  # noqa: E402  (benchmarks/rewrite.py: the data and the measures)
import torch  # noqa: E402
from rich.table import Table  # noqa: E402

from models.rewrite import (  # noqa: E402
    LLMRewriter,
    MarkovRewriter,
    fit_dpo,
    fit_sft,
    preference_pairs,
)
from models.rewrite.llm import load_smollm2, load_tokenizer  # noqa: E402
from models.rewrite.pipeline import failing_queries, sft_pairs  # noqa: E402

console = bench.console
#: The SFT stage's variants: ``identity_share``.
IDENTITY_SHARES = (0.0, 0.5, 1.0)
#: The DPO stage's variants: ``(lr, beta, nll_weight)``.
DPO_VARIANTS = ((2e-4, 0.1, 0.0), (5e-5, 0.1, 0.0), (2e-4, 0.1, 1.0))


def validation_groups(data: dict[str, Any], plan: bench.Plan, markov: MarkovRewriter,
                      per_group: int, seed: int) -> dict[str, pl.DataFrame]:
    """The validation day's failing steps, ``seen`` (typed in the days before it) and
    ``unseen``, up to ``per_group`` each."""
    truth = bench.typed_and_seen(
        data["truth"].filter((pl.col("day") == plan.days - 2) & ~pl.col("found")), markov)
    return {group: bench.sample(truth.filter(pl.col("seen") == (group == "seen")), per_group,
                                seed) for group in ("unseen", "seen")}


def measure(world: Any, groups: dict[str, pl.DataFrame], rewrite: Any, what: str
            ) -> dict[str, float]:
    """success@10 per group of ``rewrite(typed queries) -> queries``, and their mean."""
    out = {}
    for group, rows in groups.items():
        out[group] = float(bench.success(world, rows, rewrite(rows["typed"].to_list(),
                                                               f"{what}, {group}")).mean())
    out["mean"] = (out["unseen"] + out["seen"]) / 2
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the quick plan: fewer sessions, a few training steps (minutes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the JSON results go (default: benchmarks/results/"
                        "rewrite-tuning.json, rewrite-tuning-quick.json with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="world, sessions and training")
    parser.add_argument("--sessions", type=int, default=None,
                        help="simulated sessions, one per user (default: the plan's)")
    parser.add_argument("--per-group", type=int, default=None,
                        help="validation failing steps per group, seen and unseen (default: "
                        "150, 8 with --quick)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use)")
    args = parser.parse_args(argv)
    plan = bench.QUICK if args.quick else bench.FULL
    if args.sessions is not None:
        if args.sessions < 100:
            parser.error(f"--sessions={args.sessions} must be at least 100")
        plan = replace(plan, sessions=args.sessions)
    if args.per_group is None:
        args.per_group = 8 if args.quick else 150
    if args.per_group < 1:
        parser.error(f"--per-group={args.per_group} must be at least 1")
    if args.out is None:
        args.out = bench.RESULTS / ("rewrite-tuning-quick.json" if args.quick
                                    else "rewrite-tuning.json")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    clock = bench.Clock()
    data = clock(f"simulating {plan.sessions:,} sessions", lambda: bench.simulate(plan,
                                                                                 args.seed))
    world, steps = data["world"], data["steps"]
    fit_steps = steps.filter(pl.col("day") < plan.days - 2)
    markov = MarkovRewriter().fit(fit_steps)
    groups = validation_groups(data, plan, markov, args.per_group, args.seed)

    def markov_rewrite(queries: list[str], what: str) -> list[str]:
        return [r.rewrite if r else q for r, q in zip(markov.rewrite(queries), queries,
                                                      strict=True)]

    def llm_rewrite(llm: LLMRewriter) -> Any:
        return lambda queries, what: bench.generate(llm, queries, what)

    reference = {"original": measure(world, groups, lambda q, w: q, "original"),
                 "markov": measure(world, groups, markov_rewrite, "markov")}
    tokenizer = load_tokenizer()
    base = clock("load SmolLM2", load_smollm2)

    sft_results, sft_models = [], {}
    for share in IDENTITY_SHARES:
        pairs = sft_pairs(markov, identity_share=share)
        model = clock(f"SFT, identity_share {share}: {pairs.height:,} pairs", lambda: fit_sft(
            base, tokenizer, pairs, max_steps=plan.sft_steps, batch_size=plan.sft_batch,
            seed=args.seed, progress=True, r=plan.sft_r, alpha=2.0 * plan.sft_r,
            lr=plan.sft_lr))
        scores = measure(world, groups, llm_rewrite(LLMRewriter(model, tokenizer)),
                         f"sft {share}")
        sft_results.append({"identity_share": share, "pairs": pairs.height, **scores})
        sft_models[share] = model
        console.print(f"SFT identity_share {share}: {scores}")
    best_sft = max(sft_results, key=lambda r: r["mean"])
    sft = sft_models[best_sft["identity_share"]]
    del sft_models

    failing = failing_queries(fit_steps, data["clicks"], plan.dpo_queries)
    sampler = functools.partial(LLMRewriter(sft, tokenizer).sample, seed=args.seed)
    preferences = clock("DPO pairs", lambda: preference_pairs(
        failing, sampler, bench.retriever(world), n_samples=plan.dpo_samples, k=bench.K))
    dpo_results = []
    for lr, beta, nll_weight in DPO_VARIANTS:
        model = clock(f"DPO lr {lr} beta {beta} nll_weight {nll_weight}", lambda: fit_dpo(
            sft, tokenizer, preferences, max_steps=plan.dpo_steps, batch_size=plan.dpo_batch,
            seed=args.seed, progress=True, beta=beta, nll_weight=nll_weight, lr=lr,
            lora_r=plan.dpo_r, lora_alpha=2 * plan.dpo_r))
        scores = measure(world, groups, llm_rewrite(LLMRewriter(model, tokenizer)),
                         f"dpo {lr} {beta} {nll_weight}")
        dpo_results.append({"lr": lr, "beta": beta, "nll_weight": nll_weight, **scores})
        console.print(f"DPO lr {lr} beta {beta} nll_weight {nll_weight}: {scores}")
    best_dpo = max(dpo_results, key=lambda r: r["mean"])

    results = {
        "validation": {"n": {g: rows.height for g, rows in groups.items()}, **reference},
        "sft": sft_results, "chosen_sft": {"identity_share": best_sft["identity_share"]},
        "dpo_pairs": preferences.height, "dpo": dpo_results,
        "chosen_dpo": {k: best_dpo[k] for k in ("lr", "beta", "nll_weight")},
        "dpo_beats_sft": best_dpo["mean"] > best_sft["mean"],
        "quick": args.quick, "plan": asdict(plan), "seed": args.seed, "timings_s": clock.seconds,
        "seconds": round(time.perf_counter() - started, 1),
        "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
    }
    for title, rows, keys in (("SFT", sft_results, ("identity_share", "pairs")),
                              ("DPO on the chosen SFT", dpo_results,
                               ("lr", "beta", "nll_weight"))):
        table = Table(title=f"{title}: validation-day success@10 (markov: unseen "
                      f"{reference['markov']['unseen']:.3f}, seen "
                      f"{reference['markov']['seen']:.3f})")
        for col in (*keys, "unseen", "seen", "mean"):
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(*(str(row[k]) for k in keys),
                          *(f"{row[k]:.3f}" for k in ("unseen", "seen", "mean")))
        console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.out} ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
