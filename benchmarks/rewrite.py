"""Query rewriting: the absorbing-Markov rewriter against SmolLM2 tuned by SFT and DPO, on
simulated search sessions, with the gate's harm and the serving latency.

Data: :func:`simulation.search.simulate_search` over a :class:`simulation.world.World`
catalog, one session per user (so that the sessions cut from events are the simulator's),
every shown slot examined (``examination(10, eta=0.0)``: a query fails because its results
do), ``--sessions`` sessions spread evenly over ``--days`` days. The last day is held out;
the days before it are the training days, and the last of those is the **validation** day:
the learners train on the days before it, the gate is calibrated on it (and nothing is
chosen on the held-out day). Mining reads the log as events (:func:`query_outcomes`), as
``clickloop rewrite train`` does, through the same wiring (:mod:`models.rewrite.pipeline`).

Learners:

- **markov**: :class:`MarkovRewriter` fitted on every training day (the validation day
  included, as the CLI saves it), its best rewrite or the query itself;
- **sft**: SmolLM2-135M-Instruct, LoRA-tuned on the mined (failing query -> successful
  reformulation) pairs of the days before the validation day, each weighted by its
  confidence, beside queries that succeed as typed paired with themselves; greedy rewrite;
- **dpo**: the SFT model preference-tuned (DPO, with the chosen rewrite's NLL) on pairs of
  its own samples ranked by the exact-word engine's retrieval of the item the user finally
  clicked (RetPO);
- **oracle**: the simulator's clean query; **original**: the query as typed.

Measures, on held-out steps whose own results failed (the simulator's ``found`` is false),
separately for queries **seen** in the training days (the normalized text was typed there)
and **unseen**: success@10, the share of steps whose query (rewritten or not) retrieves an
item of search relevance >= 3 to the intent in the top 10 of the exact-word engine
(:func:`simulation.retrieval.success_at_k`). **Harm**: over held-out steps whose query
succeeded as typed (success@10), the share that fail after the gated rewrite
(:class:`RewriteGate` fitted on the validation day; ``markov``: the gate with the Markov
rewriter alone, ``dpo``: with Markov and the DPO model). **Latency** of the DPO model's
:meth:`LLMRewriter.rewrite` at batch 1 on CPU (the serving case), in ms: uncached (a query
never asked before) p50 and p99, cached (asked again) p99. Held-out queries are subsampled
with a fixed seed where the plan says so; ``n`` is reported.

Targets (:data:`TARGETS`): dpo >= markov + 0.10 success@10 on unseen failing queries and not
below markov on seen ones; harm <= 0.01 through the gate; cached p99 <= 1 ms.

The LLM's settings are :mod:`models.rewrite.pipeline`'s, chosen on the validation day by
``benchmarks/rewrite_tuning.py``.

Results go to ``--out`` (JSON), with ``rewrite.png`` (success@10 by method) and
``rewrite-reliability.png`` (the gate's calibration) next to it, named after ``--out``.

Usage: python benchmarks/rewrite.py [--quick] [--out PATH] [--seed N] [--sessions N]
       [--days N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path: take it out, and put the
# repository root in, so that the project's packages import as they do everywhere else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402

from models.rewrite import (  # noqa: E402
    LLMRewriter,
    MarkovRewriter,
    RewriteGate,
    fit_dpo,
    fit_sft,
    normalize_query,
    plot_reliability,
    preference_pairs,
    query_outcomes,
    reliability_curve,
)
from models.rewrite.llm import load_smollm2, load_tokenizer  # noqa: E402
from models.rewrite.pipeline import (  # noqa: E402
    DPO_BETA,
    DPO_LR,
    DPO_NLL_WEIGHT,
    IDENTITY_SHARE,
    failing_queries,
    sft_pairs,
    validation_rows,
)
from simulation.clicks import PositionBasedModel, examination  # noqa: E402
from simulation.policies import RetrievalOrderPolicy  # noqa: E402
from simulation.retrieval import exact_word_retrieve, success_at_k  # noqa: E402
from simulation.search import Intents, parse_query, simulate_search  # noqa: E402
from simulation.world import World  # noqa: E402

console = Console(width=shutil.get_terminal_size((140, 40)).columns)

DAY = 86_400.0
K = 10
METHODS = ("original", "markov", "sft", "dpo", "oracle")
TARGETS = {"unseen_dpo_minus_markov": 0.10, "seen_dpo_minus_markov": 0.0, "harm": 0.01,
           "cached_p99_ms": 1.0}
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Plan:
    """What one run does; ``--quick`` and the full run differ only here."""

    sessions: int
    days: int
    items: int
    sft_steps: int
    sft_batch: int
    dpo_queries: int
    dpo_samples: int
    dpo_steps: int
    dpo_batch: int
    eval_per_group: int  # held-out failing steps per group (seen, unseen)
    val_queries: int  # validation-day failing steps for the methods' validation success@10
    harm_queries: int  # held-out steps that succeeded as typed
    validation_queries: int  # validation-day queries the gate calibrates on
    latency_queries: int
    cached_calls: int
    # Hyper-parameters of the LLM: the modules' defaults, and what benchmarks/
    # rewrite_tuning.py chose on the validation day (the shared wiring's constants).
    sft_lr: float = 2e-4
    sft_r: int = 16
    identity_share: float = IDENTITY_SHARE
    dpo_lr: float = DPO_LR
    dpo_beta: float = DPO_BETA
    dpo_nll_weight: float = DPO_NLL_WEIGHT
    dpo_r: int = 8


QUICK = Plan(sessions=4000, days=4, items=4000, sft_steps=4, sft_batch=4, dpo_queries=6,
             dpo_samples=2, dpo_steps=2, dpo_batch=2, eval_per_group=16, val_queries=8,
             harm_queries=20, validation_queries=16, latency_queries=5, cached_calls=200)
FULL = Plan(sessions=20_000, days=4, items=4000, sft_steps=150, sft_batch=16,
            dpo_queries=160, dpo_samples=4, dpo_steps=40, dpo_batch=8, eval_per_group=250,
            val_queries=100, harm_queries=300, validation_queries=200, latency_queries=100,
            cached_calls=2000)


def step(what: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {what}")


class Clock:
    """Wall seconds per stage, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        step(name)
        started = time.perf_counter()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - started, 1)
        return out


# -- data --------------------------------------------------------------------------------------

def simulate(plan: Plan, seed: int) -> dict[str, Any]:
    """The world, the simulator's step records joined to the mined steps, and the clicks;
    each step with its ``day`` (of its session's start)."""
    n = plan.sessions
    world = World(n_items=plan.items, n_users=n, seed=seed)
    search = simulate_search(world, RetrievalOrderPolicy(), PositionBasedModel(
        examination(K, eta=0.0)), n, users=np.arange(n), seed=seed + 1,
        seconds_between=plan.days * DAY / n)
    frames = search.log.frames()
    steps = query_outcomes(frames["query"].lazy(), frames["click"].lazy(),
                           frames["dwell"].lazy(), frames["reaction"].lazy()).collect()
    start = float(frames["query"]["ts"].min())
    first = steps.group_by("session_id").agg(first=pl.col("ts").min())
    steps = steps.join(first, on="session_id").with_columns(
        day=((pl.col("first") - start) // DAY).cast(pl.Int32).clip(0, plan.days - 1)
    ).drop("first").sort("session_id", "step")
    # Joins keep no row order; the seeded samples below need one.
    truth = (search.steps.join(steps.select("request_id", "day", "query"), on="request_id")
             .sort("session", "step"))
    return {"world": world, "steps": steps, "truth": truth, "clicks": frames["click"].lazy()}


def retriever(world: World) -> Callable[[list[str]], np.ndarray]:
    """The exact-word engine, answering in the events' item ids ("i<index>")."""
    names = np.array([f"i{n}" for n in range(world.n_items)], dtype=object)
    return lambda queries: names[exact_word_retrieve(world, queries, K)]


def intents(rows: pl.DataFrame) -> Intents:
    asked = np.stack([parse_query(c) for c in rows["clean"]]) >= 0
    return Intents(rows["target"].to_numpy(), asked, (rows["intent"] == "item").to_numpy())


def success(world: World, rows: pl.DataFrame, queries: list[str]) -> np.ndarray:
    return success_at_k(world, intents(rows), exact_word_retrieve(world, queries, K), K)


def typed_and_seen(rows: pl.DataFrame, markov: MarkovRewriter) -> pl.DataFrame:
    """Step records with ``typed``, the normalized noisy query, and ``seen``: whether
    ``markov`` (fitted on the days that count as training) saw it typed."""
    rows = rows.with_columns(
        typed=pl.col("noisy").map_elements(normalize_query, return_dtype=pl.String))
    return rows.with_columns(seen=pl.col("typed").is_in(markov.queries_["query"].implode()))


def sample(rows: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    return rows.sample(n, seed=seed, shuffle=True) if rows.height > n else rows


def generate(llm: LLMRewriter, queries: list[str], what: str) -> list[str]:
    """Greedy rewrites in batches, with a progress bar; an empty answer keeps the query."""
    out: list[str] = []
    chunk = llm.batch_size
    for start in track(range(0, len(queries), chunk), description=what, console=console,
                       transient=True):
        out += [r.rewrite for r in llm.rewrite(queries[start:start + chunk])]
    return out


# -- training ----------------------------------------------------------------------------------

def train(plan: Plan, data: dict[str, Any], seed: int, clock: Clock,
          progress: bool) -> dict[str, Any]:
    steps, clicks, world = data["steps"], data["clicks"], data["world"]
    last = plan.days - 1
    fit_steps = steps.filter(pl.col("day") < last - 1)
    validation = steps.filter(pl.col("day") == last - 1)
    retrieve = retriever(world)
    markov_fit = clock("markov (days before validation)",
                       lambda: MarkovRewriter().fit(fit_steps))
    markov = clock("markov (every training day)",
                   lambda: MarkovRewriter().fit(steps.filter(pl.col("day") < last)))
    pairs = sft_pairs(markov_fit, identity_share=plan.identity_share)
    tokenizer = load_tokenizer()
    base = clock("load SmolLM2", load_smollm2)
    sft = clock(f"SFT: {pairs.height:,} pairs, {plan.sft_steps} steps at batch "
                f"{plan.sft_batch}", lambda: fit_sft(
                    base, tokenizer, pairs, max_steps=plan.sft_steps,
                    batch_size=plan.sft_batch, seed=seed, progress=progress, r=plan.sft_r,
                    alpha=2.0 * plan.sft_r, lr=plan.sft_lr))
    failing = failing_queries(fit_steps, clicks, plan.dpo_queries)
    sampler = functools.partial(LLMRewriter(sft, tokenizer).sample, seed=seed)
    preferences = clock(f"DPO pairs: {plan.dpo_samples} samples of {failing.height} failing "
                        "queries", lambda: preference_pairs(
                            failing, sampler, retrieve, n_samples=plan.dpo_samples, k=K))
    if preferences.is_empty():
        raise RuntimeError("no preference pairs: every candidate retrieved alike")
    dpo = clock(f"DPO: {preferences.height} pairs, {plan.dpo_steps} steps at batch "
                f"{plan.dpo_batch}", lambda: fit_dpo(
                    sft, tokenizer, preferences, max_steps=plan.dpo_steps,
                    batch_size=plan.dpo_batch, seed=seed, progress=progress,
                    beta=plan.dpo_beta, nll_weight=plan.dpo_nll_weight, lr=plan.dpo_lr,
                    lora_r=plan.dpo_r,
                    lora_alpha=2 * plan.dpo_r))
    llms = {"sft": LLMRewriter(sft, tokenizer, name="smollm2-sft"),
            "dpo": LLMRewriter(dpo, tokenizer, name="smollm2-dpo")}
    # The gates: calibrated on the validation day only, each with its own rewriters. The
    # Markov candidates cost no generation: every open validation query gives its row; the
    # LLM's are bounded by the plan.
    gates, rows = {}, {}
    markov_rows = clock("gate: Markov validation rows", lambda: validation_rows(
        markov_fit, None, validation, clicks, retrieve, RewriteGate(), validation.height, K))
    llm_rows = clock("gate: LLM validation rows", lambda: validation_rows(
        markov_fit, llms["dpo"], validation, clicks, retrieve, RewriteGate(),
        plan.validation_queries, K).filter(pl.col("source") == llms["dpo"].name))
    rows = {"markov": markov_rows, "dpo": pl.concat([markov_rows, llm_rows])}
    for name, part in rows.items():
        # No row to learn from leaves the gate at its default threshold (reported).
        gates[name] = RewriteGate().fit(part) if part.height else RewriteGate()
    return {"markov": markov, "markov_fit": markov_fit, "llms": llms, "gates": gates,
            "validation_rows": rows, "pairs": pairs.height, "preferences": preferences,
            "failing_for_dpo": failing.height, "sft_info": getattr(sft, "sft_info_", {})}


# -- evaluation --------------------------------------------------------------------------------

def validation_success(plan: Plan, data: dict[str, Any], models: dict[str, Any],
                       seed: int) -> dict[str, Any]:
    """success@10 of each method on the validation day's failing steps (the split any
    hyper-parameter is read from), with the rewriters that had not seen that day."""
    world, truth = data["world"], data["truth"]
    rows = sample(truth.filter((pl.col("day") == plan.days - 2) & ~pl.col("found")),
                  plan.val_queries, seed)
    typed = [normalize_query(q) for q in rows["noisy"]]
    proposals = models["markov_fit"].rewrite(typed)
    out = {"n": rows.height,
           "original": float(success(world, rows, typed).mean()),
           "markov": float(success(world, rows, [r.rewrite if r else q for r, q in
                                                 zip(proposals, typed, strict=True)]).mean())}
    for name, llm in models["llms"].items():
        out[name] = float(success(world, rows, generate(llm, typed, f"validation {name}"))
                          .mean())
    return out


def held_out(plan: Plan, data: dict[str, Any], models: dict[str, Any],
             seed: int) -> dict[str, Any]:
    world, truth = data["world"], data["truth"]
    held = typed_and_seen(truth.filter(pl.col("day") == plan.days - 1), models["markov"])
    markov, llms = models["markov"], models["llms"]
    out: dict[str, Any] = {}
    for group, seen in (("unseen", False), ("seen", True)):
        rows = sample(held.filter(~pl.col("found") & (pl.col("seen") == seen)),
                      plan.eval_per_group, seed)
        typed = rows["typed"].to_list()
        proposals = markov.rewrite(typed)
        queries = {"original": typed,
                   "markov": [r.rewrite if r else q for r, q in zip(proposals, typed,
                                                                    strict=True)],
                   "oracle": rows["clean"].to_list()}
        for name, llm in llms.items():
            queries[name] = generate(llm, typed, f"{group} {name}")
        gated = models["gates"]["dpo"].rewrite(typed, markov, llms["dpo"])
        queries["gated_dpo"] = [d.output for d in gated]
        result = {"n": rows.height, "available": int(held.filter(
            ~pl.col("found") & (pl.col("seen") == seen)).height)}
        for name, texts in queries.items():
            result[name] = float(success(world, rows, texts).mean()) if texts else None
        result["markov_proposed"] = float(np.mean([r is not None for r in proposals])) \
            if proposals else None
        out[group] = result
    # Harm: steps that succeeded as typed, through each gate.
    typed_all = held["typed"].to_list()
    ok = success(world, held, typed_all)
    rows = sample(held.filter(pl.Series(ok)), plan.harm_queries, seed)
    typed = rows["typed"].to_list()
    harm, rewritten = {}, {}
    for name, llm in (("markov", None), ("dpo", llms["dpo"])):
        decisions = models["gates"][name].rewrite(typed, markov, llm)
        after = success(world, rows, [d.output for d in decisions])
        harm[name] = float(np.mean(~after))
        rewritten[name] = float(np.mean([d.rewritten for d in decisions]))
    out["harm"] = harm
    out["harm_context"] = {"n": rows.height, "rewritten": rewritten,
                           "held_out_steps": held.height,
                           "succeeded_as_typed": float(ok.mean())}
    return out


def latency(plan: Plan, data: dict[str, Any], models: dict[str, Any],
            seed: int) -> dict[str, Any]:
    """ms per :meth:`LLMRewriter.rewrite` of one query, one thread per call as served on
    these cores: fresh queries (uncached), then the same again (cached)."""
    llm = models["llms"]["dpo"]
    fresh = LLMRewriter(llm.model, llm.tokenizer, batch_size=1, name="smollm2-dpo")
    held = data["truth"].filter(pl.col("day") == plan.days - 1)
    queries = list(dict.fromkeys(normalize_query(q) for q in sample(
        held, plan.latency_queries * 2, seed + 1)["noisy"]))[:plan.latency_queries]
    fresh.rewrite([queries[0]])  # the first call builds what later ones reuse
    fresh.clear_cache()
    uncached = []
    for query in track(queries, description="latency, uncached", console=console,
                       transient=True):
        started = time.perf_counter()
        fresh.rewrite([query])
        uncached.append((time.perf_counter() - started) * 1e3)
    cached = []
    for n in range(plan.cached_calls):
        query = queries[n % len(queries)]
        started = time.perf_counter()
        fresh.rewrite([query])
        cached.append((time.perf_counter() - started) * 1e3)
    return {"cached_p50": float(np.percentile(cached, 50)),
            "cached_p99": float(np.percentile(cached, 99)),
            "uncached_p50": float(np.percentile(uncached, 50)),
            "uncached_p99": float(np.percentile(uncached, 99)),
            "n_uncached": len(uncached), "n_cached": len(cached),
            "device": "cpu", "torch_threads": torch.get_num_threads()}


def reliability(models: dict[str, Any], path: Path) -> dict[str, Any]:
    """The gate's reliability on the validation day: each source's raw confidence against
    its rewrite's success, and after the gate's isotonic calibration (fitted on those same
    rows, so the second curve shows the map, not a test of it)."""
    rows = models["validation_rows"]["dpo"]
    gate = models["gates"]["dpo"]
    curves, ece = {}, {}
    for (source,), part in rows.group_by("source", maintain_order=True):
        raw = part["confidence"].to_numpy()
        outcome = part["rewrite_success"].to_numpy()
        calibrated = np.clip([gate.calibrate(str(source), c) for c in raw], 0.0, 1.0)
        curves[f"{source} raw"] = reliability_curve(raw, outcome)
        curves[f"{source} calibrated"] = reliability_curve(calibrated, outcome)
        ece[str(source)] = {"n": part.height, "raw": _ece(curves[f"{source} raw"]),
                            "calibrated": _ece(curves[f"{source} calibrated"])}
    if curves:
        plot_reliability(curves, path)
    return ece


def _ece(curve: pl.DataFrame) -> float:
    gap = (curve["mean_confidence"] - curve["success_rate"]).abs()
    return float((gap * curve["n"]).sum() / max(int(curve["n"].sum()), 1))


def targets(results: dict[str, Any]) -> dict[str, Any]:
    unseen, seen = results["unseen"], results["seen"]
    rows = {
        "unseen: dpo >= markov + 0.10": (unseen["dpo"] - unseen["markov"],
                                         TARGETS["unseen_dpo_minus_markov"]),
        "seen: dpo >= markov": (seen["dpo"] - seen["markov"], TARGETS["seen_dpo_minus_markov"]),
    }
    out = {name: {"value": value, "target": target, "met": bool(value >= target - 1e-12)}
           for name, (value, target) in rows.items()}
    for name, value in results["harm"].items():
        out[f"harm ({name}) <= 0.01"] = {"value": value, "target": TARGETS["harm"],
                                         "met": bool(value <= TARGETS["harm"])}
    p99 = results["latency_ms"]["cached_p99"]
    out["cached p99 <= 1 ms"] = {"value": p99, "target": TARGETS["cached_p99_ms"],
                                 "met": bool(p99 <= TARGETS["cached_p99_ms"])}
    return out


# -- output ------------------------------------------------------------------------------------

def report(results: dict[str, Any]) -> None:
    table = Table(title=f"success@10 on held-out failing queries ({results['config']['sessions']:,}"
                  f" sessions, {results['config']['days']} days, seed "
                  f"{results['config']['seed']})")
    table.add_column("queries")
    table.add_column("n", justify="right")
    for name in (*METHODS, "gated_dpo"):
        table.add_column(name.replace("_", " "), justify="right")
    for group in ("unseen", "seen"):
        row = results[f"{group}_context"]
        table.add_row(group, f"{row['n']:,}", *(f"{row[m]:.3f}" for m in
                                                 (*METHODS, "gated_dpo")))
    console.print(table)
    met = Table(title="targets")
    for col in ("target", "value", "met"):
        met.add_column(col, justify="left" if col == "target" else "right")
    for name, t in results["targets"].items():
        met.add_row(name, f"{t['value']:+.3f}" if "dpo" in name and "harm" not in name
                    else f"{t['value']:.4f}", "yes" if t["met"] else "[bold red]no[/]")
    console.print(met)
    lat = results["latency_context"]
    console.print(f"latency per rewrite, batch 1, CPU ({lat['torch_threads']} threads): "
                  f"uncached p50 {lat['uncached_p50']:.1f} ms, p99 {lat['uncached_p99']:.1f} "
                  f"ms; cached p50 {lat['cached_p50'] * 1e3:.1f} µs, p99 "
                  f"{lat['cached_p99'] * 1e3:.1f} µs")
    harm = results["harm_context"]
    console.print(f"harm over {harm['n']} held-out steps that succeeded as typed: markov "
                  f"{results['harm']['markov']:.4f} (rewrote {harm['rewritten']['markov']:.3f}),"
                  f" dpo {results['harm']['dpo']:.4f} (rewrote {harm['rewritten']['dpo']:.3f});"
                  f" gate thresholds {json.dumps(results['gate']['threshold'])}")
    val = results["validation"]
    console.print(f"validation day (n {val['n']}): " + ", ".join(
        f"{m} {val[m]:.3f}" for m in ("original", "markov", "sft", "dpo")))


def figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups = ("unseen", "seen")
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        xs = np.arange(len(groups)) + (i - (len(METHODS) - 1) / 2) * width
        values = [results[g][method] for g in groups]
        bars = ax.bar(xs, values, width, label=method)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(groups)),
                  [f"{g} (n={results[g]['n']})" for g in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success@10 (exact-word engine)")
    ax.set_title("held-out failing queries: rewrite by method")
    ax.legend(fontsize=8, ncols=len(METHODS), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer sessions, a few training steps, few queries (minutes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the JSON results go (default: benchmarks/results/"
                        "rewrite-quick.json with --quick, else benchmarks/results/"
                        "rewrite.json); the plots go next to it")
    parser.add_argument("--seed", type=int, default=0, help="world, sessions and training")
    parser.add_argument("--sessions", type=int, default=None,
                        help="simulated sessions, one per user (default: the plan's)")
    parser.add_argument("--days", type=int, default=None,
                        help="days the sessions spread over: the last is held out, the one "
                        "before it validates (default: the plan's, at least 3)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no training progress bars")
    args = parser.parse_args(argv)
    if args.days is not None and args.days < 3:
        parser.error(f"--days={args.days} must be at least 3 (fit, validation, held out)")
    if args.sessions is not None and args.sessions < 100:
        parser.error(f"--sessions={args.sessions} must be at least 100")
    if args.out is None:
        args.out = RESULTS / ("rewrite-quick.json" if args.quick else "rewrite.json")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.sessions is not None:
        plan = replace(plan, sessions=args.sessions)
    if args.days is not None:
        plan = replace(plan, days=args.days)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    clock = Clock()
    data = clock(f"simulating {plan.sessions:,} sessions over {plan.days} days",
                 lambda: simulate(plan, args.seed))
    models = train(plan, data, args.seed, clock, progress=not args.quiet)
    evaluated = clock("held-out evaluation", lambda: held_out(plan, data, models, args.seed))
    validation = clock("validation-day success@10",
                       lambda: validation_success(plan, data, models, args.seed))
    lat = clock("latency", lambda: latency(plan, data, models, args.seed))
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    ece = reliability(models, Path(f"{stem}-reliability.png"))
    steps = data["steps"]
    results: dict[str, Any] = {
        "unseen": {k: evaluated["unseen"][k] for k in ("n", *METHODS)},
        "seen": {k: evaluated["seen"][k] for k in ("n", *METHODS)},
        "harm": evaluated["harm"],
        "latency_ms": {k: lat[k] for k in ("cached_p99", "uncached_p50", "uncached_p99")},
        "quick": args.quick,
        "config": {"seed": args.seed, "sessions": plan.sessions, "days": plan.days,
                   "items": plan.items, "split": {
                       "fit_days": list(range(plan.days - 2)),
                       "validation_day": plan.days - 2, "held_out_day": plan.days - 1},
                   "plan": asdict(plan), "k": K, "click_model": "examination(10, eta=0.0)",
                   "base_model": "SmolLM2-135M-Instruct (GGUF Q4_1, de-quantized to float32)"},
        "hyper_parameters": {
            "sft": {"lr": plan.sft_lr, "r": plan.sft_r, "alpha": 2 * plan.sft_r,
                    "identity_share": plan.identity_share,
                    "steps": plan.sft_steps, "batch_size": plan.sft_batch},
            "dpo": {"lr": plan.dpo_lr, "beta": plan.dpo_beta,
                    "nll_weight": plan.dpo_nll_weight, "r": plan.dpo_r,
                    "steps": plan.dpo_steps, "batch_size": plan.dpo_batch,
                    "samples_per_query": plan.dpo_samples, "queries": plan.dpo_queries},
            "chosen_by": "identity_share and the DPO lr, beta and nll_weight by "
                         "benchmarks/rewrite_tuning.py on the validation day "
                         "(results/rewrite-tuning.json); the rest the modules' defaults, "
                         "with the steps and query counts sized to the time budget; the "
                         "held-out day's figures were never read to choose"},
        "validation": validation,
        "unseen_context": evaluated["unseen"], "seen_context": evaluated["seen"],
        "harm_context": evaluated["harm_context"],
        "latency_context": lat,
        "gate": {"threshold": {n: g.active_threshold for n, g in models["gates"].items()},
                 "validation_rows": {n: r.height for n, r in
                                     models["validation_rows"].items()},
                 "calibrated_sources": {n: sorted(g.__dict__.get("calibrators_", {}))
                                        for n, g in models["gates"].items()},
                 "ece_validation": ece},
        "training": {"sft_pairs": models["pairs"], "sft": models["sft_info"],
                     "dpo_failing_queries": models["failing_for_dpo"],
                     "dpo_pairs": models["preferences"].height,
                     "mined_steps": steps.height,
                     "steps_per_day": steps.group_by("day").len().sort("day")["len"].to_list()},
        "timings_s": clock.seconds,
        "cores": len(os.sched_getaffinity(0)), "torch_threads": args.threads,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    results["targets"] = targets(results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    report(results)
    out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {out} ({results['seconds']:.0f} s)")
    png = Path(f"{stem}.png")
    figure(results, png)
    console.print(f"wrote {png} and {stem}-reliability.png")
    return results


if __name__ == "__main__":
    main()
